"""Who may reach which project: accounts, project grants, access tokens and the proxy's sessions in the hub.

Secrets never reach the database: a token (`cct_` + base64url of 32 random bytes) and a session value
(`ccs_` + the same) are stored only as their SHA-256, and looked up by that hash, so a comparison is an
index probe, never a string compare in Python. The decision queries are plain SQL constants (psycopg `%s`
placeholders) that the hub proxy runs on its own async connections and the CLI on sync ones; each returns
at most one row `(account_id, token_id, role, expires_at)`, and only while the credential is valid:
token not revoked nor expired, account not disabled, session not expired, token scope NULL or this
project. `role` is the account's grant on the project (NULL: authenticated, no access: 403). `expires_at`
is the earliest expiry that applies (NULL: none), so a cached decision never outlives its credential.

The tables and their NOTIFY triggers are the "access control" migration in hub_db.py. The functions below
the decision queries serve the admin CLI (actions/hub/access.py validates input before calling them).
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import re
import secrets
import uuid
from dataclasses import dataclass

from cocalc_ctl.authnames import SESSION_PREFIX, TOKEN_PREFIX

ROLES = ("owner", "collaborator", "viewer")
SECRET_BYTES = 32
_SECRET_RE = re.compile(r"[A-Za-z0-9_-]{43}", re.ASCII)  # base64url of 32 bytes, no padding


def hash_secret(text: str) -> bytes:
    """What the hub stores and looks up for a token or a session value: sha256 of its UTF-8."""
    return hashlib.sha256(text.encode("utf-8")).digest()


def _new(prefix: str) -> str:
    return prefix + base64.urlsafe_b64encode(secrets.token_bytes(SECRET_BYTES)).rstrip(b"=").decode("ascii")


def new_token() -> str:
    return _new(TOKEN_PREFIX)


def new_session() -> str:
    return _new(SESSION_PREFIX)


def is_token(text: object) -> bool:
    """The shape of a token (cheap, before any lookup; a wrong shape is simply not a credential)."""
    return (isinstance(text, str) and len(text) == len(TOKEN_PREFIX) + 43 and text.startswith(TOKEN_PREFIX)
            and _SECRET_RE.fullmatch(text, len(TOKEN_PREFIX)) is not None)


def is_session(text: object) -> bool:
    return (isinstance(text, str) and len(text) == len(SESSION_PREFIX) + 43 and text.startswith(SESSION_PREFIX)
            and _SECRET_RE.fullmatch(text, len(SESSION_PREFIX)) is not None)


# -- the decision queries (hub proxy, async) ------------------------------------------------------------
# statement_timestamp(), not now(): a pooled connection may sit in a long transaction, whose now() is old.

_VALID = """t.revoked_at IS NULL
         AND (t.expires_at IS NULL OR t.expires_at > statement_timestamp())
         AND a.disabled_at IS NULL
         AND (t.project_id IS NULL OR t.project_id = q.project_id)"""

# the grant, by its whole primary key (a join could scan every grant of a project with many members)
_ROLE = """(SELECT g.role FROM project_grants g
              WHERE g.project_id = q.project_id AND g.account_id = t.account_id) AS role"""

# params (token_hash, project_id)
TOKEN_DECISION_SQL = f"""SELECT t.account_id, t.token_id, {_ROLE}, t.expires_at
    FROM (SELECT %s::bytea AS token_hash, %s::uuid AS project_id) q
    JOIN access_tokens t ON t.token_hash = q.token_hash
    JOIN accounts a ON a.account_id = t.account_id
    WHERE {_VALID}"""

# params (session_hash, project_id); a session holds for the one project it was made for
SESSION_DECISION_SQL = f"""SELECT t.account_id, t.token_id, {_ROLE}, least(s.expires_at, t.expires_at)
    FROM (SELECT %s::bytea AS session_hash, %s::uuid AS project_id) q
    JOIN access_sessions s ON s.session_hash = q.session_hash AND s.project_id = q.project_id
    JOIN access_tokens t ON t.token_id = s.token_id AND t.account_id = s.account_id
    JOIN accounts a ON a.account_id = t.account_id
    WHERE s.expires_at > statement_timestamp() AND {_VALID}"""

# The hub proxy's batched forms: many (hash, project) questions in one query (params: a list of hashes,
# a list of project uuids as text), answered by their position `i` (1-based), with the project's route
# (exists, host, internal_url) beside each decision: a cold request of a valid credential costs one
# round trip for both. Ids as text: no uuid objects to build per row.
_ROUTE_COLUMNS = """p.project_id IS NOT NULL, p.host_id::text, h.internal_url"""
_ROUTE_JOIN = """LEFT JOIN projects p ON p.project_id = q.project_id
    LEFT JOIN project_hosts h ON h.id = p.host_id"""

TOKEN_DECISIONS_SQL = f"""SELECT q.i, t.account_id::text, t.token_id::text, {_ROLE}, t.expires_at, {_ROUTE_COLUMNS}
    FROM unnest(%s::bytea[], %s::uuid[]) WITH ORDINALITY AS q(token_hash, project_id, i)
    JOIN access_tokens t ON t.token_hash = q.token_hash
    JOIN accounts a ON a.account_id = t.account_id
    {_ROUTE_JOIN}
    WHERE {_VALID}"""

SESSION_DECISIONS_SQL = f"""SELECT q.i, t.account_id::text, t.token_id::text, {_ROLE},
        least(s.expires_at, t.expires_at), {_ROUTE_COLUMNS}
    FROM unnest(%s::bytea[], %s::uuid[]) WITH ORDINALITY AS q(session_hash, project_id, i)
    JOIN access_sessions s ON s.session_hash = q.session_hash AND s.project_id = q.project_id
    JOIN access_tokens t ON t.token_id = s.token_id AND t.account_id = s.account_id
    JOIN accounts a ON a.account_id = t.account_id
    {_ROUTE_JOIN}
    WHERE s.expires_at > statement_timestamp() AND {_VALID}"""

# params (token_id,): at most one write a minute per token (and no NOTIFY: the trigger ignores it)
TOUCH_TOKEN_SQL = """UPDATE access_tokens SET last_used_at = statement_timestamp()
    WHERE token_id = %s AND (last_used_at IS NULL OR last_used_at < statement_timestamp() - interval '1 minute')"""

# params (session_hash, token_id, account_id, project_id, expires_at)
CREATE_SESSION_SQL = """INSERT INTO access_sessions (session_hash, token_id, account_id, project_id, expires_at)
    VALUES (%s, %s, %s, %s, %s)"""

# params (): sessions past their expiry (each delete sends token:<id>, which only evicts dead entries)
PRUNE_SESSIONS_SQL = "DELETE FROM access_sessions WHERE expires_at <= statement_timestamp()"


# -- admin functions (sync connection; ids and names already validated) ----------------------------------

@dataclass
class Account:
    account_id: str
    name: str | None
    created: dt.datetime | None
    disabled_at: dt.datetime | None


@dataclass
class Grant:
    project_id: str
    account_id: str
    name: str | None  # the account's name
    role: str
    created: dt.datetime | None


@dataclass
class Token:
    """A token's record: never its hash, never its value."""

    token_id: str
    account_id: str
    account: str | None  # the account's name
    project_id: str | None  # NULL: every project the account is granted
    name: str | None
    created: dt.datetime | None
    expires_at: dt.datetime | None
    revoked_at: dt.datetime | None
    last_used_at: dt.datetime | None


