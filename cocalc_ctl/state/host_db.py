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
    # run quota: the project's own quota (JSON) as last read from the hub, for starts while it is down
    """
    ALTER TABLE projects ADD COLUMN run_quota TEXT
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
    return [s.strip() for s in script.split(";") if s.strip()]


# -- projects ---------------------------------------------------------------------------------

def upsert_project(conn: sqlite3.Connection, project_id: str, **fields) -> None:
    now = now_iso()
    row = conn.execute("SELECT project_id FROM projects WHERE project_id=?", (project_id,)).fetchone()
    if row is None:
        conn.execute("INSERT INTO projects(project_id, state, created_at, updated_at) VALUES (?,?,?,?)",
                     (project_id, fields.pop("state", "stopped"), now, now))
    allowed = {"image", "state", "http_port", "ssh_port", "authorized_keys", "run_quota"}
    for k, v in fields.items():
        if k not in allowed:
            raise ValueError(k)
        conn.execute(f"UPDATE projects SET {k}=?, updated_at=? WHERE project_id=?", (v, now, project_id))


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
