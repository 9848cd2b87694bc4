"""proc.run_lines: stdout lines reach the callback as they come; failures and timeouts are typed."""

from __future__ import annotations

import pytest

from cocalc_ctl import proc
from cocalc_ctl.errors import CommandFailed, CommandTimeout


def test_lines_arrive_in_order_and_stdout_is_returned():
    seen = []
    res = proc.run_lines(["printf", "one\\ntwo\\n"], seen.append, mutates=False)
    assert seen == ["one", "two"] and res.stdout == "one\ntwo\n"


def test_failure_carries_stderr_and_timeout_kills():
    with pytest.raises(CommandFailed) as exc:
        proc.run_lines(["ls", "/does/not/exist"], lambda line: None, mutates=False)
    assert "No such file" in exc.value.stderr_tail
    with pytest.raises(CommandTimeout):
        proc.run_lines(["sleep", "5"], lambda line: None, mutates=False, timeout=0.3)


def test_dry_run_only_prints(capsys):
    proc.DRY_RUN = True
    try:
        res = proc.run_lines(["rm", "-rf", "/nothing"], lambda line: None)
    finally:
        proc.DRY_RUN = False
    assert res.dry_run and "rm -rf /nothing" in capsys.readouterr().out
