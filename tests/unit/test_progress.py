"""Progress of backup and restore: one unit system (IEC), a total only when known, never below done."""

from __future__ import annotations

import json
import sys
import threading

from cocalc_ctl.actions.backup import progress
from cocalc_ctl.cli import backup as backup_cli
from cocalc_ctl.cli import common
from cocalc_ctl.tools.backup_engine import Progress


def test_scanner_counts_are_not_a_total(monkeypatch, capsys):
    monkeypatch.setattr(common, "G", common.Globals())
    common.G.json = True
    monkeypatch.setattr(backup_cli, "G", common.G)
    view = backup_cli._ProgressView("backup")
    clock = iter(range(100, 200, 2))
    view._time = lambda: next(clock)
    view(Progress(0.0, 0, 158, 0, 1))                # restic's first status: the scan just started
    view(Progress(0.1, 1 << 20, 10 << 20, 1, 5))     # still growing
    view(Progress(0.5, 5 << 20, 10 << 20, 3, 5))     # agreed twice: now a total
    view(Progress(1.0, 11 << 20, 10 << 20, 5, 5))    # done above the total: the total follows
    lines = [json.loads(l) for l in capsys.readouterr().out.splitlines()]
    assert [l["bytes_total"] for l in lines] == [None, None, 10 << 20, 11 << 20]
    assert [l["percent"] for l in lines] == [None, None, 50.0, 100.0]
    assert all(l["event"] == "progress" and l["operation"] == "backup" for l in lines)


def test_tty_bar_uses_iec_units_and_no_total_until_known(monkeypatch):
    monkeypatch.setattr(common, "G", common.Globals())
    monkeypatch.setattr(backup_cli, "G", common.G)
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True)
    view = backup_cli._ProgressView("restore")
    assert view._bar is not None
    bytes_col, speed_col = view._bar.columns[2], view._bar.columns[3]
    task = view._bar.add_task("restore", total=None)
    view._task = task
    view(Progress(0.0, 0, 158, 0, 1))
    t = view._bar.tasks[0]
    assert str(bytes_col.render(t)) == "0 B"
    view(Progress(0.5, 3 << 20, 6 << 20, 1, 2))
    view(Progress(0.5, 3 << 20, 6 << 20, 1, 2))
    assert str(bytes_col.render(view._bar.tasks[0])) == "3.0 MiB/6.0 MiB"
    assert "MB" not in str(speed_col.render(view._bar.tasks[0]))


def test_backup_summary_never_reports_more_new_data_than_total():
    assert backup_cli._new_data(200, 158) == "all new"
    assert backup_cli._new_data(1 << 20, 8 << 20) == "1.0 MiB new"


def test_watch_tree_reports_bytes_written_below_a_directory(tmp_path):
    seen: list[Progress] = []
    go = threading.Event()
    with progress.watch_tree(str(tmp_path), seen.append, total_bytes=3000, total_files=3, interval=0.01):
        for i in range(3):
            (tmp_path / f"f{i}").write_bytes(b"x" * 1000)
        (tmp_path / "link").symlink_to("/etc/passwd")  # not followed, not counted
        go.set()
    assert seen[0].bytes_done == 0 and seen[0].bytes_total == 3000
    assert (seen[-1].bytes_done, seen[-1].files_done, seen[-1].bytes_total) == (3000, 3, 3000)
    assert all(p.bytes_total >= p.bytes_done for p in seen)
