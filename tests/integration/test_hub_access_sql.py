"""The hub's access-control state against a real PostgreSQL: the decision queries' validity cases, the
NOTIFY payloads of every change, the migration on a hub that already has data, and hosts kept out."""

from __future__ import annotations

import datetime as dt
import hashlib
import select
import uuid

import psycopg
import pytest

from cocalc_ctl.authnames import ACCESS_CHANNEL, SESSION_PREFIX, TOKEN_PREFIX
from cocalc_ctl.state import hub_access as ha
from cocalc_ctl.state import hub_db
from tests.support.postgres import sql

pytestmark = pytest.mark.integration


@pytest.fixture
def hub(hub_dsn):
    hub_db.migrate(hub_dsn)
    with psycopg.connect(hub_dsn, autocommit=True) as conn:
        yield conn


def _project(conn) -> str:
    pid = str(uuid.uuid4())
    conn.execute("INSERT INTO projects (project_id) VALUES (%s)", (pid,))
    return pid


def _token(conn, account_id: str, *, project_id=None, expires_at=None) -> tuple[str, str]:
    token = ha.new_token()
    t = ha.insert_token(conn, account_id, ha.hash_secret(token), project_id=project_id, name="t",
                        expires_at=expires_at)
    return token, t.token_id


def _session(conn, token_id: str, account_id: str, project_id: str, expires_at) -> str:
    s = ha.new_session()
    conn.execute(ha.CREATE_SESSION_SQL, (ha.hash_secret(s), token_id, account_id, project_id, expires_at))
    return s


def test_secrets_are_256_bit_prefixed_base64url_and_only_their_hash_is_kept():
    tokens = {ha.new_token() for _ in range(200)}
    assert len(tokens) == 200
    for t in tokens:
        assert t.startswith(TOKEN_PREFIX) and len(t) == len(TOKEN_PREFIX) + 43 and "=" not in t
        assert ha.is_token(t) and not ha.is_session(t)
    s = ha.new_session()
    assert s.startswith(SESSION_PREFIX) and ha.is_session(s) and not ha.is_token(s)
    t = next(iter(tokens))
    assert ha.hash_secret(t) == hashlib.sha256(t.encode()).digest() and len(ha.hash_secret(t)) == 32
    for bad in ("", TOKEN_PREFIX, t[:-1], t + "A", t[:-1] + "=", t[:-1] + "é", t.replace(TOKEN_PREFIX, "CCT_"), None, 5):
        assert not ha.is_token(bad)


def test_token_decision_holds_only_while_every_condition_holds(hub):
    conn = hub
    p, other = _project(conn), _project(conn)
    alice = ha.insert_account(conn, "alice")
    token, tid = _token(conn, alice.account_id)
    # authenticated, no grant: a row with role NULL (-> 403)
    assert ha.decide_token(conn, token, p) == (uuid.UUID(alice.account_id), uuid.UUID(tid), None, None)
    ha.upsert_grant(conn, p, alice.account_id, "viewer")
    assert ha.decide_token(conn, token, p)[2] == "viewer"
    assert ha.decide_token(conn, token, other)[2] is None  # a grant is per project
    assert ha.upsert_grant(conn, p, alice.account_id, "owner") == ("updated", "viewer")
    assert ha.decide_token(conn, token, p)[2] == "owner"
    # unknown token, a token of the wrong shape, the hash of a near miss: no row
    assert ha.decide_token(conn, ha.new_token(), p) is None
    assert ha.decide_token(conn, token[:-1] + ("A" if token[-1] != "A" else "B"), p) is None
    assert conn.execute(ha.TOKEN_DECISION_SQL, (ha.hash_secret(token)[:31], p)).fetchone() is None
    # project scope: its project only
    scoped, _ = _token(conn, alice.account_id, project_id=p)
    assert ha.decide_token(conn, scoped, p)[2] == "owner"
    assert ha.decide_token(conn, scoped, other) is None
    # expiry: in the future -> reported; in the past -> gone
    soon = dt.datetime.now(dt.timezone.utc) + dt.timedelta(hours=1)
    timed, _ = _token(conn, alice.account_id, expires_at=soon)
    assert ha.decide_token(conn, timed, p)[3] == soon
    expired, _ = _token(conn, alice.account_id, expires_at=dt.datetime.now(dt.timezone.utc) - dt.timedelta(seconds=1))
    assert ha.decide_token(conn, expired, p) is None
    # revoked
    assert ha.revoke_token(conn, tid) is True and ha.revoke_token(conn, tid) is False
    assert ha.decide_token(conn, token, p) is None
    # a disabled account: none of its tokens; re-enabled: back
    assert ha.decide_token(conn, scoped, p) is not None
    ha.set_disabled(conn, alice.account_id, True)
    assert ha.decide_token(conn, scoped, p) is None and ha.decide_token(conn, timed, p) is None
    ha.set_disabled(conn, alice.account_id, False)
    assert ha.decide_token(conn, scoped, p)[2] == "owner"
    # the grant goes: authenticated without access; the project goes: nothing scoped to it is left
    assert ha.delete_grant(conn, p, alice.account_id) == "owner"
    assert ha.decide_token(conn, scoped, p)[2] is None
    conn.execute("DELETE FROM projects WHERE project_id = %s", (p,))
    assert ha.decide_token(conn, scoped, p) is None
    # the account goes: nothing
    conn.execute("DELETE FROM accounts WHERE account_id = %s", (alice.account_id,))
    assert ha.decide_token(conn, timed, other) is None