_ACCOUNT_COLS = "a.account_id::text, a.name, a.created, a.disabled_at"
_TOKEN_COLS = ("t.token_id::text, t.account_id::text, a.name, t.project_id::text, t.name, t.created, t.expires_at,"
               " t.revoked_at, t.last_used_at")


def find_account(conn, account_id: str | None = None, name: str | None = None) -> Account | None:
    where, arg = ("a.account_id = %s", account_id) if account_id is not None else ("a.name = %s", name)
    row = conn.execute(f"SELECT {_ACCOUNT_COLS} FROM accounts a WHERE {where}", (arg,)).fetchone()
    return Account(*row) if row else None


def insert_account(conn, name: str, account_id: str | None = None) -> Account | None:
    """The new account, or None when its name or id is taken (nothing written then)."""
    row = conn.execute(f"""INSERT INTO accounts AS a (account_id, name) VALUES (%s, %s) ON CONFLICT DO NOTHING
                           RETURNING {_ACCOUNT_COLS}""", (account_id or str(uuid.uuid4()), name)).fetchone()
    return Account(*row) if row else None


def set_disabled(conn, account_id: str, disabled: bool) -> Account:
    """Disable (now) or re-enable; a no-op update writes nothing (and so notifies nothing)."""
    cond = "a.disabled_at IS NULL" if disabled else "a.disabled_at IS NOT NULL"
    value = "statement_timestamp()" if disabled else "NULL"
    conn.execute(f"UPDATE accounts a SET disabled_at = {value} WHERE a.account_id = %s AND {cond}", (account_id,))
    return find_account(conn, account_id)


def list_accounts(conn, *, limit: int, after: str | None = None) -> list[Account]:
    """limit rows from account id `after` on (the caller asks for one more to know that more exist)."""
    rows = conn.execute(f"""SELECT {_ACCOUNT_COLS} FROM accounts a
                            WHERE %(after)s::uuid IS NULL OR a.account_id > %(after)s::uuid
                            ORDER BY a.account_id LIMIT %(limit)s""", {"after": after, "limit": limit}).fetchall()
    return [Account(*r) for r in rows]


