"""flock locks: a refused run is told who holds the lock and what that holder is doing."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from cocalc_ctl import locks
from cocalc_ctl.errors import Busy
from tests.support.hosts import REPO


def test_busy_error_names_the_holders_pid_and_reason(tmp_path):
    holder = subprocess.Popen(
        [sys.executable, "-c",
         "import sys, time; from pathlib import Path; from cocalc_ctl import locks\n"
         "with locks.hold(Path(sys.argv[1]), 'project-x.backup', what='backup of project x',\n"
         "                doing='restore of project x from backup latest'):\n"
         "    print('held', flush=True); time.sleep(60)\n", str(tmp_path)],
        cwd=str(REPO), stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(Busy) as exc:
            with locks.hold(tmp_path, "project-x.backup", what="backup of project x"):
                pass
        assert exc.value.one_line().startswith(
            f"backup of project x is busy (held by pid {holder.pid}: restore of project x from backup latest)")
    finally:
        holder.kill()
        holder.wait()


def test_reason_defaults_to_what_and_a_hostile_reason_stays_one_line(tmp_path):
    with locks.hold(tmp_path, "a", what="snapshot auto"):
        with pytest.raises(Busy, match=r"held by pid \d+: snapshot auto\)"):
            with locks.hold(tmp_path, "a"):
                pass
    with locks.hold(tmp_path, "b", doing="line one\nline two\x1b[31m"):
        with pytest.raises(Busy) as exc:
            with locks.hold(tmp_path, "b"):
                pass
    assert "\n" not in exc.value.one_line() and "\x1b" not in exc.value.one_line()
    assert f"held by pid {os.getpid()}: line one line two" in exc.value.one_line()


def test_an_old_holder_that_wrote_only_its_pid_is_still_named(tmp_path):
    path = locks.lock_dir(tmp_path) / "c.lock"
    path.write_text("123\n")
    import fcntl

    fd = os.open(path, os.O_RDWR)
    fcntl.flock(fd, fcntl.LOCK_EX)
    try:
        with pytest.raises(Busy, match=r"c is busy \(held by pid 123\)"):
            with locks.hold(tmp_path, "c"):
                pass
    finally:
        os.close(fd)
