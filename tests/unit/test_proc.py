import os
import signal
import subprocess
import sys
import time

import pytest

from cocalc_ctl import proc
from cocalc_ctl.errors import CommandFailed, CommandTimeout, ToolMissing
from tests.support.hosts import REPO


@pytest.fixture(autouse=True)
def reset_proc():
    saved = (proc.DRY_RUN, proc.ECHO_PLAN, list(proc.PLAN))
    proc.PLAN.clear()
    yield
    proc.DRY_RUN, proc.ECHO_PLAN = saved[0], saved[1]
    proc.PLAN[:] = saved[2]


def test_run_uses_c_locale_and_captures_output():
    res = proc.run(["sh", "-c", 'echo "$LC_ALL"'], mutates=False)
    assert res.stdout.strip() == "C"


def test_failure_carries_stderr_tail():
    with pytest.raises(CommandFailed) as exc:
        proc.run(["sh", "-c", "echo first >&2; echo 'the real reason' >&2; exit 3"], mutates=False)
    assert exc.value.returncode == 3
    assert "the real reason" in exc.value.one_line()
    assert exc.value.exit_code == 1


def test_missing_program_names_the_debian_package():
    with pytest.raises(ToolMissing) as exc:
        proc.run(["btrfs", "--version"], mutates=False, env={"PATH": "/nonexistent"})
    assert exc.value.exit_code == 5
    assert "apt-get install btrfs-progs" in exc.value.one_line()


def test_timeout():
    with pytest.raises(CommandTimeout):
        proc.run(["sleep", "5"], mutates=False, timeout=0.2)


def test_dry_run_prints_quoted_command_and_runs_nothing(tmp_path, capsys):
    proc.DRY_RUN = True
    target = tmp_path / "a file"
    res = proc.run(["touch", str(target)])
    assert res.dry_run and not target.exists()
    assert capsys.readouterr().out.strip() == f"touch '{target}'"
    # read-only commands still run so plans are real
    assert proc.run(["echo", "hi"], mutates=False).stdout == "hi\n"


def test_pipeline_joins_kernel_to_kernel_and_counts_bytes(tmp_path):
    src = tmp_path / "src"
    src.write_bytes(os.urandom(3 << 20))
    out = tmp_path / "out"
    seen = []
    res = proc.pipeline([proc.Stage(["cat"], stdin_path=str(src)), proc.Stage(["gzip", "-1"]),
                         proc.Stage(["gzip", "-d"], stdout_path=str(out))],
                        count_after=[0], on_progress=seen.append)
    assert out.read_bytes() == src.read_bytes()
    assert res.bytes_counted == [3 << 20]
    assert seen and seen[-1] == 3 << 20


def test_pipeline_blames_the_stage_that_really_failed():
    # the last stage fails; the first dies of SIGPIPE and must not be blamed
    with pytest.raises(CommandFailed) as exc:
        proc.pipeline([proc.Stage(["yes"]), proc.Stage(["sh", "-c", "head -c 10 >/dev/null; echo boom >&2; exit 7"])])
    assert exc.value.returncode == 7 and "boom" in exc.value.one_line()


def test_pipeline_checks_every_stage_even_when_the_last_succeeds():
    with pytest.raises(CommandFailed) as exc:
        proc.pipeline([proc.Stage(["sh", "-c", "echo data; echo 'send failed' >&2; exit 1"]), proc.Stage(["cat"])])
    assert "send failed" in exc.value.one_line()


def test_pipeline_timeout_kills_all_stages():
    with pytest.raises(CommandTimeout):
        proc.pipeline([proc.Stage(["sleep", "10"]), proc.Stage(["cat"])], timeout=0.3)


def test_pipeline_dry_run(capsys):
    proc.DRY_RUN = True
    res = proc.pipeline([proc.Stage(["btrfs", "send", "/a b"]), proc.Stage(["lz4", "-c"], stdout_path="/x.lz4")])
    assert res.dry_run
    assert capsys.readouterr().out.strip() == "btrfs send '/a b' | lz4 -c > /x.lz4"


def test_sigpipe_constant_is_what_we_filter():
    assert signal.SIGPIPE == 13


def _running(pid: int) -> bool:
    """Listed and not a zombie (it may be reaped, and its /proc entry gone, at any moment)."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            stat = fh.read()
    except OSError:
        return False
    return stat[stat.rindex(")") + 2:].split()[0] != "Z"


@pytest.mark.parametrize("how", ["pipeline", "run"])
def test_every_child_dies_with_the_parent(tmp_path, how):
    """Like proc.stream(): a killed move step must not leave its `btrfs send | ssh` stages running."""
    a, b = tmp_path / "a.pid", tmp_path / "b.pid"
    stage = "echo $$ > {}.tmp && mv {}.tmp {}; exec sleep 60"
    if how == "pipeline":
        call = (f"proc.pipeline([proc.Stage(['sh', '-c', {stage.format(a, a, a)!r}]), "
                f"proc.Stage(['sh', '-c', {stage.format(b, b, b)!r}])])")
        pidfiles = [a, b]
    else:
        call = f"proc.run(['sh', '-c', {stage.format(a, a, a)!r}])"
        pidfiles = [a]
    parent = subprocess.Popen([sys.executable, "-c", f"from cocalc_ctl import proc; proc.DRY_RUN = False; {call}"],
                              cwd=str(REPO))
    try:
        deadline = time.monotonic() + 60
        while not all(p.exists() for p in pidfiles):
            assert time.monotonic() < deadline and parent.poll() is None
            time.sleep(0.02)
        children = [int(p.read_text()) for p in pidfiles]
    finally:
        os.kill(parent.pid, signal.SIGKILL)
        parent.wait()
    deadline = time.monotonic() + 30
    while any(_running(c) for c in children):
        if time.monotonic() > deadline:
            for c in children:
                if _running(c):
                    os.kill(c, signal.SIGKILL)
            raise AssertionError(f"a child of proc.{how} outlived its parent")
        time.sleep(0.02)
