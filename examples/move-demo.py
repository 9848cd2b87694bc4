#!/usr/bin/env python3
"""Move demo (as root): two loopback btrfs hosts A and B, a real sshd receiver in front of each
(127.0.0.2, 127.0.0.3), a throwaway PostgreSQL hub. A project with 3 snapshots moves A -> B in pipe
mode, back B -> A in staged mode with zstd, then A -> B again through the hub's queue and worker.
Prints every command and its output, checks after every move that the project's files arrived with
their checksums, and removes everything at the end (also when a step fails or on Ctrl-C / SIGTERM).

    python3 examples/move-demo.py
"""

from __future__ import annotations

import hashlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
_VENV = REPO / ".venv"
if (_VENV / "bin" / "python").exists() and Path(sys.prefix).resolve() != _VENV.resolve():
    # the checkout's venv has cocalc-ctl's dependencies (typer, yaml, psycopg): run the demo with it
    os.execv(str(_VENV / "bin" / "python"), [str(_VENV / "bin" / "python"), str(Path(__file__).resolve()),
                                              *sys.argv[1:]])
sys.path.insert(0, str(REPO))

from tests.support.hosts import Host, cleanup_mounts_under  # noqa: E402
from tests.support.move import Receiver, ensure_host_key, install_rig_hub  # noqa: E402
from tests.support.move_hub import make_hub_rig  # noqa: E402
from tests.support.postgres import Postgres  # noqa: E402

PROJECT = "6f1d2c3e-8a4b-4c5d-9e6f-7a8b9c0d1e2f"


class DemoFailed(Exception):
    pass


def show(run, *args: str) -> None:
    print("$ cocalc-ctl " + " ".join(args))
    r = run(*args, check=False)
    print((r.stdout + r.stderr).rstrip() + "\n", flush=True)
    if r.returncode != 0:
        raise DemoFailed(f"cocalc-ctl {' '.join(args)} exited {r.returncode}")


def checksums(root: Path) -> dict[str, str]:
    """sha256 of every regular file of a project, without its snapshots."""
    out = {}
    for dirpath, dirs, files in os.walk(root):
        if Path(dirpath) == root:
            dirs[:] = [d for d in dirs if d != ".snapshots"]
        for name in files:
            p = Path(dirpath) / name
            if p.is_file() and not p.is_symlink():
                out[str(p.relative_to(root))] = hashlib.sha256(p.read_bytes()).hexdigest()
    return out


def check_arrived(want: dict[str, str], host: Host, name: str, pid: str, gone_from: Host) -> None:
    got = checksums(host.project_path(pid))
    if got != want:
        bad = sorted(k for k in want.keys() | got.keys() if want.get(k) != got.get(k))
        raise DemoFailed(f"files differ on {name}: {', '.join(bad)}")
    if gone_from.project_path(pid).exists():
        raise DemoFailed(f"the project is still on the source after cleanup: {gone_from.project_path(pid)}")
    print(f"# ok: all {len(want)} files arrived on {name} with their checksums\n", flush=True)


def _sigterm(signum, frame):
    raise SystemExit(f"demo: interrupted by signal {signum}")


def main() -> int:
    signal.signal(signal.SIGTERM, _sigterm)
    base = Path(tempfile.mkdtemp(prefix="cocalc-move-demo-", dir="/var/tmp"))
    print(f"# demo directory {base}", flush=True)
    receivers: list[Receiver] = []
    pg = None
    try:
        a, b = Host(base / "a"), Host(base / "b")
        for h in (a, b):
            h.init("1G")
            ensure_host_key(h)
        rb = Receiver(b, "127.0.0.3", base / "sshd-b").start()
        receivers.append(rb)
        rb.allow(a)
        ra = Receiver(a, "127.0.0.2", base / "sshd-a").start()
        receivers.append(ra)
        ra.allow(b)
        # a destination receives only for a move the hub authorised: until the hub's worker takes over
        # (last step), the demo plays the hub and adds a signed move ticket (--ticket) to each send
        install_rig_hub([a, b], {rb.addr: b, ra.addr: a})
        pid = PROJECT
        a.cli("project", "create", pid)
        root = a.project_path(pid)
        (root / "data.bin").write_bytes(os.urandom(20 << 20))
        for s in ("s1", "s2", "s3"):
            (root / f"{s}.txt").write_text(s)
            a.cli("snapshot", "create", pid, s)
        want = checksums(root)
        print(f"# project {pid} on A: {len(want)} files, data.bin sha256 {want['data.bin'][:16]}…")
        print(f"# host A {a.host_id} (sshd 127.0.0.2:{ra.port}), host B {b.host_id} (sshd 127.0.0.3:{rb.port})")
        print("# each `move send` below also gets --ticket <the hub's signed ticket for this send>\n")
        show(a.cli, "move", "send", pid, "--to", rb.spec(), "--mode", "pipe")
        show(b.cli, "move", "finalize", pid)
        show(b.cli, "snapshot", "list", pid)
        show(a.cli, "move", "cleanup", pid, "--force")
        check_arrived(want, b, "B", pid, a)
        show(b.cli, "move", "send", pid, "--to", ra.spec(), "--mode", "staged", "--compress", "zstd",
             "--snapshot", "move-back")
        show(a.cli, "move", "finalize", pid)
        show(b.cli, "move", "cleanup", pid, "--force")
        check_arrived(want, a, "A", pid, b)
        key = a.data / "secrets" / "host-to-host" / "id_ed25519"
        r = subprocess.run(["ssh", "-p", str(rb.port), "-i", str(key), "-o", "IdentitiesOnly=yes",
                            "-o", f"UserKnownHostsFile={a.data / 'ssh' / 'known_hosts'}", "-T", "root@127.0.0.3",
                            "list ../../etc; id"], capture_output=True, text=True)
        print(f"$ ssh … root@127.0.0.3 'list ../../etc; id'   # the receiver's forced command\n"
              f"{r.stderr.strip()} (exit {r.returncode})\n")
        if r.returncode != 2 or "refused command" not in r.stderr:
            raise DemoFailed("the receiver's forced command did not refuse a command outside its grammar")
        pg = Postgres().start()
        pg.wait_ready()
        rig = make_hub_rig(pg.new_database(), base / "hub", a, b, ra.port, rb.port)
        for args in (("hub", "project", "add", pid, "--host", a.host_id), ("move", "start", pid),
                     ("move", "status"), ("move", "worker", "--once"), ("move", "status", pid),
                     ("hub", "project", "show", pid)):
            show(rig.cli, *args)
        check_arrived(want, b, "B", pid, a)
        print("demo: ok", flush=True)
        return 0
    except DemoFailed as e:
        print(f"demo: FAILED: {e}", file=sys.stderr, flush=True)
        return 1
    finally:
        for r in receivers:
            r.close()
        if pg:
            pg.stop()
        cleanup_mounts_under(base)
        shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
