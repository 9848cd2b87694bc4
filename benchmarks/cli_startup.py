#!/usr/bin/env python3
"""CLI startup: median wall time of `cocalc-ctl --help` / `--version` against `python -c pass`.

Same interpreter, same run, interleaved so machine noise hits every command alike.
Usage: benchmarks/cli_startup.py [--runs N]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=30)
    args = ap.parse_args()
    py = sys.executable
    entry = os.path.join(os.path.dirname(py), "cocalc-ctl")
    commands = {
        "python -c pass (baseline)": [py, "-c", "pass"],
        "cocalc-ctl --version": [entry, "--version"],
        "cocalc-ctl --help": [entry, "--help"],
        "bin/cocalc-ctl --help (checkout)": [py, os.path.join(REPO, "bin", "cocalc-ctl"), "--help"],
    }
    times: dict[str, list[float]] = {k: [] for k in commands}
    for _ in range(3):  # warm the page cache
        for argv in commands.values():
            subprocess.run(argv, stdout=subprocess.DEVNULL, check=True)
    for _ in range(args.runs):
        for name, argv in commands.items():
            t0 = time.perf_counter()
            subprocess.run(argv, stdout=subprocess.DEVNULL, check=True)
            times[name].append(time.perf_counter() - t0)
    base = statistics.median(times["python -c pass (baseline)"])
    print(f"{'command':40} {'median ms':>10} {'ratio':>7}")
    for name, ts in times.items():
        med = statistics.median(ts)
        print(f"{name:40} {med * 1000:10.1f} {med / base:7.2f}")


if __name__ == "__main__":
    main()
