"""Host sqlite: the hub public keys this host pinned (`hub_keys`) and its move-ticket ledger (`move_tickets`).

`keys sync` makes `hub_keys` exactly the set the hub publishes (one OpenSSH line per row). The
ledger records, per move id, the highest attempt whose ticket this host accepted and whether this
host has finished its part of the move (source: cleanup; destination: finalize or abort), so a
ticket of a superseded attempt or of a finished move is refused. Import-light (sqlite only).
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass


@dataclass(frozen=True)
class HubKey:
    hub_id: str
    line: str


def list_keys(conn: sqlite3.Connection) -> list[HubKey]:
    return [HubKey(r[0], r[1]) for r in conn.execute("SELECT hub_id, public_key FROM hub_keys ORDER BY hub_id, "
                                                      "public_key")]


def replace_keys(conn: sqlite3.Connection, keys: list[HubKey], now: str) -> tuple[list[str], list[str]]:
    """Pin exactly `keys` (one transaction); return (added, removed) key lines."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        old = {r[0] for r in conn.execute("SELECT public_key FROM hub_keys")}
        new = {k.line: k for k in keys}
        removed = sorted(old - set(new))
        added = sorted(set(new) - old)
        for line in removed:
            conn.execute("DELETE FROM hub_keys WHERE public_key=?", (line,))
        for line in added:
            conn.execute("INSERT INTO hub_keys(public_key, hub_id, updated_at) VALUES (?,?,?)",
                         (line, new[line].hub_id, now))
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    return added, removed


@dataclass
class LedgerRow:
    move_id: str
    project_id: str
    attempt: int
    finished_by: str | None


def ledger(conn: sqlite3.Connection, move_id: str) -> LedgerRow | None:
    r = conn.execute("SELECT move_id, project_id, attempt, finished_by FROM move_tickets WHERE move_id=?",
                     (move_id,)).fetchone()
    return LedgerRow(r[0], r[1], r[2], r[3]) if r else None


def admit(conn: sqlite3.Connection, move_id: str, project_id: str, attempt: int, verb: str, now: str) -> str | None:
    """Record a ticket's use; return why it must be refused (None = admitted)."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        row = ledger(conn, move_id)
        why = None
        if row is not None and row.project_id != project_id:
            why = "its move id belongs to another project here"
        elif row is not None and row.finished_by and not (verb in ("finalize", "abort") and row.finished_by == verb):
            why = f"its move is already finished on this host ({row.finished_by})"
        elif row is not None and attempt < row.attempt:
            why = f"attempt {attempt} was superseded by attempt {row.attempt}"
        elif row is None:
            conn.execute("INSERT INTO move_tickets(move_id, project_id, attempt, seen_at) VALUES (?,?,?,?)",
                         (move_id, project_id, attempt, now))
        elif attempt > row.attempt:
            conn.execute("UPDATE move_tickets SET attempt=?, seen_at=? WHERE move_id=?", (attempt, now, move_id))
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    return why


def close(conn: sqlite3.Connection, move_id: str, project_id: str, attempt: int, by: str, now: str) -> str | None:
    """Record the move as finished here by `by` even if this host never saw a ticket of it (a step with
    nothing left to do); return why not (None = recorded, also when it was finished already)."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        row = ledger(conn, move_id)
        why = None
        if row is not None and row.project_id != project_id:
            why = "its move id belongs to another project here"
        elif row is None:
            conn.execute("INSERT INTO move_tickets(move_id, project_id, attempt, seen_at, finished_by, finished_at) "
                         "VALUES (?,?,?,?,?,?)", (move_id, project_id, attempt, now, by, now))
        else:
            conn.execute("UPDATE move_tickets SET attempt=max(attempt, ?), finished_by=coalesce(finished_by, ?), "
                         "finished_at=coalesce(finished_at, ?) WHERE move_id=?", (attempt, by, now, move_id))
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    return why


def finish(conn: sqlite3.Connection, move_id: str, by: str, now: str) -> None:
    conn.execute("UPDATE move_tickets SET finished_by=coalesce(finished_by, ?), finished_at=coalesce(finished_at, ?) "
                 "WHERE move_id=?", (by, now, move_id))