def test_session_decision_is_bound_to_its_project_token_and_expiry(hub):
    conn = hub
    p, other = _project(conn), _project(conn)
    bob = ha.insert_account(conn, "bob")
    ha.upsert_grant(conn, p, bob.account_id, "collaborator")
    ha.upsert_grant(conn, other, bob.account_id, "collaborator")
    tok_exp = dt.datetime.now(dt.timezone.utc) + dt.timedelta(days=2)
    _tok, tid = _token(conn, bob.account_id, expires_at=tok_exp)
    later = dt.datetime.now(dt.timezone.utc) + dt.timedelta(hours=12)
    s = _session(conn, tid, bob.account_id, p, later)
    assert ha.decide_session(conn, s, p) == (uuid.UUID(bob.account_id), uuid.UUID(tid), "collaborator", later)
    assert ha.decide_session(conn, s, other) is None  # a session holds for its own project only
    assert ha.decide_session(conn, ha.new_session(), p) is None
    # the earliest expiry applies: a session outliving its token ends with the token
    long_s = _session(conn, tid, bob.account_id, p, tok_exp + dt.timedelta(days=30))
    assert ha.decide_session(conn, long_s, p)[3] == tok_exp
    # an expired session
    old = _session(conn, tid, bob.account_id, p, dt.datetime.now(dt.timezone.utc) - dt.timedelta(seconds=1))
    assert ha.decide_session(conn, old, p) is None
    assert conn.execute(ha.PRUNE_SESSIONS_SQL).rowcount == 1
    # a session row naming another account than its token's: refused
    eve = ha.insert_account(conn, "eve")
    forged = _session(conn, tid, eve.account_id, p, later)
    assert ha.decide_session(conn, forged, p) is None
    # disabled account, then revoked token: the sessions die with them
    ha.set_disabled(conn, bob.account_id, True)
    assert ha.decide_session(conn, s, p) is None
    ha.set_disabled(conn, bob.account_id, False)
    assert ha.decide_session(conn, s, p) is not None
    ha.revoke_token(conn, tid)
    assert ha.decide_session(conn, s, p) is None
    assert conn.execute("SELECT count(*) FROM access_sessions WHERE token_id = %s", (tid,)).fetchone()[0] == 0
    # a session scoped through a project-scoped token: only that project
    _ptok, ptid = _token(conn, bob.account_id, project_id=p)
    ps = _session(conn, ptid, bob.account_id, other, later)  # made for the wrong project (a forged row)
    assert ha.decide_session(conn, ps, other) is None


def test_touch_writes_last_used_at_at_most_once_a_minute(hub):
    conn = hub
    acc = ha.insert_account(conn, "carol")
    _t, tid = _token(conn, acc.account_id)
    assert conn.execute(ha.TOUCH_TOKEN_SQL, (tid,)).rowcount == 1
    assert conn.execute(ha.TOUCH_TOKEN_SQL, (tid,)).rowcount == 0  # within the minute: no write
    conn.execute("UPDATE access_tokens SET last_used_at = now() - interval '61 seconds' WHERE token_id = %s", (tid,))
    assert conn.execute(ha.TOUCH_TOKEN_SQL, (tid,)).rowcount == 1
    assert ha.get_token(conn, tid).last_used_at > dt.datetime.now(dt.timezone.utc) - dt.timedelta(seconds=30)


