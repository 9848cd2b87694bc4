#!/usr/bin/env python3
"""Backup-mode move against raw restic, measured in the same run.

Two loopback btrfs hosts A and B sharing one local restic repository. A project of SIZE_MB (default
256) random data is moved with:

  raw-restic   cd <read-only snapshot of the project> && restic backup .   (on A)
               restic restore <id> --target <new subvolume> --verify       (on B)
  move-backup  cocalc-ctl move send --mode backup                          (on A)
               cocalc-ctl move finalize --from-backup <id>                 (on B)

Every run starts from a fresh, empty repository (created outside the timing), so neither method
profits from deduplication against an earlier run. Methods run round-robin ROUNDS times (default 3)
so machine noise hits both alike. Reports median seconds and the ratio raw / move (1.0 = as fast as
raw restic). Run as root from the repository root:

    python3 benchmarks/move/bench_move_backup.py [SIZE_MB] [ROUNDS]
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tempfile
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from _bench import print_environment, round_robin, sh, wait_for_cleaner, write_random  # noqa: E402

from tests.support.backup import password_file  # noqa: E402
from tests.support.hosts import Host, cleanup_mounts_under  # noqa: E402


def main() -> int:
    size_mb = int(sys.argv[1]) if len(sys.argv) > 1 else 256
    rounds = int(sys.argv[2]) if len(sys.argv) > 2 else 3
    print_environment()
    base = Path(tempfile.mkdtemp(prefix="cocalc-bench-move-backup-", dir="/var/tmp"))
    try:
        pw = password_file(base)
        repo = base / "repo"
        backup = {"repo": str(repo), "password_file": str(pw)}
        img = f"{max(2, size_mb * 3 // 1024 + 2)}G"
        a = Host(base / "a", extra_config={"backup": backup})
        b = Host(base / "b", extra_config={"backup": backup})
        a.init(img)
        b.init(img)
        env = {**os.environ, "RESTIC_REPOSITORY": str(repo), "RESTIC_PASSWORD_FILE": str(pw),
               "RESTIC_CACHE_DIR": str(base / "raw-cache")}
        pid = str(uuid.uuid4())
        a.cli("project", "create", pid)
        proj = a.project_path(pid)
        for i in range(8):
            write_random(proj / f"data/f{i}.bin", max(1, size_mb // 8))
        raw_snap = a.pool / "_bench_snap"
        raw_target = b.pool / "_bench_restore"
        sh("btrfs", "subvolume", "snapshot", "-r", str(proj), str(raw_snap))
        sh("sync")

        def fresh_repo():
            shutil.rmtree(repo, ignore_errors=True)
            shutil.rmtree(base / "raw-cache", ignore_errors=True)
            sh("restic", "init", env=env)

        def raw():
            out = subprocess.run(["restic", "backup", "--json", "."], cwd=raw_snap, env=env, check=True,
                                 capture_output=True, text=True).stdout
            sid = re.findall(r'"snapshot_id":"([0-9a-f]+)"', out)[-1]
            sh("btrfs", "subvolume", "create", str(raw_target))
            sh("restic", "restore", sid, "--target", str(raw_target), "--verify", env=env)

        def move():
            out = a.cli("move", "send", pid, "--mode", "backup", "--snapshot", "move-bench").stdout
            bid = re.search(r"backup ([0-9a-f]{64})", out).group(1)
            b.cli("move", "finalize", pid, "--from-backup", bid)

        def reset():
            if raw_target.exists():
                sh("btrfs", "subvolume", "delete", str(raw_target))
            if b.project_path(pid).exists():
                b.cli("project", "delete", pid, "--force")
            snap = proj / ".snapshots" / "move-bench"
            if snap.exists():
                sh("btrfs", "subvolume", "delete", str(snap))
            fresh_repo()
            wait_for_cleaner(a.pool, b.pool)

        methods = {"raw-restic": raw, "move-backup": move}
        times, med = round_robin(methods, rounds, reset)
        print(f"\nproject {size_mb} MiB random data; fresh local repository per run; {rounds} rounds; median")
        print(f"{'method':<12} {'seconds':>8} {'MiB/s':>8} {'raw / method':>13}")
        for m in methods:
            print(f"{m:<12} {med[m]:8.2f} {size_mb / med[m]:8.1f} {med['raw-restic'] / med[m]:13.2f}")
        print("per round: " + "; ".join(f"{m} " + "/".join(f"{t:.2f}" for t in v) for m, v in times.items()))
        return 0
    finally:
        cleanup_mounts_under(base)
        shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
