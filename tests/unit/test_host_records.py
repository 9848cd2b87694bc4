"""Retention of host records (state/host_records.py) on a real host sqlite: what goes, what always
stays, the batch bound, and that the queries (and `metrics write`'s) are answered from indexes."""

from __future__ import annotations

import contextlib
import datetime as dt

import pytest

from cocalc_ctl.state import host_db, host_records

NOW = dt.datetime(2026, 12, 1, 12, 0, tzinfo=dt.timezone.utc)
P1, P2, P3 = ("1b4e28ba-2fa1-11d2-883f-0016d3cca427", "2a9360a7-c3d5-46d8-8fd5-5e7341c59c12",
              "3c0a1e2f-0000-4000-8000-000000000003")


def _at(days_ago: float) -> str:
    return (NOW - dt.timedelta(days=days_ago)).isoformat(timespec="seconds")


@pytest.fixture
def conn(tmp_path):
    with contextlib.closing(host_db.connect(tmp_path)) as c:
        yield c


def _job(conn, pid, state, days_ago, error=None) -> int:
    fin = _at(days_ago) if state in ("succeeded", "failed") else None
    return conn.execute("INSERT INTO backup_jobs (project_id, state, started_at, finished_at, error) "
                        "VALUES (?,?,?,?,?)", (pid, state, _at(days_ago), fin, error)).lastrowid


def _log(conn, pid, role, days_ago) -> int:
    return conn.execute("INSERT INTO move_log (project_id, role, step, status, at) VALUES (?,?,?,?,?)",
                        (pid, role, "done", "ok", _at(days_ago))).lastrowid


def _ids(conn, table) -> set[int]:
    return {r[0] for r in conn.execute(f"SELECT id FROM {table}")}


def test_backup_jobs_keep_the_window_the_newest_and_the_newest_success(conn):
    old_ok = _job(conn, P1, "succeeded", 200)
    older_ok = _job(conn, P1, "succeeded", 150)  # newest success of P1, though old
    old_fail = _job(conn, P1, "failed", 120, "boom")  # newest finished of P1
    running = _job(conn, P1, "running", 100)  # active: never pruned
    p2_old = [_job(conn, P2, "succeeded", d) for d in (300, 250)]
    p2_recent = _job(conn, P2, "failed", 10)
    p3_only = _job(conn, P3, "failed", 400)  # the only record of P3
    deleted = host_records.prune(conn, days=90, ticket_minutes=180, now=NOW)
    assert _ids(conn, "backup_jobs") == {older_ok, old_fail, running, p2_old[1], p2_recent, p3_only}
    assert deleted["backup_jobs"] == 2 and old_ok not in _ids(conn, "backup_jobs")
    # a second run finds nothing more (idempotent), a shorter window takes what it allows
    assert host_records.prune(conn, days=90, ticket_minutes=180, now=NOW)["backup_jobs"] == 0
    assert host_records.prune(conn, days=5, ticket_minutes=180, now=NOW)["backup_jobs"] == 0  # all needed


def test_move_log_keeps_the_newest_row_of_each_project_and_role(conn):
    sends = [_log(conn, P1, "send", d) for d in (400, 300, 200)]
    recv_old = _log(conn, P1, "recv", 500)
    recent = _log(conn, P1, "send", 1)
    p2 = [_log(conn, P2, "finalize", d) for d in (100, 95)]
    host_records.prune(conn, days=90, ticket_minutes=180, now=NOW)
    assert _ids(conn, "move_log") == {recv_old, recent, p2[1]}
    assert not set(sends) & _ids(conn, "move_log")