def _drain(listener, timeout: float = 2.0) -> list[str]:
    """Every payload on the channel until `timeout` passes without one."""
    got = []
    while True:
        r, _, _ = select.select([listener.fileno()], [], [], timeout)
        if not r:
            return got
        listener.pgconn.consume_input()
        while (n := listener.pgconn.notifies()) is not None:
            assert n.relname.decode() == ACCESS_CHANNEL
            got.append(n.extra.decode())
        timeout = 0.3


def test_every_change_that_matters_notifies_its_payload_and_touching_does_not(hub, hub_dsn):
    conn = hub
    p = _project(conn)
    with psycopg.connect(hub_dsn, autocommit=True) as listener:
        listener.execute(f"LISTEN {ACCESS_CHANNEL}")
        acc = ha.insert_account(conn, "dave")
        a = acc.account_id
        assert _drain(listener) == [f"account:{a}"]
        ha.set_disabled(conn, a, True)
        ha.set_disabled(conn, a, True)  # already disabled: no write, no payload
        ha.set_disabled(conn, a, False)
        assert _drain(listener) == [f"account:{a}", f"account:{a}"]
        conn.execute("UPDATE accounts SET created = created WHERE account_id = %s", (a,))  # nothing a decision reads
        assert _drain(listener, 0.5) == []
        ha.upsert_grant(conn, p, a, "viewer")
        ha.upsert_grant(conn, p, a, "viewer")  # unchanged: nothing
        ha.upsert_grant(conn, p, a, "owner")
        ha.delete_grant(conn, p, a)
        assert _drain(listener) == [f"grant:{p}:{a}"] * 3
        token, tid = _token(conn, a)
        assert _drain(listener, 0.5) == []  # a new token changes no decision
        conn.execute(ha.TOUCH_TOKEN_SQL, (tid,))
        assert _drain(listener, 0.5) == []  # last_used_at must not flush caches
        s = _session(conn, tid, a, p, dt.datetime.now(dt.timezone.utc) + dt.timedelta(hours=1))
        assert _drain(listener, 0.5) == []
        conn.execute("DELETE FROM access_sessions WHERE session_hash = %s", (ha.hash_secret(s),))
        assert _drain(listener) == [f"token:{tid}"]
        ha.revoke_token(conn, tid)
        assert _drain(listener) == [f"token:{tid}"]
        # a project's removal cascades to its grants, an account's to its grants and tokens: each notifies
        ha.upsert_grant(conn, p, a, "collaborator")
        _t2, tid2 = _token(conn, a)
        _drain(listener)
        conn.execute("DELETE FROM projects WHERE project_id = %s", (p,))
        assert f"grant:{p}:{a}" in _drain(listener)
        conn.execute("DELETE FROM accounts WHERE account_id = %s", (a,))
        got = _drain(listener)
        assert f"account:{a}" in got and f"token:{tid2}" in got and f"token:{tid}" in got
        # a TRUNCATE says "forget everything"
        conn.execute("TRUNCATE access_sessions")
        assert _drain(listener) == ["all"]


