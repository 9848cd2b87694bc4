"""Hub side of the move rig: a migrated hub database, both hosts registered, a worker config
using the local transport (each host's config file named `<host-uuid>.yaml`), and the worker's hub
key (`hub keys ensure`) pinned on both hosts, as `keys sync` would pin it."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import yaml

from tests.support.hosts import CLI, REPO, Host


@dataclass
class HubRig:
    dsn: str
    base: Path
    a: Host
    b: Host

    @property
    def config_path(self) -> Path:
        return self.base / "hub.yaml"

    def write_config(self, **extra) -> None:
        cfg = {"hub_dsn": self.dsn, "data_dir": str(self.base / "data"), "btrfs_root": str(self.base / "none"),
               "move.transport": "local", "move.host_configs": str(self.base / "hosts"),
               "move.receiver_user": "root", "move.lease_seconds": 2, "move.max_attempts": 3}
        cfg.update(extra)
        nested: dict = {}
        for k, v in cfg.items():
            if k.startswith("move."):
                nested.setdefault("move", {})[k[5:]] = v
            else:
                nested[k] = v
        self.config_path.write_text(yaml.safe_dump(nested))

    def cli(self, *args: str, check: bool = True, timeout: float = 300) -> subprocess.CompletedProcess:
        env = {k: v for k, v in self.a.env.items() if k != "COCALC_CTL_CONFIG"}
        res = subprocess.run([*CLI, "--config", str(self.config_path), *args], capture_output=True, text=True,
                             env=env, cwd=str(REPO), timeout=timeout)
        if check and res.returncode != 0:
            raise AssertionError(f"hub cocalc-ctl {' '.join(args)} exited {res.returncode}\n{res.stdout}\n{res.stderr}")
        return res

    def popen(self, *args: str, env: dict | None = None) -> subprocess.Popen:
        env = {**{k: v for k, v in self.a.env.items() if k != "COCALC_CTL_CONFIG"}, **(env or {})}
        return subprocess.Popen([*CLI, "--config", str(self.config_path), *args], env=env, cwd=str(REPO),
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)

    @contextmanager
    def spawned(self, *args: str, env: dict | None = None):
        """popen(), and on the way out its whole process group is SIGKILLed if it still runs."""
        p = self.popen(*args, env=env)
        try:
            yield p
        finally:
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait()

    def sql(self, query: str, params=()) -> list:
        import psycopg

        with psycopg.connect(self.dsn, autocommit=True) as conn:
            cur = conn.execute(query, params)
            return cur.fetchall() if cur.description else []

    def wait_claimable(self, pid: str, timeout: float = 60) -> None:
        """Wait until the move's lease (a dead worker's, or a retry back-off) has lapsed by the hub's
        clock, which is what a worker's claim compares against."""
        deadline = time.monotonic() + timeout
        while True:
            (free,) = self.sql("SELECT lease_until IS NULL OR lease_until < now() FROM project_moves "
                               "WHERE project_id=%s", (pid,))[0]
            if free:
                return
            if time.monotonic() > deadline:
                raise AssertionError(f"the lease of move {pid} did not lapse within {timeout:.0f}s")
            time.sleep(0.1)

    def hub_public_keys(self) -> list[str]:
        """The hub key lines the hub publishes (hub_keys table), current key first."""
        return [ln for (text,) in self.sql("SELECT public_keys FROM hub_keys ORDER BY hub_id") for ln in
                text.splitlines()]

    def pin_published_hub_keys(self, *extra: str) -> None:
        """Pin on both hosts what the hub publishes (plus `extra` lines): `keys sync`'s hub-key step."""
        from tests.support.move import pin_hub_keys

        for h in (self.a, self.b):
            pin_hub_keys(h, [*self.hub_public_keys(), *extra])

    def move_row(self, pid: str) -> dict:
        import psycopg
        from psycopg.rows import dict_row

        with psycopg.connect(self.dsn, autocommit=True, row_factory=dict_row) as conn:
            return conn.execute("SELECT * FROM project_moves WHERE project_id=%s", (pid,)).fetchone()


def make_hub_rig(dsn: str, base: Path, a: Host, b: Host, ra_port: int | None, rb_port: int | None) -> HubRig:
    rig = HubRig(dsn, base, a, b)
    base.mkdir(parents=True, exist_ok=True)
    (base / "hosts").mkdir(exist_ok=True)
    for h in (a, b):
        link = base / "hosts" / f"{h.host_id}.yaml"
        if not link.exists():
            link.symlink_to(h.config_path)
    rig.write_config()
    rig.cli("hub", "migrate")
    for h, addr, port in ((a, "127.0.0.2", ra_port), (b, "127.0.0.3", rb_port)):
        rig.sql("INSERT INTO project_hosts (id, name, ssh_server, status, last_seen, trusted) "
                "VALUES (%s, %s, %s, 'active', now(), true)", (h.host_id, h.base.name, f"{addr}:{port}"))
    rig.cli("hub", "keys", "ensure")
    rig_hub = getattr(a, "hub", None)  # the pair rig's own signer stays pinned too
    rig.pin_published_hub_keys(*([rig_hub.public] if rig_hub else []))
    return rig
