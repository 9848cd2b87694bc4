"""`hub account`, `hub project grant|revoke|users` and `hub token` against a real PostgreSQL: round trips in
human and --json form, the token shown once and stored only as its hash, paging, and bad input as one
line with its documented exit code."""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import uuid

import psycopg
import pytest

from cocalc_ctl.state import hub_access as ha
from tests.support.keys import KeyHost
from tests.support.postgres import sql

pytestmark = pytest.mark.integration


@pytest.fixture
def admin(tmp_path, hub_dsn):
    a = KeyHost(tmp_path / "admin", extra={"hub_dsn": hub_dsn})
    a.cli("hub", "migrate")
    return a


def _project(dsn: str) -> str:
    pid = str(uuid.uuid4())
    sql(dsn, "INSERT INTO projects (project_id) VALUES (%s)", (pid,))
    return pid


def _err(res, code: int, *words: str) -> None:
    assert res.returncode == code, (res.returncode, res.stdout, res.stderr)
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("cocalc-ctl: error: "), res.stderr
    assert "Traceback" not in res.stderr
    for w in words:
        assert w in lines[0], lines[0]


def _decide(dsn: str, token: str, pid: str):
    with psycopg.connect(dsn) as conn:
        return ha.decide_token(conn, token, pid)


def test_account_grant_token_round_trip_and_the_token_is_shown_once(admin, hub_dsn):
    p = _project(hub_dsn)
    res = admin.cli("hub", "account", "add", "alice")
    assert res.stdout.startswith("created account alice (")
    alice = admin.json("hub", "account", "add", "alice")  # again: unchanged, same id
    assert alice["action"] == "unchanged" and alice["account"]["name"] == "alice"
    aid = alice["account"]["account_id"]
    assert admin.json("hub", "account", "add", "alice", "--id", aid)["action"] == "unchanged"
    _err(admin.cli("hub", "account", "add", "alice", "--id", str(uuid.uuid4()), check=False), 2, "another id")
    _err(admin.cli("hub", "account", "add", "other", "--id", aid, check=False), 2, "exists as alice")
    own = str(uuid.uuid4())  # an id another system already knows the account by
    assert admin.json("hub", "account", "add", "carol", "--id", own)["account"]["account_id"] == own
    assert admin.cli("hub", "project", "grant", p, "alice", "--role", "viewer").stdout.strip() == \
        f"granted viewer on project {p} to account alice ({aid})"
    g = admin.json("hub", "project", "grant", p, aid, "--role", "collaborator")  # by uuid too
    assert (g["action"], g["role"], g["previous_role"]) == ("updated", "collaborator", "viewer")
    users = admin.json("hub", "project", "users", p)
    assert [(u["account_id"], u["name"], u["role"]) for u in users] == [(aid, "alice", "collaborator")]

    # human: the token on its own line, once; --json: in the document, once
    res = admin.cli("hub", "token", "create", "--account", "alice", "--project", p, "--expires", "12h", "--name", "ci")
    token = res.stdout.strip().splitlines()[-1]
    assert ha.is_token(token) and res.stdout.count(token) == 1 and token not in res.stderr
    assert f"on project {p}, expires 20" in res.stdout
    doc = json.loads(admin.cli("--json", "hub", "token", "create", "--account", "alice").stdout)
    token2 = doc["token"]
    assert ha.is_token(token2) and doc["project_id"] is None and doc["account"] == "alice"
    expires = dt.datetime.fromisoformat(doc["expires_at"].replace("Z", "+00:00"))
    assert dt.timedelta(days=29, hours=23) < expires - dt.datetime.now(dt.timezone.utc) <= dt.timedelta(days=30)
    # -q: the token alone (for TOKEN=$(...))
    quiet = admin.cli("-q", "hub", "token", "create", "--account", aid, "--expires", "never").stdout
    assert ha.is_token(quiet.strip()) and quiet.count("\n") == 1

    # the hub holds only hashes, and they decide
    stored = {bytes(r[0]) for r in sql(hub_dsn, "SELECT token_hash FROM access_tokens")}
    assert stored == {hashlib.sha256(t.encode()).digest() for t in (token, token2, quiet.strip())}
    dump = sql(hub_dsn, "SELECT to_jsonb(t)::text FROM access_tokens t")
    assert not any(t in str(dump) for t in (token, token2, quiet.strip()))
    assert _decide(hub_dsn, token, p)[2] == "collaborator"
    assert _decide(hub_dsn, token, _project(hub_dsn)) is None  # scoped

    # list: never a value or a hash; scope, expiry, name
    listed = admin.json("hub", "token", "list")
    assert len(listed) == 3
    assert set(listed[0]) == {"token_id", "account_id", "account", "project_id", "name", "created", "expires_at",
                              "revoked_at", "last_used_at"}
    for t in (token, token2, quiet.strip()):
        assert t not in json.dumps(listed)
    human = admin.cli("hub", "token", "list", "--account", "alice").stdout
    assert human.splitlines()[0].split() == ["TOKEN", "ACCOUNT", "PROJECT", "NAME", "CREATED", "EXPIRES", "REVOKED",
                                             "LAST_USED"]
    assert " ci " in human and "never" in human and " * " in human and token not in human
    assert [t["name"] for t in admin.json("hub", "token", "list", "--project", p)] == ["ci"]

    # revoke by id (or its 8-character prefix): refused at once; again: said so, exit 0
    tid = next(t["token_id"] for t in listed if t["name"] == "ci")
    res = admin.cli("hub", "token", "revoke", tid[:8])
    assert res.stdout.startswith(f"revoked token {tid} (ci) of account alice (")
    assert _decide(hub_dsn, token, p) is None
    again = admin.json("hub", "token", "revoke", tid)
    assert again["action"] == "already revoked" and again["token"]["revoked_at"]
    assert "token" not in again["token"] or again["token"].get("token") is None

    # disable: every token stops; enable: back
    assert _decide(hub_dsn, token2, p) is not None
    assert "disabled account alice" in admin.cli("hub", "account", "disable", "alice").stdout
    assert _decide(hub_dsn, token2, p) is None
    res = admin.cli("hub", "token", "create", "--account", "alice", check=False)
    _err(res, 5, "alice is disabled", "hub account enable")
    listed = {a["name"]: a for a in admin.json("hub", "account", "list")}
    assert listed["alice"]["disabled_at"] and listed["carol"]["disabled_at"] is None
    admin.cli("hub", "account", "enable", "alice")
    assert _decide(hub_dsn, token2, p)[2] == "collaborator"

    # revoke the grant: authenticated, no access; again: absent, exit 0
    r = admin.json("hub", "project", "revoke", p, "alice")
    assert (r["action"], r["previous_role"]) == ("revoked", "collaborator")
    assert _decide(hub_dsn, token2, p)[2] is None
    assert admin.json("hub", "project", "revoke", p, "alice")["action"] == "absent"
    assert admin.json("hub", "project", "users", p) == []


