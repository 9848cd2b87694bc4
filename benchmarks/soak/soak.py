#!/usr/bin/env python3
"""Fleet soak (root, one machine): N loopback btrfs hosts, a throwaway PostgreSQL hub, three move
workers, M moves in random directions and modes, under chaos; then it checks that nothing was lost,
duplicated or left behind, and prints a summary table. Exit 0 when every check holds, 1 when one fails.

The fleet is built and driven the way an operator would, through `cocalc-ctl` only (the same steps as
scripts/demo.py, whose helpers it reuses): `host init --loopback`, keys, trust, `sshpiper config --sshd`
for one receiver sshd per host on its own loopback address (127.0.0.11, .12, …), a host proxy per host
(`keys register --internal-url`), a hub proxy, `project create`, `hub project add`, `snapshot create`,
`move start`, `move worker`. Only the faults are injected by hand:

- a move worker SIGKILLed every ~20 s (`--kill-every`) and restarted;
- one host's receiver sshd stopped for 30 s, then started again (sessions already open continue);
- PostgreSQL stopped (fast) and started again, once;
- one host's pool filled to the brim (a file in the pool root) for a while, then emptied.

Projects get random contents (random sizes, incompressible) and a new file, a changed file and
sometimes a snapshot before each of their moves; their checksums are taken right before each
`move start`. A move that ends `failing` is retried once (same destination and mode) after the chaos.

At the end it checks: every move finished `done`, or `failing` with a reason and cleaned up, and a
failed move could be started again; every project lives on exactly one host (the one the hub names),
with the checksums of its last pre-move state; no `_incoming`, `_streams` or restore-staging debris, no
`move-*` snapshot left on any host (nor by a failed move before its retry), no hub lease held, no backup job left running, no host lock held;
and a request for every project through the hub proxy reaches that project's own server on its
current host (`project start`, the request, `project stop`).

    sudo .venv/bin/python benchmarks/soak/soak.py                              # 5 hosts, 60 moves
    sudo .venv/bin/python benchmarks/soak/soak.py --hosts 3 --moves 6 --duration 90   # a quick one
    sudo .venv/bin/python benchmarks/soak/soak.py --teardown /var/tmp/cocalc-soak-XXXX   # after --keep
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import fcntl
import importlib.util
import json
import math
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
_VENV = REPO / ".venv"
if (_VENV / "bin" / "python").exists() and Path(sys.prefix).resolve() != _VENV.resolve():
    # the checkout's venv has cocalc-ctl's dependencies (psycopg, yaml); importing scripts/demo.py from
    # another interpreter would re-exec the demo itself
    os.execv(str(_VENV / "bin" / "python"), [str(_VENV / "bin" / "python"), str(Path(__file__).resolve()),
                                              *sys.argv[1:]])
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))


def _load_demo():
    spec = importlib.util.spec_from_file_location("cocalc_ctl_demo", REPO / "scripts" / "demo.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod  # its dataclasses look their module up
    spec.loader.exec_module(mod)
    return mod


demo = _load_demo()
from benchenv import print_environment  # noqa: E402
from tests.support.leftovers import processes_mentioning  # noqa: E402
from tests.support.postgres import Postgres, sql  # noqa: E402

PY = sys.executable
CLI = [PY, "-m", "cocalc_ctl"]
STATE = "demo-state.json"  # the demo's state file format: scripts/demo.py's teardown() reads it
PREFIX = "cocalc-soak-"
MODES = [("pipe", "none"), ("pipe", "zstd"), ("staged", "lz4"), ("staged", "zstd"), ("backup", "none")]
TERMINAL = ("done", "failing", "cancelled")


def move_subvolumes(pool: Path) -> list[str]:
    """Every subvolume in the btrfs filesystem of `pool` whose last path component looks like a move
    snapshot (`move-*`), as `btrfs subvolume list` names it: a project's `.snapshots/move-*`, a
    destination's `_incoming/<p>/move-*`, anything. Strict: a listing that fails is reported as a
    finding, never read as "none"."""
    found = []
    for argv in (["btrfs", "subvolume", "list", str(pool)], ["btrfs", "subvolume", "list", "-o", str(pool)]):
        r = subprocess.run(argv, capture_output=True, text=True)
        if r.returncode != 0:
            found.append(f"({' '.join(argv[:3])} failed: {r.stderr.strip()[:120]})")
            continue
        for line in r.stdout.splitlines():
            path = line.split(" path ", 1)[-1].strip()
            if path.rsplit("/", 1)[-1].startswith("move-"):
                found.append(path)
    return sorted(set(found))


class SoakFailed(Exception):
    pass


@dataclass
class Project:
    pid: str
    host: str                      # host label where it lives (as the soak expects it)
    sums: dict = field(default_factory=dict)  # checksums right before its last move start
    moving: dict | None = None     # the move in flight: {"n", "to", "mode", "compress", "retry"}
    failed: dict | None = None     # a failed move waiting for its retry
    snaps: int = 0
    files: int = 0


@dataclass
class MoveRecord:
    n: int
    pid: str
    src: str
    dst: str
    mode: str
    compress: str
    retry: bool
    retried: bool = False          # a failed first try whose retry the hub accepted
    state: str = "queued"
    reason: str | None = None
    attempt: int = 0
    bytes: int = 0
    started: float = 0.0
    ended: float = 0.0
    reasons: list = field(default_factory=list)  # every status_reason seen while it ran (failed attempts)


class Soak:
    def __init__(self, opts):
        self.o = opts
        self.rng = random.Random(opts.seed)
        self.base = Path(tempfile.mkdtemp(prefix=PREFIX, dir="/var/tmp"))
        os.chmod(self.base, 0o711)
        self.rundir = Path("/run") / f"cocalc-soak-{uuid.uuid4().hex[:10]}"
        self.state = {"base": str(self.base), "rundir": str(self.rundir), "passwd_lines": [], "pids": {},
                      "pg_dir": None, "podman": [], "configs": []}
        self.save_state()
        self.log = open(self.base / "soak.log", "a", buffering=1)
        self.t0 = time.monotonic()
        self.pg: Postgres | None = None
        self.hub: demo.Node | None = None
        self.hosts: dict[str, demo.Node] = {}
        self.procs: dict[str, subprocess.Popen] = {}
        self.projects: list[Project] = []
        self.moves: list[MoveRecord] = []
        self.faults: dict[str, int] = {"worker SIGKILL": 0, "receiver sshd stopped": 0, "PostgreSQL restarted": 0,
                                       "pool filled": 0}
        self.fault_notes: list[str] = []
        self.unexpected_exits: list[str] = []
        self.checks: list[tuple[str, bool, str]] = []
        self.hub_proxy_port = 0
        self.image = ""
        self.phase_times: dict[str, float] = {}
        self.leftover_by_failed: list[str] = []

    # -- bookkeeping --------------------------------------------------------------------------------
    def save_state(self) -> None:
        (self.base / STATE).write_text(json.dumps(self.state, indent=1))

    def t(self) -> float:
        return time.monotonic() - self.t0

    def say(self, text: str) -> None:
        line = f"[{self.t():7.1f}s] {text}"
        print(line, flush=True)
        self.log.write(line + "\n")

    def env(self) -> dict:
        env = {k: v for k, v in os.environ.items() if not k.startswith("COCALC_CTL_")}
        env["PYTHONPATH"] = str(REPO)
        return env

    def ctl(self, node: demo.Node, *args: str, check: bool = True, timeout: float = 600) -> subprocess.CompletedProcess:
        t = time.monotonic()
        r = subprocess.run([*CLI, "--config", str(node.config_path), *args], capture_output=True, text=True,
                           env=self.env(), cwd=str(REPO), timeout=timeout)
        self.log.write(f"[{self.t():7.1f}s] [{node.label}] $ cocalc-ctl {' '.join(args)}  -> {r.returncode} "
                       f"({time.monotonic() - t:.1f}s)\n")
        out = (r.stdout + r.stderr).rstrip()
        if out:
            self.log.write("    " + out.replace("\n", "\n    ")[:4000] + "\n")
        if check and r.returncode != 0:
            raise SoakFailed(f"[{node.label}] cocalc-ctl {' '.join(args)} exited {r.returncode}: {r.stderr.strip()[-500:]}")
        return r

    def ctl_json(self, node: demo.Node, *args: str):
        return json.loads(self.ctl(node, "--json", *args).stdout)

    def spawn(self, name: str, argv: list[str], log: Path, env: dict | None = None) -> subprocess.Popen:
        p = subprocess.Popen(argv, stdout=open(log, "ab"), stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                             env={**self.env(), **(env or {})}, cwd=str(REPO), start_new_session=True)
        self.procs[name] = p
        self.state["pids"][name] = p.pid
        self.save_state()
        return p

    def hub_sql(self, query: str, params=()) -> list:
        return sql(self.pg.dsn(), query, params)

    # -- the fleet ----------------------------------------------------------------------------------
    def build(self) -> None:
        t = time.monotonic()
        self.pg = Postgres().start()
        self.state["pg_dir"] = str(self.pg.dir)
        self.save_state()
        self.pg.wait_ready()
        dsn = self.pg.dsn()
        hubdir = self.base / "hub"
        (hubdir / "hosts").mkdir(parents=True)
        self.hub = demo.Node("hub", hubdir, config={
            "hub_dsn": dsn, "data_dir": str(hubdir / "data"), "btrfs_root": str(hubdir / "none"),
            "move.transport": "local", "move.host_configs": str(hubdir / "hosts"),
            "move.lease_seconds": self.o.lease_seconds})
        self.hub.write_config()
        self.ctl(self.hub, "hub", "migrate")
        self.ctl(self.hub, "hub", "keys", "ensure")
        self.say(f"hub: PostgreSQL in {self.pg.dir}, schema migrated, hub key made")

        self.rundir.mkdir(mode=0o755)
        os.chmod(self.rundir, 0o755)
        wrapper = self.rundir / "cocalc-ctl"
        wrapper.write_text(f"#!/bin/sh\nPYTHONPATH={REPO} exec {PY} -m cocalc_ctl \"$@\"\n")
        os.chmod(wrapper, 0o755)
        secrets = self.base / "secrets"
        secrets.mkdir(mode=0o700)
        pw = secrets / "restic-password"
        pw.write_text(uuid.uuid4().hex + "\n")
        os.chmod(pw, 0o600)
        image = self.base / "image"
        self._busybox_image(image)
        self.image = f"dir:{image}"

        for i in range(self.o.hosts):
            label = f"h{i + 1}"
            addr = f"127.0.0.{11 + i}"
            base = self.base / label
            node = demo.Node(label, base, host_id=str(uuid.uuid4()), addr=addr, receiver_port=demo.free_port(addr))
            podman = {"root": base / "podman" / "root", "runroot": base / "podman" / "run",
                      "tmpdir": base / "podman" / "tmp"}
            node.config = {
                "host_id": node.host_id, "host_name": f"host-{label}",
                "btrfs_root": str(node.pool), "data_dir": str(node.data), "hub_dsn": dsn,
                "ssh_server": f"{addr}:{node.receiver_port}",
                "sshpiper.receiver_listen": f"{addr}:{node.receiver_port}",
                "sshpiper.cocalc_ctl": str(wrapper),
                "sshpiper.receiver_keys_dir": str(self.rundir / f"receiver-keys-{label}"),
                "backup.repo": str(self.base / "restic-repo"), "backup.password_file": str(pw),
                **{f"podman.{k}": str(v) for k, v in podman.items()},
                "podman.runtime": "runc", "podman.ulimits": "nofile=1024:1024,nproc=1024:1024",
                "podman.memory": "256M", "podman.pids_limit": 128, "podman.stop_timeout": 2,
                "rootfs.local_roots": str(image),
                "podman.command": "/bin/sh -c 'mkdir -p /tmp/www/$COCALC_PROJECT_ID && "
                                  f"echo \"hello from project $COCALC_PROJECT_ID on host-{label}\" "
                                  "> /tmp/www/$COCALC_PROJECT_ID/index.html && "
                                  "exec httpd -f -p 8080 -h /tmp/www'",
            }
            node.write_config()
            self.state["configs"].append(str(node.config_path))
            self.state["podman"].append([str(podman["root"]), str(podman["runroot"]), str(podman["tmpdir"])])
            self.save_state()
            (hubdir / "hosts" / f"{node.host_id}.yaml").symlink_to(node.config_path)
            self.hosts[label] = node
            self.ctl(node, "host", "init", "--loopback", self.o.pool_size)
        self.say(f"{len(self.hosts)} hosts: loopback btrfs pools of {self.o.pool_size} "
                 f"({', '.join(n.addr for n in self.hosts.values())})")

        nodes = list(self.hosts.values())
        for n in nodes:
            self.ctl(n, "keys", "ensure")
            self.ctl(n, "keys", "register")
        for n in nodes:
            self.ctl(self.hub, "keys", "trust", n.host_id)
        for n in nodes:
            self.ctl(n, "keys", "sync")
            self.ctl(n, "keys", "known-hosts")
        self.say("keys: ensured, registered, trusted, synced, known-hosts pinned")

        lines: list[str] = []
        for n in nodes:
            r = self.ctl(n, "sshpiper", "receiver-users")
            lines += [ln for ln in r.stdout.splitlines() if ln.strip() and ln not in lines]
        lines = [ln for ln in lines if not ln.startswith("cocalc-hub:")]  # local transport: not needed
        self.state["passwd_lines"] = lines
        self.save_state()
        demo.add_passwd_lines(lines)
        Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)
        for n in nodes:
            r = self.ctl(n, "sshpiper", "config", "--sshd")
            conf = n.data / "ssh" / "receiver_sshd_config"
            conf.parent.mkdir(parents=True, exist_ok=True)
            conf.write_text(r.stdout)
            self.start_sshd(n)
        self.say(f"receiver sshd on each host ({len(lines)} receiver users in /etc/passwd)")

        self.ctl(nodes[0], "backup", "init")
        for n in nodes:
            self.ctl(n, "rootfs", "pull", self.image)
            port = demo.free_port("127.0.0.1")
            n.proxy_port = port
            self.spawn(f"proxy-{n.label}", [*CLI, "--config", str(n.config_path), "proxy", "serve", "--mode", "host",
                                            "--listen", f"127.0.0.1:{port}", "--no-access-log"],
                       n.base / "proxy.log")
            demo.wait_port("127.0.0.1", port, self.procs[f"proxy-{n.label}"], timeout=60)
            self.ctl(n, "keys", "register", "--internal-url", f"http://127.0.0.1:{port}")
        self.hub_proxy_port = demo.free_port("127.0.0.1")
        self.spawn("proxy-hub", [*CLI, "--config", str(self.hub.config_path), "proxy", "serve", "--mode", "hub",
                                 "--listen", f"127.0.0.1:{self.hub_proxy_port}", "--no-access-log"],
                   self.hub.base / "proxy.log",
                   # the soak checks routing, not access control: no credentials (allowed on loopback);
                   # the hosts' proxies still check the hub's credential
                   env={"COCALC_CTL_PROXY_AUTH": "none"})
        demo.wait_port("127.0.0.1", self.hub_proxy_port, self.procs["proxy-hub"], timeout=60)
        self.say(f"restic repository, busybox image pulled on every host, host proxies, hub proxy on "
                 f"127.0.0.1:{self.hub_proxy_port}")

        nproj = max(self.o.hosts, math.ceil(self.o.moves / 3))
        labels = list(self.hosts)
        for i in range(nproj):
            p = Project(str(uuid.uuid4()), labels[i % len(labels)])
            node = self.hosts[p.host]
            self.ctl(node, "project", "create", p.pid, "--quota", "300M")
            self.ctl(self.hub, "hub", "project", "add", p.pid, "--host", f"host-{p.host}", "--image", self.image)
            root = node.pool / f"project-{p.pid}"
            for _ in range(self.rng.randint(2, 5)):
                self._write_random(p, root, self.rng.randint(4 << 10, 2 << 20))
            self.snapshot(p)
            self._write_random(p, root, self.rng.randint(1 << 10, 256 << 10))
            self.projects.append(p)
        self.say(f"{nproj} projects with random contents and a snapshot each")
        self.phase_times["setup"] = time.monotonic() - t

    def start_sshd(self, n: demo.Node) -> None:
        conf = n.data / "ssh" / "receiver_sshd_config"
        for _ in range(3):
            p = self.spawn(f"sshd-{n.label}", ["/usr/sbin/sshd", "-D", "-f", str(conf), "-E",
                                               str(n.base / "receiver-sshd.log")], n.base / "receiver-sshd.out")
            try:
                demo.wait_port(n.addr, n.receiver_port, p, timeout=30)
                return
            except demo.DemoFailed:
                time.sleep(1)  # the old listener's port may still be closing
        raise SoakFailed(f"receiver sshd of {n.label} does not start (see {n.base}/receiver-sshd.log)")

    def _busybox_image(self, tree: Path) -> None:
        for d in ("bin", "etc", "tmp", "home/user", "root"):
            (tree / d).mkdir(parents=True, exist_ok=True)
        os.chmod(tree / "tmp", 0o1777)
        shutil.copy2(shutil.which("busybox") or "/bin/busybox", tree / "bin" / "busybox")
        for applet in demo.BUSYBOX_APPLETS:
            os.link(tree / "bin" / "busybox", tree / "bin" / applet)
        (tree / "etc" / "passwd").write_text("root:x:0:0:root:/root:/bin/sh\n")

    def _write_random(self, p: Project, root: Path, size: int) -> None:
        p.files += 1
        d = root / "data" / f"d{self.rng.randint(0, 3)}"
        d.mkdir(parents=True, exist_ok=True)
        (d / f"f{p.files}.bin").write_bytes(self.rng.randbytes(size))

    def snapshot(self, p: Project, check: bool = True) -> None:
        p.snaps += 1
        self.ctl(self.hosts[p.host], "snapshot", "create", p.pid, f"s{p.snaps}", check=check)

    def mutate(self, p: Project) -> None:
        """What a user does between moves: a new file, a changed one, sometimes a snapshot. On a full
        pool (the soak fills one) the writes and the snapshot fail, as they would for the user."""
        root = self.hosts[p.host].pool / f"project-{p.pid}"
        try:
            self._write_random(p, root, self.rng.randint(1 << 10, 512 << 10))
            files = sorted((root / "data").rglob("*.bin"))
            if files:
                victim = self.rng.choice(files)
                with open(victim, "r+b") as fh:
                    fh.seek(self.rng.randint(0, max(0, victim.stat().st_size - 1)))
                    fh.write(self.rng.randbytes(4096))
        except OSError as e:
            if e.errno not in (errno.ENOSPC, errno.EDQUOT):
                raise
            self.say(f"user write into {p.pid[:8]} on {p.host} refused: {e.strerror}")
        if self.rng.random() < 0.4:
            self.snapshot(p, check=False)

    # -- moves --------------------------------------------------------------------------------------
    def start_move(self, p: Project, dst: str, mode: str, compress: str, retry: bool) -> bool:
        """Checksum the project, then `move start`; False when the hub refused (e.g. it is down)."""
        p.sums = demo.tree_sums(self.hosts[p.host].pool / f"project-{p.pid}")
        args = ["move", "start", p.pid, "--to", self.hosts[dst].host_id, "--mode", mode]
        if mode != "backup":
            args += ["--compress", compress]
        r = self.ctl(self.hub, *args, check=False)
        if r.returncode != 0:
            self.say(f"move start {p.pid[:8]} refused ({r.returncode}): {r.stderr.strip()[-200:]}")
            return False
        rec = MoveRecord(len(self.moves) + 1, p.pid, p.host, dst, mode, compress, retry, started=self.t())
        self.moves.append(rec)
        p.moving = {"rec": rec}
        self.say(f"move {rec.n}{' (retry)' if retry else ''}: {p.pid[:8]} {p.host} -> {dst} ({mode}/{compress}) queued")
        return True

    def poll_moves(self) -> None:
        """Record the outcome of every move that has finished (terminal and cleaned up)."""
        moving = {p.pid: p for p in self.projects if p.moving}
        if not moving:
            return
        try:
            rows = self.hub_sql("SELECT project_id::text, state, status_reason, attempt, progress, "
                                "cleaned_at IS NOT NULL FROM project_moves WHERE project_id = ANY(%s::uuid[])",
                                (list(moving),))
        except Exception as e:  # the hub is down (the soak restarts it): look again later
            self.log.write(f"poll: {e}\n")
            return
        for pid, state, reason, attempt, progress, cleaned in rows:
            p = moving[pid]
            rec: MoveRecord = p.moving["rec"]
            rec.state, rec.reason, rec.attempt = state, reason, attempt
            if reason and (not rec.reasons or rec.reasons[-1] != reason):
                rec.reasons.append(reason)
            if state in TERMINAL and cleaned:
                rec.ended = self.t()
                p.moving = None
                if state == "done":
                    rec.bytes = int((progress or {}).get("bytes") or 0)
                    p.host = rec.dst
                    p.failed = None
                    self.say(f"move {rec.n}: done in {rec.ended - rec.started:.0f}s, attempt {attempt}, "
                             f"{rec.bytes / 2**20:.1f} MiB; {pid[:8]} now on {rec.dst}")
                else:
                    p.failed = {"dst": rec.dst, "mode": rec.mode, "compress": rec.compress, "rec": rec}
                    self.say(f"move {rec.n}: {state} after {attempt} attempt(s): {reason}")

    def maybe_start_moves(self, until_n: int, limit_one: bool = True) -> None:
        started = len([m for m in self.moves if not m.retry])
        if started >= until_n:
            return
        idle = [p for p in self.projects if not p.moving and not p.failed]
        if not idle:
            return
        p = self.rng.choice(idle)
        self.mutate(p)
        dst = self.rng.choice([h for h in self.hosts if h != p.host])
        mode, compress = self.rng.choice(MODES)
        self.start_move(p, dst, mode, compress, retry=False)

    def settled(self) -> bool:
        return not any(p.moving for p in self.projects)

    # -- workers ------------------------------------------------------------------------------------
    def start_worker(self, i: int) -> None:
        self.spawn(f"worker-{i}", [*CLI, "--config", str(self.hub.config_path), "move", "worker", "--poll", "1"],
                   self.hub.base / f"worker-{i}.log")

    def check_workers(self) -> None:
        for i in range(self.o.workers):
            p = self.procs.get(f"worker-{i}")
            if p is not None and p.poll() is not None:
                tail = (self.hub.base / f"worker-{i}.log").read_text(errors="replace").strip().splitlines()[-3:]
                self.unexpected_exits.append(f"worker-{i} exited {p.returncode} at {self.t():.0f}s: {' | '.join(tail)}")
                self.say(f"worker-{i} exited by itself ({p.returncode}); restarting it")
                self.start_worker(i)

    def kill_worker(self) -> None:
        i = self.rng.randrange(self.o.workers)
        p = self.procs[f"worker-{i}"]
        if p.poll() is None:
            os.kill(p.pid, signal.SIGKILL)  # only the worker: its host steps die by their parent-death signal
            p.wait()
        self.faults["worker SIGKILL"] += 1
        with contextlib.suppress(OSError):
            with open(self.hub.base / f"worker-{i}.log", "a") as fh:
                fh.write(f"--- soak: SIGKILL at {self.t():.1f}s, restarted\n")
        self.start_worker(i)
        self.log.write(f"[{self.t():7.1f}s] chaos: SIGKILL worker-{i} (pid {p.pid}), restarted\n")

    # -- other faults -------------------------------------------------------------------------------
    def stop_sshd(self, label: str) -> None:
        p = self.procs[f"sshd-{label}"]
        p.send_signal(signal.SIGTERM)  # the listener only: sessions already open go on, as with `systemctl stop`
        p.wait(timeout=10)
        self.faults["receiver sshd stopped"] += 1
        self.say(f"chaos: receiver sshd of {label} stopped")

    def restart_postgres(self, down: float) -> None:
        self.pg.pause()
        self.say(f"chaos: PostgreSQL stopped (fast) for {down:.0f}s")
        time.sleep(down)
        self.pg.resume()
        self.faults["PostgreSQL restarted"] += 1
        self.say("chaos: PostgreSQL started again")

    def fill_pool(self, label: str) -> Path:
        pool = self.hosts[label].pool
        path = pool / "soak-fill"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            st = os.statvfs(pool)
            with contextlib.suppress(OSError):
                os.posix_fallocate(fd, 0, max(1, st.f_bavail * st.f_frsize - (4 << 20)))
            os.lseek(fd, 0, os.SEEK_END)
            chunk = b"\0" * (1 << 20)
            while True:  # to the brim: until the filesystem refuses
                try:
                    os.write(fd, chunk)
                except OSError:
                    break
            with contextlib.suppress(OSError):
                os.fsync(fd)
        finally:
            os.close(fd)
        st = os.statvfs(pool)
        self.faults["pool filled"] += 1
        self.say(f"chaos: pool of {label} filled ({st.f_bavail * st.f_frsize >> 10} KiB left)")
        return path

    # -- the run ------------------------------------------------------------------------------------
    def run(self) -> None:
        self.build()
        for i in range(self.o.workers):
            self.start_worker(i)
        self.say(f"{self.o.workers} move workers started")
        d = self.o.duration
        labels = list(self.hosts)
        sshd_victim = self.rng.choice(labels)
        fill_victim = self.rng.choice([h for h in labels if h != sshd_victim] or labels)
        sshd_down = min(30.0, d / 3)
        fill_for = min(40.0, d / 4)
        plan = {"sshd_stop": 0.15 * d, "pg": 0.4 * d, "fill": 0.55 * d}
        self.fault_notes = [f"receiver sshd of {sshd_victim} down {sshd_down:.0f}s at ~{plan['sshd_stop']:.0f}s",
                            f"PostgreSQL down {self.o.pg_down:.0f}s at ~{plan['pg']:.0f}s",
                            f"pool of {fill_victim} full {fill_for:.0f}s at ~{plan['fill']:.0f}s",
                            f"a worker SIGKILLed every ~{self.o.kill_every:.0f}s"]
        self.say("chaos plan: " + "; ".join(self.fault_notes))
        pace = d * 0.85 / max(1, self.o.moves)
        t_start = time.monotonic()
        next_move = 0.0
        next_kill = self.o.kill_every * self.rng.uniform(0.75, 1.25)
        sshd_back_at = fill_path = fill_until = None
        done_pg = done_sshd = done_fill = False
        while True:
            el = time.monotonic() - t_start
            self.poll_moves()
            self.check_workers()
            chaos = el < d
            if el >= next_move:
                self.maybe_start_moves(self.o.moves)
                next_move = el + pace
            if chaos and el >= next_kill:
                self.kill_worker()
                next_kill = el + self.o.kill_every * self.rng.uniform(0.75, 1.25)
            if not done_sshd and el >= plan["sshd_stop"]:
                self.stop_sshd(sshd_victim)
                sshd_back_at, done_sshd = el + sshd_down, True
            if sshd_back_at is not None and el >= sshd_back_at:
                self.start_sshd(self.hosts[sshd_victim])
                self.say(f"chaos: receiver sshd of {sshd_victim} started again")
                sshd_back_at = None
            if not done_pg and el >= plan["pg"]:
                self.restart_postgres(self.o.pg_down)
                done_pg = True
            if not done_fill and el >= plan["fill"]:
                fill_path, fill_until, done_fill = self.fill_pool(fill_victim), el + fill_for, True
            if fill_path is not None and el >= fill_until:
                fill_path.unlink()
                os.sync()
                self.say(f"chaos: pool of {fill_victim} emptied again")
                fill_path = None
            if not chaos and sshd_back_at is None and fill_path is None:
                break
            time.sleep(0.5)
        self.phase_times["chaos"] = time.monotonic() - t_start
        self.say("chaos over: waiting for every move to finish")
        self.settle()
        failed = [p for p in self.projects if p.failed]
        self.leftover_by_failed = self.left_by_failed_moves(failed)
        self.say(f"retrying {len(failed)} failed move(s) once")
        for p in failed:
            f = p.failed
            deadline = time.monotonic() + 120
            while time.monotonic() < deadline:
                if self.start_move(p, f["dst"], f["mode"], f["compress"], retry=True):
                    f["rec"].retried = True
                    p.failed = None
                    break
                time.sleep(2)
                self.poll_moves()
        self.settle()
        while len([m for m in self.moves if not m.retry]) < self.o.moves:  # moves the chaos left unstarted
            if not [p for p in self.projects if not p.moving and not p.failed] and self.settled():
                break  # every project failed its retry: nothing left to move
            self.maybe_start_moves(self.o.moves)
            time.sleep(0.5)
            self.poll_moves()
        self.settle()
        self.checks_at_end()

    def left_by_failed_moves(self, failed: list[Project]) -> list[str]:
        """What failed moves left on their sources before anything retried them (a check: the worker
        releases a failed move's snapshot and stream files on its source when it marks it failed)."""
        left = []
        for p in failed:
            node = self.hosts[p.host]
            r = self.ctl(node, "--json", "snapshot", "list", p.pid, check=False)
            if r.returncode != 0:
                left.append(f"{p.pid[:8]}@{p.host}: `snapshot list` failed ({r.stderr.strip()[:120]})")
            else:
                left += [f"{p.pid[:8]}@{p.host}:{s['name']}" for s in json.loads(r.stdout) if s["name"].startswith("move-")]
            streams = node.pool / "_streams" / p.pid
            if streams.is_dir():
                left += [f"{p.pid[:8]}@{p.host}:_streams/{e.name}" for e in streams.iterdir()]
        if left:
            self.say(f"left on the sources by {len(failed)} failed move(s) before their retry: {', '.join(left)}")
        return left

    def settle(self) -> None:
        deadline = time.monotonic() + self.o.settle_timeout
        while not self.settled():
            if time.monotonic() > deadline:
                stuck = [p.moving["rec"] for p in self.projects if p.moving]
                self.say(f"{len(stuck)} move(s) did not finish within {self.o.settle_timeout:.0f}s")
                return
            self.check_workers()
            time.sleep(1)
            self.poll_moves()

    # -- checks -------------------------------------------------------------------------------------
    def check(self, name: str, ok: bool, detail: str = "") -> None:
        self.checks.append((name, ok, detail))
        self.say(f"check {'ok  ' if ok else 'FAIL'} {name}" + (f": {detail}" if detail else ""))

    def checks_at_end(self) -> None:
        t = time.monotonic()
        # 1. every move finished: done, or failing with a reason and cleaned up; failed ones could restart
        stuck = [m for m in self.moves if m.state not in TERMINAL or (m.state != "done" and not m.reason)]
        unfinished = [p.pid for p in self.projects if p.moving]
        self.check("every move is done or cleanly failed with a reason", not stuck and not unfinished,
                   "; ".join(f"move {m.n} {m.pid[:8]} {m.state} ({m.reason})" for m in stuck[:5]))
        not_retriable = [m for m in self.moves if not m.retry and m.state == "failing" and not m.retried]
        self.check("every failed move could be started again", not not_retriable,
                   "; ".join(f"move {m.n} {m.pid[:8]}: `move start` refused" for m in not_retriable[:5]))
        # 2. where projects live, and what they hold
        hub_rows = {r["project_id"]: r for r in self.ctl_json(self.hub, "hub", "project", "list", "--limit", "10000")}
        by_host_id = {n.host_id: label for label, n in self.hosts.items()}
        found: dict[str, list[str]] = {}
        for label, n in self.hosts.items():
            for row in self.ctl_json(n, "project", "list"):
                found.setdefault(row["project_id"], []).append(label)
        bad_place, bad_sums = [], []
        for p in self.projects:
            where = found.get(p.pid, [])
            on_disk = [label for label, n in self.hosts.items() if (n.pool / f"project-{p.pid}").exists()]
            hub_host = by_host_id.get(str(hub_rows.get(p.pid, {}).get("host_id")))
            if where != [p.host] or on_disk != [p.host] or hub_host != p.host:
                bad_place.append(f"{p.pid[:8]}: listed on {where or 'no host'}, subvolume on {on_disk or 'no host'}, "
                                 f"hub says {hub_host}, expected {p.host}")
                continue
            sums = demo.tree_sums(self.hosts[p.host].pool / f"project-{p.pid}")
            if sums != p.sums:
                diff = sorted(set(sums.items()) ^ set(p.sums.items()))
                bad_sums.append(f"{p.pid[:8]} on {p.host}: {len(diff)} differing entries, e.g. {diff[:2]}")
        self.check("every project lives on exactly one host, the one the hub names", not bad_place,
                   "; ".join(bad_place[:5]))
        self.check("every project's files equal its last pre-move state", not bad_sums, "; ".join(bad_sums[:5]))
        # 3. nothing left behind
        debris = []
        for label, n in self.hosts.items():
            for d in ("_incoming", "_streams", ".restore-staging"):
                path = n.pool / d
                if path.is_dir():
                    debris += [f"{label}:{d}/{e.name}" for e in path.iterdir()]
            debris += [f"{label}:{e.name}" for e in n.pool.iterdir()
                       if e.name not in ("_incoming", "_streams", ".restore-staging") and not e.name.startswith("project-")]
        self.check("no _incoming, _streams or restore-staging debris", not debris, ", ".join(debris[:8]))
        move_snaps = []
        for p in self.projects:
            if p.host in found.get(p.pid, []):
                names = [s["name"] for s in self.ctl_json(self.hosts[p.host], "snapshot", "list", p.pid)]
                move_snaps += [f"{p.pid[:8]}@{p.host}:{s}" for s in names if s.startswith("move-")]
        for label, n in self.hosts.items():  # subvolumes anywhere in a pool named like a move snapshot
            move_snaps += [f"{label}:{tail}" for tail in move_subvolumes(n.pool)]
        self.check("no move snapshot left", not move_snaps, ", ".join(sorted(set(move_snaps))[:8]))
        self.check("failed moves left nothing on their sources (before their retry)", not self.leftover_by_failed,
                   ", ".join(self.leftover_by_failed[:8]))
        leases = self.hub_sql("SELECT project_id::text, lease_owner FROM project_moves WHERE lease_owner IS NOT NULL")
        running = []
        for label, n in self.hosts.items():
            st = self.ctl_json(n, "backup", "status")
            jobs = st.get("jobs", []) if isinstance(st, dict) else []
            running += [f"{label}:{j.get('project_id', '?')[:8]}" for j in jobs if j.get("state") in ("pending", "running")]
        held = self.held_locks()
        self.check("no lease held (hub leases, backup jobs, host locks)", not leases and not running and not held,
                   "; ".join([f"lease {pid[:8]} by {o}" for pid, o in leases] + running + held)[:600])
        # 4. the hub proxy routes every project to where it lives
        misrouted = self.check_routes()
        self.check("the hub proxy routes every project to its current host", not misrouted, "; ".join(misrouted[:5]))
        self.phase_times["checks"] = time.monotonic() - t

    def held_locks(self) -> list[str]:
        """Host lock files (flock) that some process still holds."""
        held = []
        for label, n in self.hosts.items():
            locks = n.data / "locks"
            if not locks.is_dir():
                continue
            for f in sorted(locks.iterdir()):
                try:
                    fd = os.open(f, os.O_RDONLY | os.O_NOFOLLOW)
                except OSError:
                    continue
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    fcntl.flock(fd, fcntl.LOCK_UN)
                except OSError:
                    held.append(f"{label}:locks/{f.name}")
                finally:
                    os.close(fd)
        return held

    def check_routes(self) -> list[str]:
        bad = []
        for p in self.projects:
            node = self.hosts[p.host]
            r = self.ctl(node, "project", "start", p.pid, check=False, timeout=300)
            if r.returncode != 0:
                bad.append(f"{p.pid[:8]}: project start on {p.host} exited {r.returncode}: {r.stderr.strip()[-200:]}")
                continue
            want = f"hello from project {p.pid} on host-{p.host}"
            code, body = 0, ""
            for _ in range(100):
                try:
                    code, body = demo.http_get(f"http://127.0.0.1:{self.hub_proxy_port}/{p.pid}/")
                except OSError as e:
                    code, body = 0, str(e)
                if code == 200 and want in body:
                    break
                time.sleep(0.1)
            if not (code == 200 and want in body):
                bad.append(f"{p.pid[:8]} (on {p.host}): {code} {body.strip()[:120]!r}")
            self.ctl(node, "project", "stop", p.pid, check=False, timeout=300)
        return bad

    # -- the end ------------------------------------------------------------------------------------
    def summary(self, wall: float) -> str:
        first = [m for m in self.moves if not m.retry]
        retries = [m for m in self.moves if m.retry]
        rows = [
            ("hosts / projects / workers", f"{len(self.hosts)} / {len(self.projects)} / {self.o.workers}"),
            ("moves started (first tries)", str(len(first))),
            ("  by mode", ", ".join(f"{k} {sum(1 for m in first if m.mode == k)}" for k in ("pipe", "staged", "backup"))),
            ("  done", str(sum(1 for m in first if m.state == "done"))),
            ("  failed cleanly (failing, reason, cleaned up)", str(sum(1 for m in first if m.state == "failing"))),
            ("  other end state", str(sum(1 for m in first if m.state not in ("done", "failing")))),
            ("retried after the chaos", str(len(retries))),
            ("  retries done", str(sum(1 for m in retries if m.state == "done"))),
            ("  retries failed", str(sum(1 for m in retries if m.state != "done"))),
            ("worker claims (attempts) over all moves", str(sum(m.attempt for m in self.moves))),
            *[(f"fault: {k}", str(v)) for k, v in self.faults.items()],
            ("workers that exited by themselves", str(len(self.unexpected_exits))),
            ("move snapshots / stream dirs failed moves left on sources (before retry)",
             str(len(self.leftover_by_failed))),
            ("bytes moved (done moves, on the wire / backed up)", f"{sum(m.bytes for m in self.moves) / 2**20:.1f} MiB"),
            *[(f"time: {k}", f"{v:.0f} s") for k, v in self.phase_times.items()],
            ("wall time", f"{wall:.0f} s"),
            ("load average at the end (1/5/15 min)", " / ".join(f"{x:.1f}" for x in os.getloadavg())
             + f" on {os.cpu_count()} cpus" + ("  UNDER LOAD" if os.getloadavg()[0] > 0.5 * (os.cpu_count() or 1)
                                               else "")),
            ("checks", f"{sum(ok for _, ok, _ in self.checks)} of {len(self.checks)} ok"),
        ]
        w = max(len(a) for a, _ in rows)
        out = [f"{'measure':<{w}}  value", f"{'-' * w}  -----"]
        out += [f"{a:<{w}}  {b}" for a, b in rows]
        return "\n".join(out)

    def keep_logs(self, dest: Path) -> None:
        dest.mkdir(parents=True, exist_ok=True)
        for src in [self.base / "soak.log", *self.base.glob("hub/*.log"), *self.base.glob("h*/*.log")]:
            rel = src.relative_to(self.base)
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            with contextlib.suppress(OSError):
                shutil.copy2(src, dest / rel)
        if self.pg:
            with contextlib.suppress(OSError):
                shutil.copy2(self.pg.dir / "log", dest / "postgresql.log")
        (dest / "moves.json").write_text(json.dumps([m.__dict__ for m in self.moves], indent=1, default=str))


def teardown(base: Path) -> None:
    """Everything the run made: scripts/demo.py's teardown (containers, recorded servers, passwd lines,
    PostgreSQL, mounts, loop devices, directories), after ending the processes that still name this run's
    directory (workers' and proxies' children, per-connection sshds) and freeing project ports."""
    for pid, _ in processes_mentioning(str(base)):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
    time.sleep(1)
    for pid, _ in processes_mentioning(str(base)):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    from tests.support.hosts import release_guarded_ports

    for data in base.glob("h*/data"):
        release_guarded_ports(type("H", (), {"data": data})())
    demo.teardown(base)


def main() -> int:
    ap = argparse.ArgumentParser(description="cocalc-ctl fleet soak under chaos (root, one machine)")
    ap.add_argument("--hosts", type=int, default=5, help="project hosts (2-9, default 5)")
    ap.add_argument("--moves", type=int, default=60, help="moves to start (first tries, default 60)")
    ap.add_argument("--duration", type=float, default=300, help="seconds of chaos (default 300)")
    ap.add_argument("--seed", type=int, default=None, help="random seed (default: printed)")
    ap.add_argument("--keep", action="store_true", help="leave the fleet running; remove it later with --teardown")
    ap.add_argument("--teardown", metavar="DIR", help="remove what a --keep run left in DIR")
    ap.add_argument("--workers", type=int, default=3, help="move worker processes (default 3)")
    ap.add_argument("--kill-every", type=float, default=20, help="seconds between worker SIGKILLs (default ~20)")
    ap.add_argument("--pg-down", type=float, default=5, help="seconds PostgreSQL stays down (default 5)")
    ap.add_argument("--lease-seconds", type=int, default=15, help="move.lease_seconds of the hub (default 15)")
    ap.add_argument("--pool-size", default="1G", help="each host's loopback pool (default 1G)")
    ap.add_argument("--settle-timeout", type=float, default=900, help="seconds to wait for moves to finish")
    ap.add_argument("--logs", metavar="DIR", help="copy the logs here at the end (default: only when a check fails)")
    opts = ap.parse_args()
    if os.geteuid() != 0:
        print("soak: run as root (it mounts loopback btrfs pools and runs sshd)", file=sys.stderr)
        return 5
    if opts.teardown:
        base = Path(opts.teardown).resolve()
        if not (base / STATE).exists() or not base.name.startswith(PREFIX):
            print(f"soak: {base} is not a soak directory", file=sys.stderr)
            return 2
        teardown(base)
        print(f"removed {base}")
        return 0
    if not 2 <= opts.hosts <= 9 or opts.moves < 1 or opts.duration < 10:
        print("soak: --hosts 2..9, --moves >= 1, --duration >= 10", file=sys.stderr)
        return 2
    if opts.seed is None:
        opts.seed = random.SystemRandom().randrange(1 << 31)

    def on_signal(signum, _frame):
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGHUP, on_signal)
    print_environment()
    soak = Soak(opts)
    print(f"soak directory {soak.base}; run directory {soak.rundir}; seed {opts.seed}; {opts.hosts} hosts, "
          f"{opts.moves} moves, {opts.duration:.0f}s of chaos", flush=True)
    error = None
    t0 = time.monotonic()
    try:
        soak.run()
    except KeyboardInterrupt:
        error = "interrupted"
    except SoakFailed as e:
        error = str(e)
    except Exception as e:  # an unexpected failure still gets its summary and the clean-up
        import traceback

        traceback.print_exc()
        error = f"{type(e).__name__}: {e}"
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        wall = time.monotonic() - t0
        ok = error is None and soak.checks and all(c[1] for c in soak.checks)
        print("\n== summary (seed %d)" % opts.seed)
        print(soak.summary(wall))
        seen: dict[str, int] = {}
        for m in soak.moves:
            for r in m.reasons:
                key = re.sub(r"[0-9a-f]{8}(-[0-9a-f]{4}){3}-[0-9a-f]{12}", "<uuid>", r.replace(str(REPO), "<repo>"))
                seen[key[:160]] = seen.get(key[:160], 0) + 1
        if seen:
            print("\nreasons the hub recorded while moves ran (failed attempts, count):")
            for key, count in sorted(seen.items(), key=lambda kv: -kv[1]):
                print(f"  {count:3d}  {key}")
        if soak.unexpected_exits:
            print("\nworkers that exited by themselves:\n  " + "\n  ".join(soak.unexpected_exits))
        if error:
            print(f"\nsoak: FAILED: {error}", file=sys.stderr)
        for name, good, detail in soak.checks:
            if not good:
                print(f"FAILED check: {name}: {detail}", file=sys.stderr)
        logs = Path(opts.logs) if opts.logs else (None if ok else Path(tempfile.mkdtemp(prefix="cocalc-soak-logs-",
                                                                                          dir="/var/tmp")))
        if logs:
            soak.keep_logs(logs)
            print(f"logs copied to {logs}")
        print(f"\nsoak: {'ok' if ok else 'FAILED'}", flush=True)
        if opts.keep:
            print(f"left running under {soak.base}; hub config {soak.base}/hub/config.yaml; "
                  f"tear down with: {PY} {Path(__file__).resolve()} --teardown {soak.base}")
        else:
            t = time.monotonic()
            soak.log.close()
            teardown(soak.base)
            print(f"cleaned up in {time.monotonic() - t:.1f}s: workers, proxies, sshds, containers, PostgreSQL, "
                  f"passwd lines, mounts, loop devices, {soak.base}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
