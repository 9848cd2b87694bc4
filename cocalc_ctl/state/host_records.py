"""Retention of host records: `backup_jobs`, `move_log` and `move_tickets` keep a window
(`retention.host_records_days`) and always what the commands still read.

Kept whatever their age: every active backup job; the newest finished job and the newest succeeded
job of each project (`backup due`, `backup status` and the metrics judge a project by them); the newest
`move_log` row of each project and role (a send's earlier move snapshots, a finalize's resume); a
move ticket younger than the tickets' lifetime (the replay ledger: an expired ticket is refused anyway).

Each run deletes at most `batch` rows per table, oldest first, found through an index on their time
(host migration "host records: retention indexes"), so a timer run stays cheap and a backlog is worked
off over a few runs.
"""

from __future__ import annotations

import datetime as dt
import sqlite3

BATCH = 5000


def cutoff(days: int, now: dt.datetime | None = None) -> str:
    now = now or dt.datetime.now(dt.timezone.utc)
    return (now - dt.timedelta(days=days)).isoformat(timespec="seconds")


def prune(conn: sqlite3.Connection, *, days: int, ticket_minutes: int, batch: int = BATCH,
          now: dt.datetime | None = None) -> dict[str, int]:
    """Delete records older than `days` (ISO UTC times compare as text); returns rows deleted per table."""
    now = now or dt.datetime.now(dt.timezone.utc)
    before = cutoff(days, now)
    tickets_before = min(before, (now - dt.timedelta(minutes=ticket_minutes)).isoformat(timespec="seconds"))
    out = {}
    conn.execute("BEGIN IMMEDIATE")
    try:
        out["backup_jobs"] = conn.execute(
            """DELETE FROM backup_jobs WHERE id IN (
                 SELECT b.id FROM backup_jobs b
                  WHERE b.finished_at < ? AND b.state IN ('succeeded', 'failed')
                    AND EXISTS (SELECT 1 FROM backup_jobs n WHERE n.project_id = b.project_id AND n.id > b.id
                                   AND n.state IN ('succeeded', 'failed'))
                    AND (b.state = 'failed'
                         OR EXISTS (SELECT 1 FROM backup_jobs n WHERE n.project_id = b.project_id AND n.id > b.id
                                       AND n.state = 'succeeded'))
                  ORDER BY b.finished_at LIMIT ?)""", (before, batch)).rowcount
        out["move_log"] = conn.execute(
            """DELETE FROM move_log WHERE id IN (
                 SELECT m.id FROM move_log m
                  WHERE m.at < ?
                    AND EXISTS (SELECT 1 FROM move_log n WHERE n.project_id = m.project_id AND n.role = m.role
                                   AND n.id > m.id)
                  ORDER BY m.at LIMIT ?)""", (before, batch)).rowcount
        out["move_tickets"] = conn.execute(
            """DELETE FROM move_tickets WHERE move_id IN (
                 SELECT move_id FROM move_tickets WHERE seen_at < ? ORDER BY seen_at LIMIT ?)""",
            (tickets_before, batch)).rowcount
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise
    return out
