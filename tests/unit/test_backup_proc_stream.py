"""proc.stream: the engine runner used by backups (lines as they come, exit codes, dies with us)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

from cocalc_ctl import proc
from cocalc_ctl.errors import CommandFailed
from tests.support.hosts import REPO


def test_lines_arrive_in_order_and_last_line_is_kept(monkeypatch):
    monkeypatch.setattr(proc, "DRY_RUN", False)
    got = []
    res = proc.stream(["sh", "-c", "echo one; echo; echo two; echo err >&2"], got.append)
    assert got == ["one", "two"] and res.stdout == "two" and res.stderr == "err\n" and res.returncode == 0


def test_exit_codes(monkeypatch):
    monkeypatch.setattr(proc, "DRY_RUN", False)
    assert proc.stream(["sh", "-c", "exit 3"], ok_codes=(0, 3)).returncode == 3
    with pytest.raises(CommandFailed, match="exited 1: boom"):
        proc.stream(["sh", "-c", "echo boom >&2; exit 1"])


def test_dry_run_only_prints(monkeypatch, capsys):
    monkeypatch.setattr(proc, "DRY_RUN", True)
    monkeypatch.setattr(proc, "PLAN", [])
    assert proc.stream(["rm", "-rf", "/nonexistent/x"]).dry_run
    assert "rm -rf /nonexistent/x" in capsys.readouterr().out


def test_child_dies_with_the_parent(tmp_path):
    pidfile = tmp_path / "child.pid"
    code = ("from cocalc_ctl import proc; proc.DRY_RUN = False; "
            f"proc.stream(['sh', '-c', 'echo $$ > {pidfile}; exec sleep 60'])")
    parent = subprocess.Popen([sys.executable, "-c", code], cwd=str(REPO))
    deadline = time.monotonic() + 60
    while not (pidfile.exists() and pidfile.read_text().endswith("\n")):  # the whole pid is written
        assert time.monotonic() < deadline
        time.sleep(0.02)
    child = int(pidfile.read_text())
    os.kill(parent.pid, signal.SIGKILL)
    parent.wait()

    def running(pid: int) -> bool:
        """Listed and not a zombie (it may be reaped, and its /proc entry gone, at any moment)."""
        try:
            with open(f"/proc/{pid}/stat") as fh:
                stat = fh.read()
        except OSError:
            return False
        return stat[stat.rindex(")") + 2:].split()[0] != "Z"

    deadline = time.monotonic() + 30
    while running(child):
        assert time.monotonic() < deadline, "the child outlived its parent"
        time.sleep(0.02)
