"""The `backup_jobs` table of host sqlite: one row per `backup create`, pending → running →
succeeded | failed, with a heartbeat while it runs."""

from __future__ import annotations

import sqlite3

from cocalc_ctl.state.host_db import now_iso

ACTIVE = ("pending", "running")


def insert(conn: sqlite3.Connection, project_id: str, repo: str, pid: int) -> int:
    now = now_iso()
    cur = conn.execute("INSERT INTO backup_jobs(project_id, state, repo, started_at, heartbeat_at, pid) "
                       "VALUES (?, 'pending', ?, ?, ?, ?)", (project_id, repo, now, now, pid))
    return int(cur.lastrowid)


def set_running(conn: sqlite3.Connection, job_id: int, snapshot: str, generation: int | None) -> None:
    conn.execute("UPDATE backup_jobs SET state='running', snapshot=?, generation=?, heartbeat_at=? "
                 "WHERE id=? AND state='pending'", (snapshot, generation, now_iso(), job_id))


def heartbeat(conn: sqlite3.Connection, job_id: int) -> None:
    conn.execute("UPDATE backup_jobs SET heartbeat_at=? WHERE id=? AND state IN ('pending','running')",
                 (now_iso(), job_id))


def finish(conn: sqlite3.Connection, job_id: int, *, ok: bool, backup_id: str | None = None,
           bytes_: int | None = None, duration: float | None = None, error: str | None = None) -> None:
    """Only an active row is finished: one marked stale meanwhile keeps its verdict."""
    conn.execute("UPDATE backup_jobs SET state=?, backup_id=?, bytes=?, duration=?, error=?, finished_at=? "
                 "WHERE id=? AND state IN ('pending','running')",
                 ("succeeded" if ok else "failed", backup_id, bytes_, duration, error, now_iso(), job_id))


def delete(conn: sqlite3.Connection, job_id: int) -> None:
    conn.execute("DELETE FROM backup_jobs WHERE id=? AND state='pending'", (job_id,))


def mark_stale(conn: sqlite3.Connection, job_id: int, reason: str) -> bool:
    cur = conn.execute("UPDATE backup_jobs SET state='failed', error=?, finished_at=? "
                       "WHERE id=? AND state IN ('pending','running')", (reason, now_iso(), job_id))
    return cur.rowcount == 1


def active(conn: sqlite3.Connection) -> list[sqlite3.Row]:
    return conn.execute("SELECT * FROM backup_jobs WHERE state IN ('pending','running') ORDER BY id").fetchall()


def get(conn: sqlite3.Connection, job_id: int) -> sqlite3.Row | None:
    return conn.execute("SELECT * FROM backup_jobs WHERE id=?", (job_id,)).fetchone()


def recent(conn: sqlite3.Connection, limit: int = 20, project_id: str | None = None,
           before: int | None = None) -> list[sqlite3.Row]:
    """The newest jobs first; `before`: only jobs older than that job id (keyset paging)."""
    if before is not None:
        if project_id:
            return conn.execute("SELECT * FROM backup_jobs WHERE project_id=? AND id < ? ORDER BY id DESC LIMIT ?",
                                (project_id, before, limit)).fetchall()
        return conn.execute("SELECT * FROM backup_jobs WHERE id < ? ORDER BY id DESC LIMIT ?",
                            (before, limit)).fetchall()
    if project_id:
        return conn.execute("SELECT * FROM backup_jobs WHERE project_id=? ORDER BY id DESC LIMIT ?",
                            (project_id, limit)).fetchall()
    return conn.execute("SELECT * FROM backup_jobs ORDER BY id DESC LIMIT ?", (limit,)).fetchall()


def last_success(conn: sqlite3.Connection) -> dict[str, sqlite3.Row]:
    """The newest succeeded job of each project."""
    rows = conn.execute("SELECT b.* FROM backup_jobs b JOIN (SELECT project_id, MAX(id) AS id FROM backup_jobs "
                        "WHERE state='succeeded' GROUP BY project_id) m ON b.id = m.id").fetchall()
    return {r["project_id"]: r for r in rows}


def newest_finished(conn: sqlite3.Connection) -> dict[str, sqlite3.Row]:
    """The newest finished (succeeded or failed) job of each project."""
    rows = conn.execute("SELECT b.* FROM backup_jobs b JOIN (SELECT project_id, MAX(id) AS id FROM backup_jobs "
                        "WHERE state IN ('succeeded','failed') GROUP BY project_id) m ON b.id = m.id").fetchall()
    return {r["project_id"]: r for r in rows}


def by_backup_id(conn: sqlite3.Connection, project_id: str) -> dict[str, sqlite3.Row]:
    rows = conn.execute("SELECT * FROM backup_jobs WHERE project_id=? AND backup_id IS NOT NULL",
                        (project_id,)).fetchall()
    return {r["backup_id"]: r for r in rows}
