"""Loopback btrfs "hosts" for integration tests, always cleaned up (unmount, detach loop)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import uuid
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
CLI = [sys.executable, "-m", "cocalc_ctl"]


@dataclass
class Host:
    """One host: its own config file, data dir and loopback btrfs pool under `base`."""

    base: Path
    host_id: str = field(default_factory=lambda: str(uuid.uuid4()))
    extra_config: dict = field(default_factory=dict)

    def __post_init__(self):
        self.base.mkdir(parents=True, exist_ok=True)
        self.pool = self.base / "pool"
        self.data = self.base / "data"
        self.config_path = self.base / "config.yaml"
        self.write_config()

    def write_config(self, **extra) -> None:
        self.extra_config.update(extra)
        cfg = {"host_id": self.host_id, "btrfs_root": str(self.pool), "data_dir": str(self.data),
               **self.extra_config}
        import yaml

        self.config_path.write_text(yaml.safe_dump(cfg))

    @property
    def env(self) -> dict:
        env = {k: v for k, v in os.environ.items() if not k.startswith("COCALC_CTL_")}
        env["COCALC_CTL_CONFIG"] = str(self.config_path)
        env["PYTHONPATH"] = str(REPO)
        return env

    def cli(self, *args: str, check: bool = True, input: str | None = None, env: dict | None = None,
            timeout: float = 600) -> subprocess.CompletedProcess:
        e = self.env
        if env:
            e.update(env)
        res = subprocess.run([*CLI, *args], capture_output=True, text=True, env=e, input=input, timeout=timeout,
                             cwd=str(REPO))
        if check and res.returncode != 0:
            raise AssertionError(f"cocalc-ctl {' '.join(args)} exited {res.returncode}\n"
                                 f"stdout:\n{res.stdout}\nstderr:\n{res.stderr}")
        return res

    def json(self, *args: str) -> object:
        return json.loads(self.cli("--json", *args).stdout)

    def init(self, size: str = "1G") -> "Host":
        self.cli("host", "init", "--loopback", size)
        return self

    def project_path(self, pid: str) -> Path:
        return self.pool / f"project-{pid}"

    def cleanup(self) -> None:
        cleanup_mounts_under(self.base)
        shutil.rmtree(self.base, ignore_errors=True)


def cleanup_mounts_under(base: Path) -> None:
    """Unmount everything below `base` (deepest first) and detach loop devices backed by files there."""
    base_s = str(base.resolve())
    with open("/proc/self/mountinfo") as fh:
        points = [line.split()[4] for line in fh]
    for mp in sorted({p for p in points if p == base_s or p.startswith(base_s + "/")}, key=len, reverse=True):
        if subprocess.run(["umount", mp], capture_output=True).returncode != 0:
            subprocess.run(["umount", "-l", mp], capture_output=True)
    out = subprocess.run(["losetup", "-a", "-O", "NAME,BACK-FILE", "-n", "--raw"], capture_output=True,
                         text=True).stdout
    for line in out.splitlines():
        parts = line.split(None, 1)
        if len(parts) == 2 and parts[1].startswith(base_s):
            subprocess.run(["losetup", "-d", parts[0]], capture_output=True)


def release_guarded_ports(host: Host) -> None:
    """Take the ports of projects a test left running (never stopped through cocalc-ctl) out of the
    machine-wide nft port guard, so later users of those port numbers are not refused."""
    import sqlite3

    db = host.data / "host.sqlite"
    if not db.exists() or not shutil.which("nft"):
        return
    try:
        with sqlite3.connect(db, timeout=5) as conn:
            ports = [p for row in conn.execute("SELECT http_port, ssh_port FROM projects") for p in row if p]
    except sqlite3.Error:
        return
    for port in ports:
        subprocess.run(["nft", "delete", "element", "inet", "cocalc_ctl", "project_ports", f"{{ {port} }}"],
                       capture_output=True)


def tree_digest(path: Path) -> dict:
    """Content + mode + link structure of a tree, for before/after comparisons."""
    import hashlib

    out = {}
    for root, dirs, files in os.walk(path):
        dirs.sort()
        for name in sorted(dirs + files):
            p = Path(root) / name
            rel = str(p.relative_to(path))
            st = p.lstat()
            if p.is_symlink():
                out[rel] = ("l", os.readlink(p))
            elif p.is_file():
                out[rel] = ("f", st.st_mode & 0o7777, hashlib.sha256(p.read_bytes()).hexdigest())
            else:
                out[rel] = ("d", st.st_mode & 0o7777)
    return out
