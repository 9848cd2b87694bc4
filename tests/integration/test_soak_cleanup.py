"""The fleet soak (benchmarks/soak/soak.py) is not run by the suite, but what it leaves must be proven
like the demo's: stopped with SIGTERM in the middle of its chaos, it still removes everything it made —
workers, proxies, sshds, PostgreSQL, the receiver users' /etc/passwd lines, mounts, loop devices, its
run directory under /run and its working directory."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.support.hosts import REPO
from tests.support.leftovers import leftovers

pytestmark = pytest.mark.integration

SOAK = [sys.executable, str(REPO / "benchmarks" / "soak" / "soak.py")]


@pytest.fixture(autouse=True)
def _root():
    if os.geteuid() != 0:
        pytest.skip("the soak needs root")


def test_soak_stopped_during_its_chaos_cleans_up_everything():
    p = subprocess.Popen([*SOAK, "--hosts", "2", "--moves", "4", "--duration", "60", "--seed", "7"],
                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines: list[str] = []
    state: dict = {}
    try:
        for line in p.stdout:
            lines.append(line)
            m = re.match(r"soak directory (\S+); run directory (\S+);", line)
            if m:
                base, rundir = Path(m.group(1)), Path(m.group(2))
            if "move workers started" in line:
                time.sleep(5)  # moves queued and running, faults ahead
                state = json.loads((base / "demo-state.json").read_text())
                p.send_signal(signal.SIGTERM)
                break
        rest, _ = p.communicate(timeout=300)
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
    out = "".join(lines) + rest
    assert p.returncode == 1, out[-3000:]
    assert "soak: FAILED: interrupted" in out and out.rstrip().splitlines()[-1].startswith("cleaned up in"), out[-2000:]
    assert state.get("passwd_lines") and state.get("pg_dir"), state  # it had got that far
    assert not leftovers(base)
    assert not rundir.exists() and not Path(state["pg_dir"]).exists()
    passwd = set(Path("/etc/passwd").read_text().splitlines())
    assert not passwd & set(state["passwd_lines"]), "receiver users were left in /etc/passwd"
    for m in re.finditer(r"^logs copied to (\S+)$", out, re.M):  # a failed run keeps its logs: not ours to keep
        shutil.rmtree(m.group(1), ignore_errors=True)