def test_dry_run_writes_nothing_and_prints_no_token(admin, hub_dsn):
    admin.cli("hub", "account", "add", "bob")
    for args in (["hub", "account", "add", "carol"], ["hub", "token", "create", "--account", "bob"],
                 ["hub", "account", "disable", "bob"]):
        res = admin.cli("--dry-run", *args)
        assert "cct_" not in res.stdout + res.stderr
    assert sql(hub_dsn, "SELECT name, disabled_at FROM accounts") == [("bob", None)]
    assert sql(hub_dsn, "SELECT count(*) FROM access_tokens") == [(0,)]


def test_a_token_for_an_account_without_a_grant_warns_that_it_will_be_refused(admin, hub_dsn):
    admin.cli("hub", "account", "add", "dave")
    res = admin.cli("hub", "token", "create", "--account", "dave")
    assert "warning: account dave has no grant on any project" in res.stderr
    assert ha.is_token(res.stdout.strip().splitlines()[-1])
    assert not any(ln.startswith("cct_") for ln in res.stderr.splitlines())


@pytest.mark.parametrize("args, code, words", [
    (["hub", "account", "add", "Alice"], 2, ["invalid account name"]),
    (["hub", "account", "add", "a" * 65], 2, ["invalid account name"]),
    (["hub", "account", "add", "al ice"], 2, ["invalid account name"]),
    (["hub", "account", "add", "al\x1bice"], 2, ["invalid account name", "\\x1b"]),
    (["hub", "account", "add", "alice;drop"], 2, ["invalid account name"]),
    (["hub", "account", "add", "ab4e28ba-2fa1-11d2-883f-0016d3cca427"], 2, ["is a uuid"]),
    (["hub", "account", "add", "x", "--id", "nope"], 2, ["invalid account id"]),
    (["hub", "account", "disable", "nobody"], 3, ["no account nobody"]),
    (["hub", "account", "disable", "NOBODY"], 2, ["invalid account"]),
    (["hub", "account", "list", "--after", "x"], 2, ["--after"]),
    (["hub", "account", "list", "--limit", "0"], 2, []),
    (["hub", "project", "grant", "not-a-uuid", "alice", "--role", "owner"], 2, ["invalid project id"]),
    (["hub", "project", "grant", "PROJECT", "alice", "--role", "admin"], 2, ["invalid role"]),
    (["hub", "project", "grant", "PROJECT", "nobody", "--role", "owner"], 3, ["no account nobody"]),
    (["hub", "project", "grant", str(uuid.uuid4()), "alice", "--role", "owner"], 3, ["not in the hub"]),
    (["hub", "project", "users", str(uuid.uuid4())], 3, ["not in the hub"]),
    (["hub", "token", "create", "--account", "alice", "--expires", "0d"], 2, ["out of range"]),
    (["hub", "token", "create", "--account", "alice", "--expires", "-5d"], 2, ["invalid duration"]),
    (["hub", "token", "create", "--account", "alice", "--expires", "3651d"], 2, ["out of range"]),
    (["hub", "token", "create", "--account", "alice", "--expires", "9999999999d"], 2, ["invalid duration"]),
    (["hub", "token", "create", "--account", "alice", "--expires", "30"], 2, ["invalid duration"]),
    (["hub", "token", "create", "--account", "alice", "--expires", "1.5d"], 2, ["invalid duration"]),
    (["hub", "token", "create", "--account", "alice", "--name", "x\ny"], 2, ["invalid token name"]),
    (["hub", "token", "create", "--account", "alice", "--name", "n" * 101], 2, ["invalid token name"]),
    (["hub", "token", "create", "--account", "alice", "--project", str(uuid.uuid4())], 3, ["not in the hub"]),
    (["hub", "token", "revoke", "cct_" + "A" * 43], 2, ["invalid token id"]),
    (["hub", "token", "revoke", "1234"], 2, ["invalid token id"]),
    (["hub", "token", "revoke", "%%%%%%%%"], 2, ["invalid token id"]),
    (["hub", "token", "revoke", str(uuid.uuid4())], 3, ["no token"]),
    (["hub", "token", "revoke", "abcdef01"], 3, ["no token"]),
    (["hub", "token", "list", "--account", "nobody"], 3, ["no account nobody"]),
])
def test_bad_input_is_one_line_with_its_exit_code(admin, hub_dsn, args, code, words):
    admin.cli("hub", "account", "add", "alice")
    p = _project(hub_dsn)
    res = admin.cli(*[p if a == "PROJECT" else a for a in args], check=False)
    if words:
        _err(res, code, *words)
    else:
        assert res.returncode == code and "Traceback" not in res.stderr


