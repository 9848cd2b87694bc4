#!/usr/bin/env python3
"""Cost of project isolation: `project start` and `project stop` with isolation on and off, interleaved.

One loopback pool and one data dir; two config files that differ only in `isolation.enabled`, one
project for each. Each round starts and stops both projects, alternating which goes first, and the
medians are compared as a ratio (the machine is shared: only the ratio of one run means something).
The image is a tiny busybox tree (`dir:` source), the command `sleep`.

Run as root from the repository root:  python3 benchmarks/isolation/bench_isolation.py [--runs 10]
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
import uuid
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
CLI = [sys.executable, "-m", "cocalc_ctl"]
BUSYBOX = shutil.which("busybox") or "/bin/busybox"


def busybox_tree(dest: Path) -> Path:
    for d in ("bin", "etc", "tmp", "home/user"):
        (dest / d).mkdir(parents=True, exist_ok=True)
    shutil.copy2(BUSYBOX, dest / "bin" / "busybox")
    for applet in ("sh", "sleep"):
        os.link(dest / "bin" / "busybox", dest / "bin" / applet)
    return dest


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=10)
    args = ap.parse_args()
    base = Path(tempfile.mkdtemp(prefix="cbi-", dir="/var/tmp"))
    os.chmod(base, 0o711)
    podman = {"root": base / "podman" / "root", "runroot": base / "podman" / "run", "tmpdir": base / "podman" / "tmp"}
    common = (f"btrfs_root: {base / 'pool'}\ndata_dir: {base / 'data'}\n"
              + "".join(f"podman.{k}: {v}\n" for k, v in podman.items())
              + "podman.runtime: runc\npodman.ulimits: nofile=1024:1024,nproc=1024:1024\n"
              + "podman.command: /bin/sleep 100000\n")
    envs = {}
    for name, enabled in (("on", "true"), ("off", "false")):
        (base / f"{name}.yaml").write_text(common + f"isolation.enabled: {enabled}\n")
        envs[name] = {**os.environ, "PYTHONPATH": str(REPO), "COCALC_CTL_CONFIG": str(base / f"{name}.yaml")}

    def cli(name: str, *argv: str) -> float:
        t = time.perf_counter()
        res = subprocess.run([*CLI, *argv], env=envs[name], capture_output=True, text=True, cwd=str(REPO))
        if res.returncode:
            raise SystemExit(f"cocalc-ctl {' '.join(argv)} ({name}): {res.stderr.strip()}")
        return time.perf_counter() - t

    pids = {"on": str(uuid.uuid4()), "off": str(uuid.uuid4())}
    samples = {(n, op): [] for n in pids for op in ("start", "stop")}
    try:
        cli("on", "host", "init", "--loopback", "1G")
        tree = busybox_tree(base / "tree")
        for name, pid in pids.items():
            cli(name, "project", "create", pid)
            cli(name, "project", "start", pid, "--image", f"dir:{tree}")  # warm: cache entry, range, shift
            cli(name, "project", "stop", pid)
        for i in range(args.runs):
            order = ("on", "off") if i % 2 == 0 else ("off", "on")
            for name in order:
                samples[(name, "start")].append(cli(name, "project", "start", pid := pids[name]))
                samples[(name, "stop")].append(cli(name, "project", "stop", pid))
        load = os.getloadavg()
        print(f"{args.runs} rounds each, interleaved; load average {load[0]:.1f} {load[1]:.1f} {load[2]:.1f}")
        print("| step | isolation off: median s | isolation on: median s | ratio on/off |")
        print("|---|---:|---:|---:|")
        for op in ("start", "stop"):
            off, on = statistics.median(samples[("off", op)]), statistics.median(samples[("on", op)])
            print(f"| project {op} | {off:.3f} | {on:.3f} | {on / off:.2f} |")
        for key, vals in samples.items():
            print(f"{key[0]} {key[1]}: " + " ".join(f"{v:.2f}" for v in vals))
    finally:
        for name, pid in pids.items():
            subprocess.run([*CLI, "project", "stop", pid], env=envs[name], capture_output=True, cwd=str(REPO))
        with open("/proc/self/mountinfo") as fh:
            points = [ln.split()[4] for ln in fh if ln.split()[4].startswith(str(base) + "/")]
        for mp in sorted(points, key=len, reverse=True):
            subprocess.run(["umount", "-l", mp], capture_output=True)
        out = subprocess.run(["losetup", "-a", "-O", "NAME,BACK-FILE", "-n", "--raw"], capture_output=True,
                             text=True).stdout
        for line in out.splitlines():
            parts = line.split(None, 1)
            if len(parts) == 2 and parts[1].startswith(str(base)):
                subprocess.run(["losetup", "-d", parts[0]], capture_output=True)
        shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()
