#!/usr/bin/env python3
"""Move demo (as root): two loopback btrfs hosts A and B, a real sshd receiver in front of each
(127.0.0.2, 127.0.0.3), a throwaway PostgreSQL hub. A project with 3 snapshots moves A -> B in pipe
mode, back B -> A in staged mode with zstd, then A -> B again through the hub's queue and worker.
Prints every command and its output; removes everything at the end.

    python3 examples/move-demo.py
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.support.hosts import Host, cleanup_mounts_under  # noqa: E402
from tests.support.move import Receiver, ensure_host_key  # noqa: E402
from tests.support.move_hub import make_hub_rig  # noqa: E402
from tests.support.postgres import Postgres  # noqa: E402

PROJECT = "6f1d2c3e-8a4b-4c5d-9e6f-7a8b9c0d1e2f"


def show(run, *args: str) -> None:
    print("$ cocalc-ctl " + " ".join(args))
    r = run(*args, check=False)
    print((r.stdout + r.stderr).rstrip() + "\n", flush=True)


def main() -> int:
    base = Path(tempfile.mkdtemp(prefix="cocalc-move-demo-", dir="/var/tmp"))
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
        pid = PROJECT
        a.cli("project", "create", pid)
        root = a.project_path(pid)
        (root / "data.bin").write_bytes(os.urandom(20 << 20))
        for s in ("s1", "s2", "s3"):
            (root / f"{s}.txt").write_text(s)
            a.cli("snapshot", "create", pid, s)
        print(f"# host A {a.host_id} (sshd 127.0.0.2:{ra.port}), host B {b.host_id} (sshd 127.0.0.3:{rb.port})\n")
        show(a.cli, "move", "send", pid, "--to", rb.spec(), "--mode", "pipe")
        show(b.cli, "move", "finalize", pid)
        show(b.cli, "snapshot", "list", pid)
        show(a.cli, "move", "cleanup", pid, "--force")
        show(b.cli, "move", "send", pid, "--to", ra.spec(), "--mode", "staged", "--compress", "zstd",
             "--snapshot", "move-back")
        show(a.cli, "move", "finalize", pid)
        show(b.cli, "move", "cleanup", pid, "--force")
        key = a.data / "secrets" / "host-to-host" / "id_ed25519"
        r = subprocess.run(["ssh", "-p", str(rb.port), "-i", str(key), "-o", "IdentitiesOnly=yes",
                            "-o", f"UserKnownHostsFile={a.data / 'ssh' / 'known_hosts'}", "-T", "root@127.0.0.3",
                            "list ../../etc; id"], capture_output=True, text=True)
        print(f"$ ssh … root@127.0.0.3 'list ../../etc; id'   # the receiver's forced command\n"
              f"{r.stderr.strip()} (exit {r.returncode})\n")
        pg = Postgres().start()
        pg.wait_ready()
        rig = make_hub_rig(pg.new_database(), base / "hub", a, b, ra.port, rb.port)
        for args in (("hub", "project", "add", pid, "--host", a.host_id), ("move", "start", pid),
                     ("move", "status"), ("move", "worker", "--once"), ("move", "status", pid),
                     ("hub", "project", "show", pid)):
            show(rig.cli, *args)
        return 0
    finally:
        for r in receivers:
            r.close()
        if pg:
            pg.stop()
        cleanup_mounts_under(base)
        shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