def test_a_typed_token_never_appears_in_an_error(admin):
    """A user who pastes a token where an id belongs sees an error that does not repeat it."""
    token = ha.new_token()
    secret = token[len("cct_"):]
    for args, code in ((["hub", "token", "revoke", token], 2), (["hub", "account", "disable", token], 2),
                       (["hub", "project", "users", token], 2), (["hub", "token", "list", "--after", token], 2),
                       (["hub", "token", "list", "--limit", token], 2),
                       (["hub", "token", "create", "--account", "x", "--expires", token], 2),
                       (["hub", "token", "create", "--account", "x", "--name", "a " + token], 2),
                       (["hub", "token", "create", "--account", "x", "--name", token], 2),
                       (["hub", "account", "add", "x", "--id", token], 2)):
        res = admin.cli(*args, check=False)
        assert res.returncode == code, (args, res.stderr)
        assert secret[:8] not in res.stderr + res.stdout, (args, res.stderr)
        verbose = admin.cli("-v", *args, check=False)  # -v prints a traceback: not the token either
        assert secret[:8] not in verbose.stderr + verbose.stdout, (args, verbose.stderr)
        assert "cct_…(redacted)" in res.stderr or "contains a token" in res.stderr, (args, res.stderr)


def test_pages_of_accounts_users_and_tokens_cover_everything_once(admin, hub_dsn):
    p = _project(hub_dsn)
    sql(hub_dsn, "INSERT INTO accounts (account_id, name) SELECT gen_random_uuid(), 'u' || i FROM generate_series(1, 23) i")
    sql(hub_dsn, "INSERT INTO project_grants (project_id, account_id, role) SELECT %s, account_id, 'viewer' FROM accounts",
        (p,))
    sql(hub_dsn, """INSERT INTO access_tokens (token_id, account_id, token_hash)
                    SELECT gen_random_uuid(), account_id, sha256(account_id::text::bytea) FROM accounts""")
    every = [r[0] for r in sql(hub_dsn, "SELECT account_id::text FROM accounts ORDER BY account_id")]
    tokens = [r[0] for r in sql(hub_dsn, "SELECT token_id::text FROM access_tokens ORDER BY token_id")]
    for args, want in ((["hub", "account", "list"], every), (["hub", "project", "users", p], every),
                       (["hub", "token", "list"], tokens)):
        seen, after, pages = [], None, 0
        while True:
            res = admin.cli(*args, "--limit", "10", *(["--after", after] if after else []))
            lines = res.stdout.splitlines()
            more = [ln for ln in lines if ln.startswith("… more: --after ")]
            seen += [ln.split()[0] for ln in lines[1:] if not ln.startswith("…")]
            pages += 1
            if not more:
                break
            assert lines[-1] == more[0]
            after = more[0].split()[-1]
        assert seen == want and pages == 3, args
        # --json: an array per page; the key on stderr
        res = admin.cli("--json", *args, "--limit", "20")
        assert len(json.loads(res.stdout)) == 20 and res.stderr.strip() == f"… more: --after {want[19]}"


