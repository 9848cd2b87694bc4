"""Hub access-control state for proxy tests: accounts, grants and tokens written with plain SQL on the
tables of the hub's access-control migration (the CLI has its own tests)."""

from __future__ import annotations

import datetime as dt
import uuid

from tests.support.postgres import sql


def add_account(dsn: str, name: str) -> str:
    aid = str(uuid.uuid4())
    sql(dsn, "INSERT INTO accounts (account_id, name) VALUES (%s, %s)", (aid, name))
    return aid


def grant(dsn: str, project_id: str, account_id: str, role: str) -> None:
    sql(dsn, """INSERT INTO project_grants (project_id, account_id, role) VALUES (%s, %s, %s)
                ON CONFLICT (project_id, account_id) DO UPDATE SET role = EXCLUDED.role""",
        (project_id, account_id, role))


def revoke_grant(dsn: str, project_id: str, account_id: str) -> None:
    sql(dsn, "DELETE FROM project_grants WHERE project_id = %s AND account_id = %s", (project_id, account_id))


def add_token(dsn: str, account_id: str, *, project_id: str | None = None,
              expires_in: float | None = None) -> tuple[str, str]:
    """(token, token_id)."""
    from cocalc_ctl.state.hub_access import hash_secret, new_token

    token, tid = new_token(), str(uuid.uuid4())
    expires = None
    if expires_in is not None:
        expires = dt.datetime.now(dt.timezone.utc) + dt.timedelta(seconds=expires_in)
    sql(dsn, """INSERT INTO access_tokens (token_id, account_id, project_id, name, token_hash, expires_at)
                VALUES (%s, %s, %s, %s, %s, %s)""", (tid, account_id, project_id, "test", hash_secret(token), expires))
    return token, tid


def revoke_token(dsn: str, token_id: str) -> None:
    sql(dsn, "UPDATE access_tokens SET revoked_at = now() WHERE token_id = %s", (token_id,))
