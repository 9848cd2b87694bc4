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


def test_child_started_as_its_parent_dies_follows_it():
    """The parent can die between fork and arming the death signal; the child must not outlive it."""
    script = r"""
import ctypes, os, signal, sys, time
from cocalc_ctl import proc
ctypes.CDLL("libc.so.6").prctl(36, 1)  # PR_SET_CHILD_SUBREAPER: orphans come back to us
r, w = os.pipe()
mid = os.fork()
if mid == 0:
    setter = proc._death_signal_setter()  # armed for this (middle) process, as Popen would do
    me = os.getpid()
    g = os.fork()
    if g == 0:
        deadline = time.monotonic() + 20
        while os.getppid() == me and time.monotonic() < deadline:  # the parent dies first...
            time.sleep(0.01)
        if os.getppid() == me:
            os._exit(3)
        setter()  # ...then the death signal is armed
        os._exit(0)
    os.write(w, str(g).encode())
    os._exit(0)
os.waitpid(mid, 0)
g = int(os.read(r, 32))
_, status = os.waitpid(g, 0)
print(os.WTERMSIG(status) if os.WIFSIGNALED(status) else f"exit {os.WEXITSTATUS(status)}")
"""
    out = subprocess.run([sys.executable, "-c", script], cwd=str(REPO), capture_output=True, text=True,
                         timeout=30)
    assert out.stdout.strip() == str(int(signal.SIGKILL)), out