def test_prune_deletes_expired_sessions_and_long_dead_tokens_only(admin, hub_dsn):
    p = _project(hub_dsn)
    admin.cli("hub", "account", "add", "erin")
    aid = admin.json("hub", "account", "list")[0]["account_id"]
    live = admin.json("hub", "token", "create", "--account", "erin", "--name", "live")["token_id"]
    dead = {}
    for name, cols in (("revoked-long-ago", "revoked_at = now() - interval '31 days'"),
                       ("revoked-recently", "revoked_at = now() - interval '1 day'"),
                       ("expired-long-ago", "expires_at = now() - interval '40 days'"),
                       ("expired-recently", "expires_at = now() - interval '2 days'")):
        dead[name] = admin.json("hub", "token", "create", "--account", "erin", "--name", name)["token_id"]
        sql(hub_dsn, f"UPDATE access_tokens SET {cols} WHERE token_id = %s", (dead[name],))
    with psycopg.connect(hub_dsn, autocommit=True) as conn:
        now = dt.datetime.now(dt.timezone.utc)
        for tid, expires in ((live, now + dt.timedelta(hours=1)), (live, now - dt.timedelta(minutes=1)),
                             (dead["revoked-recently"], now + dt.timedelta(hours=1))):
            conn.execute(ha.CREATE_SESSION_SQL, (ha.hash_secret(ha.new_session()), tid, aid, p, expires))
    res = admin.json("hub", "token", "prune")
    assert (res["sessions"], res["tokens"]) == (1, 2)
    left = {t["name"] for t in admin.json("hub", "token", "list")}
    assert left == {"live", "revoked-recently", "expired-recently"}
    assert sql(hub_dsn, "SELECT count(*) FROM access_sessions") == [(2,)]
    assert admin.json("hub", "token", "prune", "--older-than", "1h")["tokens"] == 2
    assert {t["name"] for t in admin.json("hub", "token", "list")} == {"live"}
    _err(admin.cli("hub", "token", "prune", "--older-than", "never", check=False), 2, "never")
    _err(admin.cli("hub", "token", "prune", "--older-than", "0m", check=False), 2, "out of range")