def test_migration_keeps_an_existing_hub_accounts_table_and_its_rows(hub_dsn):
    # a CoCalc hub: its own accounts table (other columns, rows, a timestamp `created`) and projects
    old_id, pid = str(uuid.uuid4()), str(uuid.uuid4())
    sql(hub_dsn, """CREATE TABLE accounts (account_id uuid PRIMARY KEY, email_address varchar(254),
                                           created timestamp, last_active timestamp)""")
    sql(hub_dsn, "INSERT INTO accounts VALUES (%s, 'x@example.org', '2020-01-01', now())", (old_id,))
    sql(hub_dsn, "CREATE TABLE projects (project_id uuid PRIMARY KEY, title text)")
    sql(hub_dsn, "INSERT INTO projects VALUES (%s, 'kept')", (pid,))
    result = hub_db.migrate(hub_dsn)
    assert result.version == len(hub_db.MIGRATIONS)
    assert sql(hub_dsn, "SELECT email_address, created::text, name, disabled_at FROM accounts") == [
        ("x@example.org", "2020-01-01 00:00:00", None, None)]
    # the hub's account gets a grant and a token like any other
    with psycopg.connect(hub_dsn, autocommit=True) as conn:
        ha.upsert_grant(conn, pid, old_id, "owner")
        token, _ = _token(conn, old_id)
        assert ha.decide_token(conn, token, pid)[2] == "owner"
        # the hub's own frequent writes (last_active) do not reach the access channel
        conn.execute(f"LISTEN {ACCESS_CHANNEL}")
        conn.execute("UPDATE accounts SET last_active = now()")
        conn.execute("SELECT 1")
        assert list(conn.notifies(timeout=0.5, stop_after=1)) == []
    # every statement of the migration again (a half-applied or repeated run): no error, data kept
    with psycopg.connect(hub_dsn, autocommit=True) as conn:
        statements = next(st for name, st in hub_db.MIGRATIONS if name.startswith("access control"))
        for s in statements:
            conn.execute(s)
    assert sql(hub_dsn, "SELECT count(*) FROM project_grants")[0][0] == 1
    assert hub_db.migrate(hub_dsn).applied == []


def test_a_host_login_can_read_or_write_no_identity_grant_token_or_session(hub, hub_dsn, postgres):
    conn = hub
    p = _project(conn)
    acc = ha.insert_account(conn, "frank")
    ha.upsert_grant(conn, p, acc.account_id, "owner")
    _t, tid = _token(conn, acc.account_id)
    _session(conn, tid, acc.account_id, p, dt.datetime.now(dt.timezone.utc) + dt.timedelta(hours=1))
    hid = str(uuid.uuid4())
    role = hub_db.host_role_name(hid)
    conn.execute(f'CREATE ROLE "{role}" LOGIN IN ROLE {hub_db.HOST_GROUP}')
    try:
        host_dsn = hub_dsn.replace("user=postgres", f"user={role}")
        with psycopg.connect(host_dsn, autocommit=True) as h:
            assert h.execute("SELECT count(*) FROM projects").fetchone()[0] == 1  # it is a working host login
            for table in hub_db.ACCESS_TABLES:
                for stmt in (f"SELECT * FROM {table}", f"DELETE FROM {table}", f"UPDATE {table} SET created = now()"):
                    with pytest.raises(psycopg.errors.InsufficientPrivilege):
                        h.execute(stmt)
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                h.execute(ha.TOKEN_DECISION_SQL, (b"x" * 32, p))
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                h.execute("INSERT INTO project_grants (project_id, account_id, role) VALUES (%s, %s, 'owner')",
                          (p, acc.account_id))
        # a mistaken grant later (to PUBLIC, or to the hosts' group) still shows a host no row
        for table in hub_db.ACCESS_TABLES:
            conn.execute(f"GRANT SELECT, UPDATE, DELETE ON {table} TO PUBLIC")
        conn.execute(f"GRANT SELECT ON access_tokens TO {hub_db.HOST_GROUP}")
        with psycopg.connect(host_dsn, autocommit=True) as h:
            for table in hub_db.ACCESS_TABLES:
                assert h.execute(f"SELECT count(*) FROM {table}").fetchone()[0] == 0
                assert h.execute(f"DELETE FROM {table}").rowcount == 0
        assert conn.execute("SELECT count(*) FROM access_tokens").fetchone()[0] == 1
        # and an ordinary (non-host) role granted the same keeps working: the policy singles out hosts
        conn.execute("CREATE ROLE cocalc_ctl_test_reader LOGIN")
        try:
            with psycopg.connect(hub_dsn.replace("user=postgres", "user=cocalc_ctl_test_reader")) as r:
                assert r.execute("SELECT count(*) FROM access_tokens").fetchone()[0] == 1
        finally:
            conn.execute("DROP OWNED BY cocalc_ctl_test_reader")
            conn.execute("DROP ROLE cocalc_ctl_test_reader")
    finally:
        conn.execute(f'DROP OWNED BY "{role}"')
        conn.execute(f'DROP ROLE "{role}"')