def upsert_grant(conn, project_id: str, account_id: str, role: str) -> tuple[str, str | None]:
    """(action, previous role): created | updated | unchanged."""
    if role not in ROLES:
        raise ValueError(role)
    row = conn.execute("SELECT role FROM project_grants WHERE project_id = %s AND account_id = %s FOR UPDATE",
                       (project_id, account_id)).fetchone()
    if row is None:
        conn.execute("INSERT INTO project_grants (project_id, account_id, role) VALUES (%s, %s, %s)",
                     (project_id, account_id, role))
        return "created", None
    if row[0] == role:
        return "unchanged", role
    conn.execute("UPDATE project_grants SET role = %s WHERE project_id = %s AND account_id = %s",
                 (role, project_id, account_id))
    return "updated", row[0]


def delete_grant(conn, project_id: str, account_id: str) -> str | None:
    """The removed grant's role, or None when there was none."""
    row = conn.execute("DELETE FROM project_grants WHERE project_id = %s AND account_id = %s RETURNING role",
                       (project_id, account_id)).fetchone()
    return row[0] if row else None


def get_grant(conn, project_id: str, account_id: str) -> Grant | None:
    row = conn.execute("""SELECT g.project_id::text, g.account_id::text, a.name, g.role, g.created
                          FROM project_grants g JOIN accounts a USING (account_id)
                          WHERE g.project_id = %s AND g.account_id = %s""", (project_id, account_id)).fetchone()
    return Grant(*row) if row else None


def list_grants(conn, project_id: str, *, limit: int, after: str | None = None) -> list[Grant]:
    """A project's grants by account id (keyset: the primary key's order)."""
    rows = conn.execute("""SELECT g.project_id::text, g.account_id::text, a.name, g.role, g.created
                           FROM project_grants g JOIN accounts a USING (account_id)
                           WHERE g.project_id = %(p)s AND (%(after)s::uuid IS NULL OR g.account_id > %(after)s::uuid)
                           ORDER BY g.account_id LIMIT %(limit)s""",
                        {"p": project_id, "after": after, "limit": limit}).fetchall()
    return [Grant(*r) for r in rows]


def insert_token(conn, account_id: str, token_hash: bytes, *, project_id: str | None, name: str | None,
                 expires_at: dt.datetime | None) -> Token:
    tid = str(uuid.uuid4())
    conn.execute("""INSERT INTO access_tokens (token_id, account_id, project_id, name, token_hash, expires_at)
                    VALUES (%s, %s, %s, %s, %s, %s)""", (tid, account_id, project_id, name, token_hash, expires_at))
    return get_token(conn, tid)


def get_token(conn, token_id: str) -> Token | None:
    row = conn.execute(f"""SELECT {_TOKEN_COLS} FROM access_tokens t JOIN accounts a USING (account_id)
                           WHERE t.token_id = %s""", (token_id,)).fetchone()
    return Token(*row) if row else None


def list_tokens(conn, *, limit: int, after: str | None = None, account_id: str | None = None,
                project_id: str | None = None) -> list[Token]:
    rows = conn.execute(f"""SELECT {_TOKEN_COLS} FROM access_tokens t JOIN accounts a USING (account_id)
                            WHERE (%(after)s::uuid IS NULL OR t.token_id > %(after)s::uuid)
                              AND (%(acc)s::uuid IS NULL OR t.account_id = %(acc)s::uuid)
                              AND (%(p)s::uuid IS NULL OR t.project_id = %(p)s::uuid)
                            ORDER BY t.token_id LIMIT %(limit)s""",
                        {"after": after, "acc": account_id, "p": project_id, "limit": limit}).fetchall()
    return [Token(*r) for r in rows]


def revoke_token(conn, token_id: str) -> bool:
    """Revoke (now) and drop the token's sessions; False when it was already revoked."""
    cur = conn.execute("UPDATE access_tokens SET revoked_at = statement_timestamp() "
                       "WHERE token_id = %s AND revoked_at IS NULL", (token_id,))
    conn.execute("DELETE FROM access_sessions WHERE token_id = %s", (token_id,))
    return cur.rowcount == 1


def prune(conn, older_than: dt.timedelta) -> tuple[int, int]:
    """Delete expired sessions, and tokens revoked or expired more than `older_than` ago (their sessions
    go with them). (sessions, tokens) deleted."""
    sessions = conn.execute(PRUNE_SESSIONS_SQL).rowcount
    tokens = conn.execute("""DELETE FROM access_tokens
                             WHERE revoked_at < statement_timestamp() - %(d)s OR expires_at < statement_timestamp() - %(d)s""",
                          {"d": older_than}).rowcount
    return sessions, tokens


def decide_token(conn, token: str, project_id: str) -> tuple | None:
    """The token decision for a sync caller (tests, CLI checks): the row or None."""
    return conn.execute(TOKEN_DECISION_SQL, (hash_secret(token), project_id)).fetchone()


def decide_session(conn, session: str, project_id: str) -> tuple | None:
    return conn.execute(SESSION_DECISION_SQL, (hash_secret(session), project_id)).fetchone()
