"""The timers prune old host records: `backup due` (reported as `pruned`) and `snapshot auto`, on
a real host (btrfs pool, restic repository), keeping the newest record of each project."""

from __future__ import annotations

import contextlib
import datetime as dt

import pytest

from tests.support.backup import PID_A, PID_C, backup_host

pytestmark = pytest.mark.integration


def _ago(days: float) -> str:
    return (dt.datetime.now(dt.timezone.utc) - dt.timedelta(days=days)).isoformat(timespec="seconds")


def test_backup_due_and_snapshot_auto_prune_old_host_records(make_host, workdir):
    from cocalc_ctl.state import host_db

    h = backup_host(make_host, workdir)
    h.cli("project", "create", PID_A)
    with contextlib.closing(host_db.connect(h.data)) as db:
        for days in (400, 300, 200):  # a project long gone: only its newest job stays
            db.execute("INSERT INTO backup_jobs (project_id, state, started_at, finished_at) "
                       "VALUES (?, 'succeeded', ?, ?)", (PID_C, _ago(days), _ago(days)))
        for days in (400, 300, 5):
            db.execute("INSERT INTO move_log (project_id, role, step, status, at) VALUES (?, 'send', 'done', 'ok', ?)",
                       (PID_C, _ago(days)))
    due = h.json("backup", "due")
    assert [b["project_id"] for b in due["backed_up"]] == [PID_A]
    assert due["pruned"] == {"backup_jobs": 2, "move_log": 2, "move_tickets": 0}
    with contextlib.closing(host_db.connect(h.data)) as db:
        left = db.execute("SELECT project_id, finished_at FROM backup_jobs ORDER BY id").fetchall()
        assert [r[0] for r in left] == [PID_C, PID_A] and left[0][1][:10] == _ago(200)[:10]  # the newest
        for days in (500, 450):
            db.execute("INSERT INTO move_log (project_id, role, step, status, at) VALUES (?, 'recv', 'done', 'ok', ?)",
                       (PID_C, _ago(days)))
    # --dry-run says so and deletes nothing
    dry = h.cli("--dry-run", "snapshot", "auto")
    assert "prune host records" in dry.stdout + dry.stderr
    with contextlib.closing(host_db.connect(h.data)) as db:
        assert db.execute("SELECT count(*) FROM move_log WHERE role = 'recv'").fetchone()[0] == 2
    h.cli("snapshot", "auto")
    with contextlib.closing(host_db.connect(h.data)) as db:
        assert db.execute("SELECT count(*) FROM move_log WHERE role = 'recv'").fetchone()[0] == 1
    # nothing more to prune: the newest of each project stays
    assert h.json("backup", "due")["pruned"] == {"backup_jobs": 0, "move_log": 0, "move_tickets": 0}
