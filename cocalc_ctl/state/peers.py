"""The `project_hosts` table of host sqlite: this host's own row and the cached trusted peers.

Key columns hold newline-separated OpenSSH public key lines, the current key first; during a
rotation the previous key follows it, so peers keep accepting (and pinning) both until it is finished.
Kept import-light (sqlite only): the AuthorizedKeysCommand fast path reads it.
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass


@dataclass
class PeerRow:
    host_id: str
    name: str | None
    ssh_server: str | None
    host_to_host_public_key: str | None
    sshpiperd_public_key: str | None
    trusted: bool
    is_self: bool
    updated_at: str | None = None


def _row(r: sqlite3.Row) -> PeerRow:
    return PeerRow(r["host_id"], r["name"], r["ssh_server"], r["host_to_host_public_key"],
                   r["sshpiperd_public_key"], bool(r["trusted"]), bool(r["is_self"]), r["updated_at"])


def get(conn: sqlite3.Connection, host_id: str) -> PeerRow | None:
    r = conn.execute("SELECT * FROM project_hosts WHERE host_id=?", (host_id,)).fetchone()
    return _row(r) if r else None


def trusted_peer(conn: sqlite3.Connection, host_id: str) -> PeerRow | None:
    r = conn.execute("SELECT * FROM project_hosts WHERE host_id=? AND trusted=1 AND is_self=0",
                     (host_id,)).fetchone()
    return _row(r) if r else None


def list_peers(conn: sqlite3.Connection) -> list[PeerRow]:
    return [_row(r) for r in conn.execute("SELECT * FROM project_hosts WHERE is_self=0 ORDER BY host_id")]


def upsert_self(conn: sqlite3.Connection, host_id: str, *, name: str | None, ssh_server: str | None,
                host_to_host_public_key: str | None, sshpiperd_public_key: str | None,
                private_key_ref: str | None, now: str) -> None:
    conn.execute("UPDATE project_hosts SET is_self=0 WHERE is_self=1 AND host_id<>?", (host_id,))
    conn.execute(
        """INSERT INTO project_hosts(host_id, name, ssh_server, host_to_host_public_key, sshpiperd_public_key,
                                     trusted, is_self, private_key_ref, updated_at)
           VALUES (?,?,?,?,?,0,1,?,?)
           ON CONFLICT(host_id) DO UPDATE SET name=excluded.name, ssh_server=excluded.ssh_server,
               host_to_host_public_key=excluded.host_to_host_public_key,
               sshpiperd_public_key=excluded.sshpiperd_public_key, is_self=1,
               private_key_ref=excluded.private_key_ref, updated_at=excluded.updated_at""",
        (host_id, name, ssh_server, host_to_host_public_key, sshpiperd_public_key, private_key_ref, now))


def set_self_trusted(conn: sqlite3.Connection, host_id: str, trusted: bool) -> None:
    conn.execute("UPDATE project_hosts SET trusted=? WHERE host_id=? AND is_self=1", (int(trusted), host_id))


def replace_peers(conn: sqlite3.Connection, peers: list[PeerRow], now: str) -> tuple[list[str], list[str], list[str]]:
    """Make the cached peers exactly `peers` (one transaction); return (added, changed, removed) ids."""
    added, changed, removed = [], [], []
    conn.execute("BEGIN IMMEDIATE")
    try:
        old = {p.host_id: p for p in list_peers(conn)}
        self_ids = {r[0] for r in conn.execute("SELECT host_id FROM project_hosts WHERE is_self=1")}
        wanted = {p.host_id: p for p in peers if p.host_id not in self_ids}
        for hid in sorted(set(old) - set(wanted)):
            conn.execute("DELETE FROM project_hosts WHERE host_id=? AND is_self=0", (hid,))
            removed.append(hid)
        for hid, p in sorted(wanted.items()):
            prev = old.get(hid)
            if prev is not None and _unchanged(prev, p):
                continue
            _store_trusted(conn, hid, p, now)
            (changed if prev is not None else added).append(hid)
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    return added, changed, removed


def set_peers(conn: sqlite3.Connection, host_ids: list[str], peers: list[PeerRow],
              now: str) -> tuple[list[str], list[str], list[str]]:
    """Incremental: make the cached entries of `host_ids` (and only those) what `peers` says — present
    and trusted when listed, absent otherwise (one transaction); return (added, changed, removed) ids."""
    added, changed, removed = [], [], []
    wanted = {p.host_id: p for p in peers}
    conn.execute("BEGIN IMMEDIATE")
    try:
        self_ids = {r[0] for r in conn.execute("SELECT host_id FROM project_hosts WHERE is_self=1")}
        for hid in sorted(set(host_ids) - self_ids):
            prev = get(conn, hid)
            prev = prev if prev is not None and not prev.is_self else None
            p = wanted.get(hid)
            if p is None:
                if prev is not None:
                    conn.execute("DELETE FROM project_hosts WHERE host_id=? AND is_self=0", (hid,))
                    removed.append(hid)
                continue
            if prev is not None and _unchanged(prev, p):
                continue
            _store_trusted(conn, hid, p, now)
            (changed if prev is not None else added).append(hid)
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    return added, changed, removed


def _unchanged(prev, p: PeerRow) -> bool:
    """The cached entry already says what the hub says (and is trusted)."""
    return (prev.name, prev.ssh_server, prev.host_to_host_public_key, prev.sshpiperd_public_key,
            prev.trusted) == (p.name, p.ssh_server, p.host_to_host_public_key, p.sshpiperd_public_key, True)


def _store_trusted(conn: sqlite3.Connection, hid: str, p: PeerRow, now: str) -> None:
    """Insert or update one trusted peer (never this host's own row)."""
    conn.execute(
        """INSERT INTO project_hosts(host_id, name, ssh_server, host_to_host_public_key,
                                     sshpiperd_public_key, trusted, is_self, updated_at)
           VALUES (?,?,?,?,?,1,0,?)
           ON CONFLICT(host_id) DO UPDATE SET name=excluded.name, ssh_server=excluded.ssh_server,
               host_to_host_public_key=excluded.host_to_host_public_key,
               sshpiperd_public_key=excluded.sshpiperd_public_key, trusted=1,
               updated_at=excluded.updated_at""",
        (hid, p.name, p.ssh_server, p.host_to_host_public_key, p.sshpiperd_public_key, now))
