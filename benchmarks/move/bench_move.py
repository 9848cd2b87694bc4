#!/usr/bin/env python3
"""Move throughput against raw btrfs baselines, measured in the same run.

Two loopback btrfs hosts A and B, a real sshd receiver for B on 127.0.0.3. A project of SIZE_MB
(default 1024) random data with 3 snapshots (s2 and s3 each add 5% new data) is moved with:

  raw-local   btrfs send [-p] | btrfs receive                  (chain s1, s2, s3, move; no ssh)
  raw-ssh     btrfs send [-p] | ssh (forced: btrfs receive)     (same chain over the same sshd, the four
              streams multiplexed over one ssh connection opened per run, as `move send` does)
  move-pipe   cocalc-ctl move send --mode pipe
  move-lz4    cocalc-ctl move send --mode staged --compress lz4

Each method runs ROUNDS times (default 3), round-robin in a rotating order so machine noise hits all
alike; B is emptied between runs and btrfs's cleaner is waited for (`btrfs subvolume sync`) so deleted
subvolumes are not freed on the next method's time. Reports the median seconds, MB/s (stream bytes / s) and the ratio of each raw baseline's
median to the method's median (1.0 = as fast as raw). Run as root from the repository root:

    python3 benchmarks/move/bench_move.py [SIZE_MB] [ROUNDS]
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from _bench import print_environment, round_robin, sh, wait_for_cleaner, write_random  # noqa: E402

from tests.support.hosts import Host, cleanup_mounts_under  # noqa: E402
from tests.support.move import Receiver, ensure_host_key, install_rig_hub  # noqa: E402


def main() -> int:
    size_mb = int(sys.argv[1]) if len(sys.argv) > 1 else 1024
    rounds = int(sys.argv[2]) if len(sys.argv) > 2 else 3
    print_environment()
    base = Path(tempfile.mkdtemp(prefix="cocalc-bench-move-", dir="/var/tmp"))
    rcv = None
    try:
        img = f"{max(4, size_mb * 3 // 1024 + 2)}G"
        a, b = Host(base / "a"), Host(base / "b")
        a.init(img)
        b.init(img)
        ensure_host_key(a)
        rcv = Receiver(b, "127.0.0.3", base / "sshd-b").start()
        rcv.allow(a)
        install_rig_hub([a, b], {rcv.addr: b})  # the receiver needs a hub-signed ticket for every send, as in a fleet
        # a second key for the raw baseline: its forced command is plain `btrfs receive`
        raw_dir = b.pool / "_bench_raw"
        raw_dir.mkdir()
        raw_key = base / "raw_key"
        sh("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(raw_key))
        pub = raw_key.with_suffix(".pub").read_text().split()
        with open(rcv.dir / "authorized_keys", "a") as fh:
            fh.write(f'restrict,command="btrfs receive {raw_dir}" {pub[0]} {pub[1]}\n')

        pid = str(uuid.uuid4())
        a.cli("project", "create", pid)
        proj = a.project_path(pid)
        files = 8
        for i in range(files):
            write_random(proj / f"data/f{i}.bin", size_mb // files)
        a.cli("snapshot", "create", pid, "s1")
        write_random(proj / "data/g2.bin", max(1, size_mb // 20))
        a.cli("snapshot", "create", pid, "s2")
        write_random(proj / "data/g3.bin", max(1, size_mb // 20))
        a.cli("snapshot", "create", pid, "s3")
        a.cli("snapshot", "create", pid, "move-bench")
        sh("sync")
        snaps = proj / ".snapshots"
        chain = [("s1", None), ("s2", "s1"), ("s3", "s2"), ("move-bench", "s3")]
        ssh_raw = ["ssh", "-p", str(rcv.port), "-i", str(raw_key), "-o", "IdentitiesOnly=yes",
                   "-o", "StrictHostKeyChecking=yes", "-o", f"UserKnownHostsFile={a.data / 'ssh' / 'known_hosts'}",
                   "-o", "BatchMode=yes", "-T", f"root@{rcv.addr}", "receive"]
        stream_bytes = 0
        for name, parent in chain:
            p = subprocess.run(["btrfs", "send", "-q", *(["-p", str(snaps / parent)] if parent else []),
                                str(snaps / name)], stdout=subprocess.PIPE, check=True)
            stream_bytes += len(p.stdout)
            del p

        mux = base / "raw-mux"

        def raw(via_ssh: bool):
            receive = ["btrfs", "receive", str(raw_dir)]
            if via_ssh:  # one connection per run, like move's ControlMaster (not one handshake per stream)
                sh(*ssh_raw[:-2], "-o", f"ControlPath={mux}", "-o", "ControlMaster=yes", "-o", "ControlPersist=60",
                   "-N", "-f", ssh_raw[-2])
                receive = [*ssh_raw[:-2], "-o", f"ControlPath={mux}", "-o", "ControlMaster=no", *ssh_raw[-2:]]
            try:
                for name, parent in chain:
                    send = subprocess.Popen(["btrfs", "send", "-q", *(["-p", str(snaps / parent)] if parent else []),
                                             str(snaps / name)], stdout=subprocess.PIPE)
                    recv = subprocess.run(receive, stdin=send.stdout, capture_output=True)
                    send.stdout.close()
                    if send.wait() != 0 or recv.returncode != 0:
                        raise RuntimeError(recv.stderr.decode())
            finally:
                if via_ssh:
                    subprocess.run(["ssh", "-o", f"ControlPath={mux}", "-O", "exit", "x"], capture_output=True)

        def move(mode: str, codec: str):
            a.cli("move", "send", pid, "--to", rcv.spec(), "--mode", mode, "--compress", codec,
                  "--snapshot", "move-bench")

        def reset():
            for d in (raw_dir, b.pool / "_incoming" / pid):
                if d.exists():
                    for e in sorted(d.iterdir()):
                        if e.is_dir() and not e.name.startswith("."):
                            sh("btrfs", "subvolume", "delete", str(e))
            b.cli("move", "abort", pid)
            wait_for_cleaner(b.pool)

        methods = {"raw-local": lambda: raw(False), "raw-ssh": lambda: raw(True),
                   "move-pipe": lambda: move("pipe", "none"), "move-lz4": lambda: move("staged", "lz4")}
        times, med = round_robin(methods, rounds, reset)
        mb = stream_bytes / 1e6
        print(f"\nproject {size_mb} MiB random data, 3 snapshots + move snapshot; stream total {mb:.0f} MB; "
              f"{rounds} rounds; median")
        print(f"{'method':<10} {'seconds':>8} {'MB/s':>8} {'vs raw-local':>13} {'vs raw-ssh':>11}")
        for m in methods:
            print(f"{m:<10} {med[m]:8.2f} {mb / med[m]:8.0f} {med['raw-local'] / med[m]:13.2f} "
                  f"{med['raw-ssh'] / med[m]:11.2f}")
        return 0
    finally:
        if rcv:
            rcv.close()
        cleanup_mounts_under(base)
        shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
