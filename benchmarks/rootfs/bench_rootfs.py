#!/usr/bin/env python3
"""rootfs benchmarks: each figure is a ratio against a baseline measured in the same run.

1. extraction method: `cp -a` (what `rootfs pull` uses) against `tar | tar` and `rsync -aHAX`,
   all keeping hard links, xattrs and numeric owners;
2. `rootfs pull dir:TREE --force` (lock, partial dir, rename, marker, du) against a bare `cp -a`;
3. `rootfs mount` + `rootfs umount` through the CLI against bare `mount -t overlay` + `umount`.

Methods compared with each other run interleaved, round by round in a rotating order (not each
method's runs back to back), so a burst of load hits all of them alike.

Run as root from the repository root:  python3 benchmarks/rootfs/bench_rootfs.py [--runs 7] [--tree DIR]
The test tree defaults to a copy of /usr/lib/python3.* (tens of MB, thousands of files).
"""

from __future__ import annotations

import argparse
import glob
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
CLI = [sys.executable, "-m", "cocalc_ctl"]


def interleaved(methods: dict, runs: int) -> dict[str, float]:
    """Median seconds of each method, run round by round (each method once per round, the first one
    rotating), so the methods share the machine's conditions."""
    samples: dict[str, list[float]] = {m: [] for m in methods}
    names = list(methods)
    for r in range(runs):
        for m in names[r % len(names):] + names[:r % len(names)]:
            t = time.perf_counter()
            methods[m]()
            samples[m].append(time.perf_counter() - t)
    return {m: statistics.median(v) for m, v in samples.items()}


def sh(*argv, **kw):
    p = subprocess.run(argv, capture_output=True, **kw)
    if p.returncode != 0:
        raise SystemExit(f"{' '.join(map(str, argv))} exited {p.returncode}: {p.stderr.decode(errors='replace').strip()}")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=7)
    ap.add_argument("--tree", default=sorted(glob.glob("/usr/lib/python3.*"))[-1])
    args = ap.parse_args()
    sys.path.insert(0, str(REPO / "benchmarks"))
    from benchenv import print_environment

    print_environment(sys.executable)
    base = Path(tempfile.mkdtemp(prefix="cocalc-bench-rootfs-", dir="/var/tmp"))
    os.chmod(base, 0o711)  # a project's mapped root must pass through to data_dir/project-roots
    env = {**os.environ, "PYTHONPATH": str(REPO), "COCALC_CTL_CONFIG": str(base / "config.yaml")}
    pool_mounted = False
    try:
        images = base / "images"  # image sources must lie under rootfs.local_roots
        images.mkdir()
        (base / "config.yaml").write_text(f"btrfs_root: {base / 'pool'}\ndata_dir: {base / 'data'}\n"
                                          f"rootfs:\n  local_roots: [{images}]\n")
        sh(*CLI, "host", "init", "--loopback", "2G", env=env)
        pool_mounted = True
        tree = images / "tree"
        tree.mkdir()
        sh("cp", "-a", args.tree + "/.", str(tree) + "/")
        files = sum(len(f) for _, _, f in os.walk(tree))
        size = int(subprocess.run(["du", "-sb", str(tree)], capture_output=True, text=True).stdout.split()[0])
        print(f"tree: {args.tree} ({files} files, {size / 2**20:.0f} MiB), {args.runs} runs each, medians")

        dst = base / "dst"

        def fresh():
            shutil.rmtree(dst, ignore_errors=True)
            dst.mkdir()

        def cp_a():
            fresh()
            sh("cp", "-a", "--", f"{tree}/.", str(dst))

        def tar_pipe():
            fresh()
            p1 = subprocess.Popen(["tar", "--numeric-owner", "--xattrs", "--xattrs-include=*", "-C", str(tree),
                                   "-cf", "-", "."], stdout=subprocess.PIPE)
            p2 = subprocess.run(["tar", "--numeric-owner", "--xattrs", "--xattrs-include=*", "-C", str(dst), "-xpf",
                                 "-"], stdin=p1.stdout, capture_output=True)
            p1.stdout.close()
            assert p1.wait() == 0 and p2.returncode == 0

        def rsync():
            fresh()
            sh("rsync", "-aHAX", "--numeric-ids", f"{tree}/", f"{dst}/")

        extract = {"cp": cp_a, "tar": tar_pipe, **({"rsync": rsync} if shutil.which("rsync") else {})}
        med = interleaved(extract, args.runs)
        t_cp, t_tar, t_rsync = med["cp"], med["tar"], med.get("rsync")
        print(f"extract  cp -a        {t_cp * 1000:8.1f} ms  (baseline 1.00)")
        print(f"extract  tar | tar    {t_tar * 1000:8.1f} ms  ratio {t_tar / t_cp:.2f}")
        if t_rsync:
            print(f"extract  rsync -aHAX  {t_rsync * 1000:8.1f} ms  ratio {t_rsync / t_cp:.2f}")

        def pull():
            sh(*CLI, "rootfs", "pull", "--force", f"dir:{tree}", env=env)

        def cli_noop():
            sh(*CLI, "config", "show", env=env)  # a command's start: typer and the config (--version skips both)

        med = interleaved({"pull": pull, "cp": cp_a, "start": cli_noop}, args.runs)
        t_pull, t_start, t_cp = med["pull"], med["start"], med["cp"]  # cp -a again, in this group's conditions
        print(f"pull     rootfs pull dir: --force {t_pull * 1000:8.1f} ms  ratio vs cp -a {t_pull / t_cp:.2f} "
              f"(a CLI command\'s start, `config show`: {t_start * 1000:.0f} ms)")

        pid = str(uuid.uuid4())
        sh(*CLI, "project", "create", pid, env=env)
        sh(*CLI, "rootfs", "mount", pid, "--image", f"dir:{tree}", env=env)
        sh(*CLI, "rootfs", "umount", pid, env=env)
        up, wk, mp = base / "raw-up", base / "raw-wk", base / "raw-mp"
        for d in (up, wk, mp):
            d.mkdir()

        def raw_mount():
            sh("mount", "-t", "overlay", "overlay", "-o", f"lowerdir={tree},upperdir={up},workdir={wk}", str(mp))
            sh("umount", str(mp))

        def cli_mount():
            sh(*CLI, "rootfs", "mount", pid, env=env)
            sh(*CLI, "rootfs", "umount", pid, env=env)

        med = interleaved({"raw": raw_mount, "cli": cli_mount}, args.runs)
        t_raw, t_cli = med["raw"], med["cli"]
        print(f"mount    mount+umount (bare)      {t_raw * 1000:8.1f} ms  (baseline 1.00)")
        print(f"mount    rootfs mount+umount      {t_cli * 1000:8.1f} ms  ratio {t_cli / t_raw:.2f} "
              f"(two CLI command starts: {2 * t_start * 1000:.0f} ms)")
    finally:
        sys.path.insert(0, str(REPO))
        from tests.support.hosts import cleanup_mounts_under  # unmounts deepest first, detaches loops

        if pool_mounted:
            cleanup_mounts_under(base)
        shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()
