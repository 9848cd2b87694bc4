"""What every benchmark shares: the environment report, and clean venvs of the checkout's interpreter.

`environment(python)` lists what changes the figures (interpreter, bytecode caching, event loop, load)
so every benchmark prints it first. `make_venv` builds a clean venv of the checkout's base interpreter,
optionally with a real (non-editable) copy of cocalc_ctl, for the benchmarks that time process start-up
(cli_startup.py, sshauth/bench.py), so that what they time is what an installed cocalc-ctl does: no editable-install import hook, no PYTHONPATH pointing at the
checkout. The package is copied into the venv's own site-packages the way installing a wheel does (files
plus precompiled bytecode); its third-party dependencies are reached through one .pth line naming the
checkout's .venv site-packages (a plain path entry: .pth files there are not processed, so that venv's
editable hook is not loaded). The package does not need building (this machine may lack `wheel`).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEV_PYTHON = os.path.join(REPO, ".venv", "bin", "python")


def _out(argv: list[str], cwd: str | None = None) -> str:
    return subprocess.run(argv, capture_output=True, text=True, check=True, cwd=cwd).stdout.strip()


def environment(python: str = DEV_PYTHON) -> list[str]:
    """Lines describing the conditions of a run; mark it UNDER LOAD when the load average exceeds half the CPUs."""
    probe = json.loads(_out([python, "-c", (
        "import json, sys, importlib.util as u, asyncio\n"
        "print(json.dumps({'version': sys.version.split()[0], 'exe': sys.executable,"
        " 'nobytecode': sys.flags.dont_write_bytecode, 'prefix': sys.pycache_prefix,"
        " 'uvloop': u.find_spec('uvloop') is not None,"
        " 'loop': type(asyncio.new_event_loop()).__name__}))")]))
    load = os.getloadavg()
    cpus = os.cpu_count() or 1
    return [
        f"interpreter       {os.path.realpath(probe['exe'])} (Python {probe['version']})",
        f"bytecode caching  {'OFF' if probe['nobytecode'] else 'on'} (PYTHONDONTWRITEBYTECODE="
        f"{os.environ.get('PYTHONDONTWRITEBYTECODE', '<unset>')}, pycache_prefix {probe['prefix']})",
        f"event loop        asyncio default {probe['loop']}; uvloop {'installed' if probe['uvloop'] else 'not installed'}",
        f"load average      {load[0]:.2f} {load[1]:.2f} {load[2]:.2f} on {cpus} cpu(s)"
        + ("  -> UNDER LOAD: figures are indicative only" if load[0] > 0.5 * cpus else ""),
    ]


def print_environment(python: str = DEV_PYTHON) -> None:
    for line in environment(python):
        print(line)
    print(flush=True)


def base_interpreter(dev: str = DEV_PYTHON) -> str:
    return _out([dev, "-c", "import sys; print(getattr(sys, '_base_executable', sys.executable))"])


def make_venv(where: str, *, install: bool, dev: str = DEV_PYTHON) -> str:
    """Create the venv at `where`; return its python. With install=True cocalc_ctl is importable from it
    and `<where>/bin/cocalc-ctl` is a console script like pip writes."""
    subprocess.run([base_interpreter(dev), "-m", "venv", "--without-pip", where], check=True)
    py = os.path.join(where, "bin", "python")
    if install:
        purelib = _out([py, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"])
        deps = _out([dev, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"])
        shutil.copytree(os.path.join(REPO, "cocalc_ctl"), os.path.join(purelib, "cocalc_ctl"),
                        ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        with open(os.path.join(purelib, "zz_cocalc_ctl_deps.pth"), "w") as fh:
            fh.write(deps + "\n")
        subprocess.run([py, "-m", "compileall", "-q", os.path.join(purelib, "cocalc_ctl")], check=True)
        script = os.path.join(where, "bin", "cocalc-ctl")
        with open(script, "w") as fh:
            fh.write(f"#!{py}\nimport sys\nfrom cocalc_ctl.cli.entry import main\n"
                     "if __name__ == '__main__':\n    sys.exit(main())\n")
        os.chmod(script, 0o755)
        check = _out([py, "-c", "import cocalc_ctl, sys; print(cocalc_ctl.__file__, "
                                "any('__editable__' in m for m in sys.modules))"], cwd=where).split()
        if not check[0].startswith(purelib) or check[1] != "False":
            raise RuntimeError(f"the benchmark venv imports cocalc_ctl from {check[0]} (editable hook: {check[1]})")
    return py
