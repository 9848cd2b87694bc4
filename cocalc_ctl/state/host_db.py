"""Host state in `<data_dir>/host.sqlite` (WAL), migrated by `PRAGMA user_version`.

Migrations only ever add: a newer cocalc-ctl upgrades an older database in place, and an older
cocalc-ctl refuses a database from the future instead of misreading it.
"""

from __future__ import annotations

import datetime as dt
import os
import sqlite3
from pathlib import Path

from cocalc_ctl.errors import PreconditionFailed

MIGRATIONS: list[str] = [
    # 1: the tables of SPEC §1
    """
    CREATE TABLE projects (
        project_id      TEXT PRIMARY KEY,
        image           TEXT,
        state           TEXT NOT NULL DEFAULT 'stopped',
        http_port       INTEGER,
        ssh_port        INTEGER,
        authorized_keys TEXT,
        created_at      TEXT NOT NULL,
        updated_at      TEXT NOT NULL
    );
    CREATE TABLE project_hosts (
        host_id                 TEXT PRIMARY KEY,
        name                    TEXT,
        ssh_server              TEXT,
        host_to_host_public_key TEXT,
        sshpiperd_public_key    TEXT,
        trusted                 INTEGER NOT NULL DEFAULT 0,
        is_self                 INTEGER NOT NULL DEFAULT 0,
        private_key_ref         TEXT,
        updated_at              TEXT NOT NULL
    );
    CREATE TABLE backup_jobs (
        id           INTEGER PRIMARY KEY AUTOINCREMENT,
        project_id   TEXT NOT NULL,
        state        TEXT NOT NULL CHECK (state IN ('pending','running','succeeded','failed')),
        repo         TEXT,
        backup_id    TEXT,
        bytes        INTEGER,
        started_at   TEXT,
        heartbeat_at TEXT,
        finished_at  TEXT,
        error        TEXT,
        pid          INTEGER,
        snapshot     TEXT
    );
    CREATE INDEX backup_jobs_project ON backup_jobs(project_id, state);
    CREATE TABLE move_log (
        id         INTEGER PRIMARY KEY AUTOINCREMENT,
        project_id TEXT NOT NULL,
        move_id    TEXT,
        role       TEXT NOT NULL CHECK (role IN ('send','recv','finalize','cleanup')),
        step       TEXT NOT NULL,
        snapshot   TEXT,
        parent     TEXT,
        bytes      INTEGER,
        status     TEXT NOT NULL,
        detail     TEXT,
        at         TEXT NOT NULL
    );
    CREATE INDEX move_log_project ON move_log(project_id, at);
    """,
    # backup: how long a job took, and the generation it saw (for `backup due`)
    """
    ALTER TABLE backup_jobs ADD COLUMN duration REAL;
    ALTER TABLE backup_jobs ADD COLUMN generation INTEGER
    """,
    # isolation: each project's host uid/gid range (base .. base+size-1), never shared while the project
    # exists, and the range its files are owned by now (owner_base; NULL = not known, check the tree)
    """
    CREATE TABLE project_idmaps (
        project_id  TEXT PRIMARY KEY,
        base        INTEGER NOT NULL UNIQUE,
        size        INTEGER NOT NULL,
        owner_base  INTEGER,
        updated_at  TEXT NOT NULL
    )
    """,
    # move authority: the hub public keys this host pinned (keys sync) and the move tickets it has seen
    """
    CREATE TABLE hub_keys (
        public_key TEXT PRIMARY KEY,
        hub_id     TEXT NOT NULL,
        updated_at TEXT NOT NULL
    );
    CREATE TABLE move_tickets (
        move_id     TEXT PRIMARY KEY,
        project_id  TEXT NOT NULL,
        attempt     INTEGER NOT NULL,
        seen_at     TEXT NOT NULL,
        finished_by TEXT,
        finished_at TEXT
    )
    """,
    # run quota: the project's own quota (JSON) as last read from the hub, for starts while it is down
    """
    ALTER TABLE projects ADD COLUMN run_quota TEXT
    """,
    # host records: retention indexes (host_records.prune finds old rows by time; metrics counts jobs
    # by state without reading the table; the newest job of a project by (project_id, id))
    """
    CREATE INDEX IF NOT EXISTS backup_jobs_finished ON backup_jobs(finished_at);
    CREATE INDEX IF NOT EXISTS backup_jobs_state ON backup_jobs(state);
    CREATE INDEX IF NOT EXISTS backup_jobs_project_id ON backup_jobs(project_id, id);
    CREATE INDEX IF NOT EXISTS move_log_at ON move_log(at);
    CREATE INDEX IF NOT EXISTS move_log_project_role ON move_log(project_id, role, id);
    CREATE INDEX IF NOT EXISTS move_log_role_status ON move_log(role, status);
    CREATE INDEX IF NOT EXISTS move_tickets_seen ON move_tickets(seen_at)
    """,
]


def now_iso() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


def db_path(data_dir: Path) -> Path:
    return Path(data_dir) / "host.sqlite"


