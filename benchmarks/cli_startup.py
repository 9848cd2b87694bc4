#!/usr/bin/env python3
"""CLI startup: median wall time of `cocalc-ctl --version` / `--help` against the interpreter's own start-up.

Like for like: the reference is `python -c pass` of the same base interpreter in a fresh, empty venv
(site processing, no installed packages, so no editable-install import hook), and the cocalc-ctl measured
against it is a real non-editable install of this checkout in such a venv (benchmarks/benchenv.py: the
package copied into site-packages, dependencies through a .pth path line; nothing imports the checkout). The checkout's own
editable `.venv` and `bin/cocalc-ctl` are measured too, against `python -c pass` of that `.venv` (which
loads the editable hook), and labelled so. All commands run interleaved, round by round, in a rotating
order, so machine noise hits each alike; the environment that changes start-up is printed first.

Usage: benchmarks/cli_startup.py [--runs N] [--python PATH]
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

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from benchenv import REPO, environment, make_venv  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=30)
    ap.add_argument("--python", default=os.path.join(REPO, ".venv", "bin", "python"),
                    help="the checkout's venv interpreter (its base interpreter builds the clean venvs)")
    args = ap.parse_args()
    dev = args.python
    for line in environment(dev):
        print(line)
    print(f"terminal          stdout to /dev/null, COLUMNS=80")
    tmp = tempfile.mkdtemp(prefix="cli-startup-")
    try:
        empty = make_venv(os.path.join(tmp, "empty"), install=False, dev=dev)
        make_venv(os.path.join(tmp, "inst"), install=True, dev=dev)
        inst = os.path.join(tmp, "inst", "bin", "cocalc-ctl")
        commands = {
            "python -c pass, empty venv (REFERENCE)": [empty, "-c", "pass"],
            "installed cocalc-ctl --version": [inst, "--version"],
            "installed cocalc-ctl --help": [inst, "--help"],
            "installed cocalc-ctl frob (unknown command)": [inst, "frob"],
            ".venv python -c pass (editable hook)": [dev, "-c", "pass"],
            ".venv cocalc-ctl --version (editable)": [os.path.join(os.path.dirname(dev), "cocalc-ctl"), "--version"],
            ".venv cocalc-ctl --help (editable)": [os.path.join(os.path.dirname(dev), "cocalc-ctl"), "--help"],
            "bin/cocalc-ctl --version (checkout)": [os.path.join(REPO, "bin", "cocalc-ctl"), "--version"],
            "bin/cocalc-ctl --help (checkout)": [os.path.join(REPO, "bin", "cocalc-ctl"), "--help"],
        }
        env = {**os.environ, "COLUMNS": "80", "COCALC_CTL_CONFIG": os.path.join(tmp, "none.yaml")}
        times: dict[str, list[float]] = {k: [] for k in commands}
        names = list(commands)
        for _ in range(3):  # warm the page cache (and write bytecode where that is on)
            for argv in commands.values():
                subprocess.run(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env, cwd=tmp)
        for r in range(args.runs):
            order = names[r % len(names):] + names[:r % len(names)]  # rotate who goes first
            for name in order:
                t0 = time.perf_counter()
                subprocess.run(commands[name], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env, cwd=tmp)
                times[name].append(time.perf_counter() - t0)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    ref = statistics.median(times["python -c pass, empty venv (REFERENCE)"])
    own = statistics.median(times[".venv python -c pass (editable hook)"])
    print(f"\n{args.runs} interleaved rounds\n{'command':44} {'median ms':>10} {'x ref':>7} {'x .venv':>8}")
    for name, ts in times.items():
        med = statistics.median(ts)
        print(f"{name:44} {med * 1000:10.1f} {med / ref:7.2f} {med / own:8.2f}")
    print("\ntargets: installed --version < 1.5x and --help < 3x the REFERENCE (x ref column)")


if __name__ == "__main__":
    main()
