#!/usr/bin/env python3
"""`cocalc-ctl backup create` against bare restic on the same data, in the same run.

Builds a loopback btrfs host with one project of ~200 MB in ~10,000 files, then, interleaved for
each round so machine noise hits both alike:
  - baseline: a fresh read-only btrfs snapshot of the project (always at the same path, taken
    outside the timing), then `cd snap && restic backup .` into a fresh repository: restic alone,
    reading a new snapshot like cocalc-ctl does (a new snapshot's files are new inodes, so neither
    side is helped by a page cache warmed by the other);
  - ours: `cocalc-ctl backup create PROJECT` into another fresh repository (everything included:
    CLI start, locks, job row, temporary snapshot, persist staging, engine, cleanup);
then a no-change second backup of each into the same repositories. Prints medians and ratios.

Usage (root): benchmarks/backup/bench_backup.py [--rounds 5] [--files 10000] [--mb 200]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from tests.support.hosts import Host, cleanup_mounts_under  # noqa: E402

PID = "be0cbe0c-0000-4000-8000-000000000001"


def make_project(root: Path, files: int, mb: int) -> None:
    """~`mb` MB in `files` files: 1% large incompressible files hold ~80% of the bytes."""
    big = max(1, files // 100)
    big_size = (mb * 8 // 10 << 20) // big
    small_size = ((mb << 20) - big * big_size) // max(1, files - big)
    rnd = os.urandom(1 << 20)
    for i in range(files):
        d = root / f"d{i % 50:02d}" / f"s{i % 7}"
        d.mkdir(parents=True, exist_ok=True)
        if i < big:
            with open(d / f"big{i}.bin", "wb") as fh:
                left = big_size
                while left > 0:
                    fh.write(os.urandom(min(left, 1 << 20)))
                    left -= 1 << 20
        else:
            off = (i * 7919) % ((1 << 20) - small_size)
            (d / f"f{i}.dat").write_bytes(rnd[off:off + small_size // 2] + f"file {i}\n".encode() * (small_size // 20))


def timed(argv: list[str], *, env: dict, cwd: str | None = None) -> float:
    t0 = time.perf_counter()
    subprocess.run(argv, env=env, cwd=cwd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - t0


def main() -> None:
    import signal

    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # run the cleanup below
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--files", type=int, default=10000)
    ap.add_argument("--mb", type=int, default=200)
    args = ap.parse_args()
    sys.path.insert(0, str(REPO / "benchmarks"))
    from benchenv import print_environment

    print_environment(sys.executable)
    base = Path(tempfile.mkdtemp(prefix="cocalc-bench-backup-", dir="/var/tmp"))
    try:
        pw = base / "pw"
        pw.write_text("benchmark password\n")
        os.chmod(pw, 0o600)
        host = Host(base / "host", extra_config={"backup": {"repo": str(base / "repo-ours-0"),
                                                            "password_file": str(pw)}})
        host.init(f"{max(2, args.mb * 4 // 1024 + 2)}G")
        host.cli("project", "create", PID)
        live = host.project_path(PID)
        t0 = time.perf_counter()
        make_project(live, args.files, args.mb)
        persist = host.data / "sync" / "projects" / PID
        persist.mkdir(parents=True)
        (persist / "sync.db").write_bytes(os.urandom(64 << 10))
        subprocess.run(["sync"], check=True)
        du = subprocess.run(["du", "-sb", str(live)], capture_output=True, text=True).stdout.split()[0]
        print(f"project: {args.files} files, {int(du) / 1e6:.0f} MB (made in {time.perf_counter() - t0:.1f}s)")
        snap = live / ".snapshots" / "bench-baseline"

        def fresh_snapshot() -> None:
            if snap.exists():
                subprocess.run(["btrfs", "subvolume", "delete", "-c", str(snap)], check=True, stdout=subprocess.DEVNULL)
            subprocess.run(["btrfs", "subvolume", "snapshot", "-r", str(live), str(snap)], check=True,
                           stdout=subprocess.DEVNULL)
        restic_env = {**os.environ, "RESTIC_PASSWORD_FILE": str(pw)}
        results: dict[str, list[float]] = {"restic first": [], "ours first": [], "restic no-change": [],
                                           "ours no-change": []}
        for r in range(args.rounds):
            bare_repo, our_repo = base / f"repo-bare-{r}", base / f"repo-ours-{r}"
            env_bare = {**restic_env, "RESTIC_REPOSITORY": str(bare_repo)}
            subprocess.run(["restic", "init", "-q"], env=env_bare, check=True)
            host.write_config(backup={"repo": str(our_repo), "password_file": str(pw)})
            host.cli("backup", "init")
            bare = ["restic", "backup", "-q", "--host", "bench", "--tag", f"project:{PID}", "."]
            ours = [sys.executable, "-m", "cocalc_ctl", "backup", "create", PID]
            order = [("restic", bare), ("ours", ours)]
            if r % 2:
                order.reverse()
            for kind in ("first", "no-change"):
                for who, argv in order:
                    if who == "restic":
                        fresh_snapshot()
                        results[f"restic {kind}"].append(timed(argv, env=env_bare, cwd=str(snap)))
                    else:
                        results[f"ours {kind}"].append(timed(argv, env=host.env, cwd=str(REPO)))
            shutil.rmtree(bare_repo)
            shutil.rmtree(our_repo)
            print(f"round {r + 1}: " + ", ".join(f"{k} {v[-1]:.2f}s" for k, v in results.items()), flush=True)
        print()
        # the ratio of medians, and the median of each round's paired ratio (more robust to noise
        # that hits one round)
        print("| backup | restic median s | cocalc-ctl median s | ratio of medians | median paired ratio |")
        print("|---|---:|---:|---:|---:|")
        for kind in ("first", "no-change"):
            ra, rb = results[f"restic {kind}"], results[f"ours {kind}"]
            a, b = statistics.median(ra), statistics.median(rb)
            paired = statistics.median(y / x for x, y in zip(ra, rb))
            print(f"| {kind} | {a:.2f} | {b:.2f} | {b / a:.2f} | {paired:.2f} |")
    finally:
        cleanup_mounts_under(base)
        shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()