def test_move_tickets_outlive_both_the_window_and_the_ticket_lifetime(conn):
    for mid, days_ago in (("a", 100), ("b", 10), ("c", 0.01), ("d", 2)):
        conn.execute("INSERT INTO move_tickets (move_id, project_id, attempt, seen_at) VALUES (?,?,1,?)",
                     (mid, P1, _at(days_ago)))
    host_records.prune(conn, days=90, ticket_minutes=180, now=NOW)
    assert {r[0] for r in conn.execute("SELECT move_id FROM move_tickets")} == {"b", "c", "d"}
    # a window shorter than a ticket's lifetime does not forget a ticket that could still be presented
    host_records.prune(conn, days=1, ticket_minutes=3 * 24 * 60, now=NOW)
    assert {r[0] for r in conn.execute("SELECT move_id FROM move_tickets")} == {"c", "d"}
    host_records.prune(conn, days=1, ticket_minutes=180, now=NOW)
    assert {r[0] for r in conn.execute("SELECT move_id FROM move_tickets")} == {"c"}


def test_a_run_deletes_at_most_a_batch_oldest_first(conn):
    rows = [_log(conn, P1, "send", 1000 - i) for i in range(25)]
    _log(conn, P1, "send", 0)
    assert host_records.prune(conn, days=90, ticket_minutes=180, batch=10, now=NOW)["move_log"] == 10
    assert not set(rows[:10]) & _ids(conn, "move_log") and set(rows[10:]) <= _ids(conn, "move_log")
    host_records.prune(conn, days=90, ticket_minutes=180, batch=10, now=NOW)
    host_records.prune(conn, days=90, ticket_minutes=180, batch=10, now=NOW)
    assert len(_ids(conn, "move_log")) == 1


def _plan(conn, sql: str, params=()) -> str:
    return " | ".join(r[3] for r in conn.execute("EXPLAIN QUERY PLAN " + sql, params))


@pytest.mark.parametrize("sql, params, index", [
    # the prune queries find their rows by time
    ("SELECT b.id FROM backup_jobs b WHERE b.finished_at < ? AND b.state IN ('succeeded','failed') "
     "ORDER BY b.finished_at LIMIT 10", ("x",), "backup_jobs_finished"),
    ("SELECT m.id FROM move_log m WHERE m.at < ? ORDER BY m.at LIMIT 10", ("x",), "move_log_at"),
    ("SELECT 1 FROM move_log n WHERE n.project_id = ? AND n.role = ? AND n.id > ?", ("p", "send", 1),
     "move_log_project_role"),
    ("SELECT move_id FROM move_tickets WHERE seen_at < ? ORDER BY seen_at LIMIT 10", ("x",), "move_tickets_seen"),
    # metrics write
    ("SELECT state, count(*) FROM backup_jobs GROUP BY state", (), "backup_jobs_state"),
    ("SELECT role, status, count(*) AS n FROM move_log GROUP BY role, status ORDER BY role, status", (),
     "move_log_role_status"),
    ("SELECT max(id) FROM backup_jobs GROUP BY project_id", (), "backup_jobs_project"),
])
def test_the_queries_use_an_index(conn, sql, params, index):
    for i in range(200):
        _job(conn, f"p{i % 20}", "succeeded", i)
        _log(conn, f"p{i % 20}", "send", i)
    conn.execute("ANALYZE")
    plan = _plan(conn, sql, params)
    assert index in plan, plan


def test_the_migration_is_idempotent_on_a_database_with_data(tmp_path):
    with contextlib.closing(host_db.connect(tmp_path)) as c:
        _job(c, P1, "succeeded", 1)
        version = host_db.schema_version(c)
        assert version == len(host_db.MIGRATIONS)
        # a database from before the retention indexes, with data: migrate adds them and keeps the rows
        for name in ("backup_jobs_finished", "move_log_at", "move_tickets_seen"):
            c.execute(f"DROP INDEX {name}")
        c.execute(f"PRAGMA user_version = {version - 1}")
    with contextlib.closing(host_db.connect(tmp_path)) as c:
        names = {r[0] for r in c.execute("SELECT name FROM sqlite_master WHERE type = 'index'")}
        assert {"backup_jobs_finished", "move_log_at", "move_tickets_seen", "backup_jobs_state"} <= names
        assert c.execute("SELECT count(*) FROM backup_jobs").fetchone()[0] == 1
        for statement in host_db._statements(host_db.MIGRATIONS[-1]):  # runs again without error
            c.execute(statement)