def connect(data_dir: Path, *, create: bool = True) -> sqlite3.Connection:
    """Open (and migrate) the host database; `create=False` fails if it does not exist yet."""
    path = db_path(data_dir)
    if not path.exists():
        if not create:
            raise PreconditionFailed(f"host database {path} does not exist", hint="run `cocalc-ctl host init`")
        Path(data_dir).mkdir(parents=True, exist_ok=True)
    conn = sqlite3.connect(str(path), timeout=30, isolation_level=None)
    os.chmod(path, 0o600)
    conn.row_factory = sqlite3.Row
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=NORMAL")
    conn.execute("PRAGMA foreign_keys=ON")
    migrate(conn)
    return conn


def schema_version(conn: sqlite3.Connection) -> int:
    return conn.execute("PRAGMA user_version").fetchone()[0]


def migrate(conn: sqlite3.Connection) -> int:
    current = schema_version(conn)
    if current > len(MIGRATIONS):
        raise PreconditionFailed(
            f"host database is at schema version {current}, newer than this cocalc-ctl knows ({len(MIGRATIONS)})",
            hint="upgrade cocalc-ctl")
    if current == len(MIGRATIONS):
        return current
    conn.execute("BEGIN IMMEDIATE")
    try:
        current = schema_version(conn)  # another process may have migrated while we waited
        for version in range(current + 1, len(MIGRATIONS) + 1):
            for statement in _statements(MIGRATIONS[version - 1]):
                conn.execute(statement)
            conn.execute(f"PRAGMA user_version = {version}")
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    return schema_version(conn)


def _statements(script: str) -> list[str]:
    """Split a migration into whole SQL statements the way sqlite's own shell does: a `;` ends a
    statement only where `sqlite3.complete_statement` agrees (not inside a string, a comment or a
    trigger's BEGIN ... END). Every statement runs inside the migration's one transaction
    (executescript would commit it first)."""
    statements, buf = [], ""
    for piece in script.split(";"):
        buf += piece + ";"
        if sqlite3.complete_statement(buf):
            if _has_sql(buf):
                statements.append(buf.strip())
            buf = ""
    if _has_sql(buf[:-1]):  # a last statement without its `;`
        statements.append(buf[:-1].strip())
    return statements


def _has_sql(text: str) -> bool:
    lines = (line.split("--", 1)[0].strip() for line in text.splitlines())
    return any(line and line != ";" for line in lines)


# -- projects ---------------------------------------------------------------------------------

PROJECT_FIELDS = ("image", "state", "http_port", "ssh_port", "authorized_keys", "run_quota")


def upsert_project(conn: sqlite3.Connection, project_id: str, **fields) -> None:
    """Insert or update one project row in one transaction (a reader never sees half the fields)."""
    unknown = set(fields) - set(PROJECT_FIELDS)
    if unknown:
        raise ValueError(", ".join(sorted(unknown)))
    now = now_iso()
    own = not conn.in_transaction
    if own:
        conn.execute("BEGIN IMMEDIATE")
    try:
        row = conn.execute("SELECT project_id FROM projects WHERE project_id=?", (project_id,)).fetchone()
        if row is None:
            conn.execute("INSERT INTO projects(project_id, state, created_at, updated_at) VALUES (?,?,?,?)",
                         (project_id, fields.pop("state", "stopped"), now, now))
        if fields:
            columns = [k for k in PROJECT_FIELDS if k in fields]  # names from our own list, never input
            conn.execute(f"UPDATE projects SET {', '.join(f'{k}=?' for k in columns)}, updated_at=? "
                         "WHERE project_id=?", (*(fields[k] for k in columns), now, project_id))
        if own:
            conn.execute("COMMIT")
    except BaseException:
        if own and conn.in_transaction:
            conn.execute("ROLLBACK")
        raise


def get_project(conn: sqlite3.Connection, project_id: str) -> sqlite3.Row | None:
    return conn.execute("SELECT * FROM projects WHERE project_id=?", (project_id,)).fetchone()


def delete_project(conn: sqlite3.Connection, project_id: str) -> None:
    conn.execute("DELETE FROM projects WHERE project_id=?", (project_id,))


def list_projects(conn: sqlite3.Connection) -> list[sqlite3.Row]:
    return conn.execute("SELECT * FROM projects ORDER BY project_id").fetchall()


# -- proxy routes (read-only access for `proxy serve --mode host`) ------------------------------

def connect_readonly(data_dir: Path) -> sqlite3.Connection:
    """A read-only connection that never migrates or creates anything (the proxy only reads)."""
    path = db_path(data_dir)
    if not path.exists():
        raise PreconditionFailed(f"host database {path} does not exist", hint="run `cocalc-ctl host init`")
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5, isolation_level=None,
                           check_same_thread=False)
    if schema_version(conn) < 1:
        raise PreconditionFailed(f"host database {path} is not initialised", hint="run `cocalc-ctl host init`")
    return conn


def project_http_route(conn: sqlite3.Connection, project_id: str) -> tuple[str, int | None] | None:
    """(state, http_port) of a registered project, or None."""
    return conn.execute("SELECT state, http_port FROM projects WHERE project_id=?", (project_id,)).fetchone()
