"""Least-privilege hub access for hosts, enforced by PostgreSQL: `hub host-role`, the "least privilege:
host role" migration (group role, column grants, row-level security), and the host-side flows under it."""

from __future__ import annotations

import json
import stat
import uuid

import psycopg
import pytest

from cocalc_ctl.state import hub_db
from tests.support.keys import KeyHost

pytestmark = pytest.mark.integration


@pytest.fixture
def fleet(tmp_path, hub_dsn):
    """The hub (full rights, the tables' owner) and hosts A and B, each on its own host role."""
    hub = KeyHost(tmp_path / "hub", extra={"hub_dsn": hub_dsn})
    hub.cli("hub", "migrate")
    hosts = []
    for name, server in (("a", "127.0.0.2:2222"), ("b", "127.0.0.3:22")):
        h = KeyHost(tmp_path / name, extra={"ssh_server": server})
        r = hub.json("hub", "host-role", h.host_id, "--no-password")
        assert r["action"] == "created" and r["role"] == hub_db.host_role_name(h.host_id)
        h.write_config(hub_dsn=r["dsn"])
        h.cli("keys", "ensure")
        hosts.append(h)
    yield hub, *hosts
    with psycopg.connect(hub_dsn, autocommit=True) as conn:  # roles are cluster-wide: leave none behind
        for h in hosts:
            conn.execute(f'DROP ROLE IF EXISTS "{hub_db.host_role_name(h.host_id)}"')


def snapshot(dsn: str) -> dict:
    with psycopg.connect(dsn) as conn:
        return {t: conn.execute(f"SELECT to_jsonb(x) FROM {t} x ORDER BY 1::text").fetchall()
                for t in ("project_hosts", "projects", "project_moves", "hub_keys")}


def as_role(h: KeyHost):
    return psycopg.connect(h.extra["hub_dsn"], autocommit=True)


def test_host_role_creates_updates_and_drops_a_login_without_printing_its_password(tmp_path, hub_dsn):
    hub = KeyHost(tmp_path / "hub", extra={"hub_dsn": hub_dsn})
    res = hub.cli("hub", "host-role", str(uuid.uuid4()), "--no-password", check=False)
    assert res.returncode == 5 and "hub migrate" in res.stderr  # no group role yet
    hub.cli("hub", "migrate")
    hid = str(uuid.uuid4())
    secret_dir = tmp_path / "secret"
    secret_dir.mkdir(mode=0o700)
    pw = secret_dir / "hub.pgpass"
    res = hub.cli("--json", "hub", "host-role", hid, "--password-file", str(pw))
    r = json.loads(res.stdout)
    role = hub_db.host_role_name(hid)
    try:
        assert (r["action"], r["role"], r["password_file"]) == ("created", role, str(pw))
        assert stat.S_IMODE(pw.stat().st_mode) == 0o600
        line = pw.read_text()
        prefix, password = line.rstrip("\n").rsplit(":", 1)
        assert prefix == f"*:*:*:{role}" and len(password) >= 40
        assert password not in res.stdout + res.stderr
        assert f"user={role}" in r["dsn"] and "password" not in r["dsn"].replace("passfile", "")
        with psycopg.connect(hub_dsn) as conn:
            verifier, login, member = conn.execute(
                "SELECT rolpassword, rolcanlogin, pg_has_role(rolname, %s, 'MEMBER') FROM pg_authid "
                "WHERE rolname = %s", (hub_db.HOST_GROUP, role)).fetchone()
        assert verifier.startswith("SCRAM-SHA-256$") and password not in verifier and login and member
        # again: the same role, a new password (the old file is replaced)
        r2 = hub.json("hub", "host-role", hid, "--password-file", str(pw))
        assert r2["action"] == "updated" and pw.read_text() != line
        assert not [p for p in secret_dir.iterdir() if p.name != "hub.pgpass"]  # no temporary file left
        # bad input: one line, documented codes
        res = hub.cli("hub", "host-role", hid, check=False)
        assert res.returncode == 2 and "--password-file" in res.stderr and len(res.stderr.splitlines()) == 1
        res = hub.cli("hub", "host-role", "no-such-host", "--no-password", check=False)
        assert res.returncode == 3 and "not registered" in res.stderr
        res = hub.cli("hub", "host-role", hid, "--no-password", "--password-file", str(pw), check=False)
        assert res.returncode == 2
        (tmp_path / "open").mkdir(mode=0o755)
        (tmp_path / "open").chmod(0o755)
        res = hub.cli("hub", "host-role", hid, "--password-file", str(tmp_path / "open" / "pw"), check=False)
        assert res.returncode == 2 and "0700" in res.stderr and not (tmp_path / "open" / "pw").exists()
        assert hub.json("hub", "host-role", hid, "--drop")["action"] == "dropped"
        assert hub.json("hub", "host-role", hid, "--drop")["action"] == "absent"
        with psycopg.connect(hub_dsn) as conn:
            assert conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (role,)).fetchone() is None
    finally:
        with psycopg.connect(hub_dsn, autocommit=True) as conn:
            conn.execute(f'DROP ROLE IF EXISTS "{role}"')


def test_legitimate_host_flows_pass_under_the_host_role(fleet):
    from cocalc_ctl import config as config_mod
    from cocalc_ctl.actions.backup import jobs as backups
    from cocalc_ctl.actions.project import quota, rootfs

    hub, a, b = fleet
    first = a.json("keys", "register")  # first insert, as A's role
    assert first["trusted"] is False
    b.json("keys", "register")
    a.write_config(ssh_server="127.0.0.2:2200")
    assert a.json("keys", "register")["ssh_server"] == "127.0.0.2:2200"  # later update (the upsert path)
    # the hub admin: trust both, publish the hub key, place a project on each host; `hub host-role` by name
    assert hub.json("hub", "host-role", "a", "--no-password")["action"] == "updated"
    for h in (a, b):
        hub.cli("keys", "trust", h.host_id)
    made = hub.json("hub", "keys", "ensure")
    pa, pb = str(uuid.uuid4()), str(uuid.uuid4())
    hub.cli("hub", "project", "add", pa, "--host", a.host_id, "--image", "ubuntu:25.10", "--memory", "2G")
    hub.cli("hub", "project", "add", pb, "--host", b.host_id)
    r = a.json("keys", "sync")
    assert r["self_trusted"] and r["peers"] == [b.host_id] and r["hub_keys"] == [made["fingerprint"]]
    watched = a.cli("--json", "keys", "watch", "--seconds", "2")  # LISTEN cocalc_ctl_keys and sync, as A's role
    events = [json.loads(line) for line in watched.stdout.splitlines() if line.strip()]
    assert events and events[0]["event"] == "sync" and events[0]["peers"] == [b.host_id]
    assert "hub connection lost" not in watched.stderr
    cfg = config_mod.load(str(a.config_path))
    assert rootfs.hub_image(cfg, pa) == "docker.io/library/ubuntu:25.10"
    assert quota.hub_quota(cfg, pa).memory == 2 * 1024**3
    backups._report_to_hub(cfg, pa)  # its own project: set
    backups._report_to_hub(cfg, pb)  # B's project: PostgreSQL skips it (RLS), the backup stands
    with psycopg.connect(hub.extra["hub_dsn"]) as conn:
        got = dict(conn.execute("SELECT project_id::text, last_backup IS NOT NULL FROM projects").fetchall())
    assert got == {pa: True, pb: False}
    # doctor's hub checks read the schema version and the host's own row as the host role
    checks = {c["name"]: c for c in json.loads(a.cli("--json", "doctor", check=False).stdout)["checks"]}
    assert checks["hub"]["status"] == "ok" and checks["keys-registered"]["status"] == "ok"


def test_a_host_role_cannot_touch_the_hub_keys_moves_or_another_host(fleet, tmp_path):
    hub, a, b = fleet
    a.json("keys", "register")
    b.json("keys", "register")
    hub.cli("keys", "trust", b.host_id)
    hub.cli("hub", "keys", "ensure")
    pb = str(uuid.uuid4())
    hub.cli("hub", "project", "add", pb, "--host", b.host_id)
    with psycopg.connect(hub.extra["hub_dsn"], autocommit=True) as conn:
        conn.execute("INSERT INTO project_moves(project_id, source_host_id, dest_host_id) VALUES (%s, %s, %s)",
                     (pb, b.host_id, b.host_id))
    before = snapshot(hub.extra["hub_dsn"])
    evil_key = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIMk0bJ4yTj0jzGgqRlqOHh8Qk3Ee9Ukx6Yvt0o0o0o0o evil"
    denied = [
        ("INSERT INTO hub_keys(hub_id, public_keys) VALUES (%s, %s)", (str(uuid.uuid4()), evil_key)),
        ("UPDATE hub_keys SET public_keys = %s", (evil_key,)),
        ("DELETE FROM hub_keys", None),
        ("UPDATE project_hosts SET trusted = true WHERE id = %s", (a.host_id,)),
        ("INSERT INTO project_hosts(id, name, trusted) VALUES (%s, 'x', true)", (str(uuid.uuid4()),)),
        ("INSERT INTO project_hosts(id, name) VALUES (%s, 'x')", (str(uuid.uuid4()),)),  # not its own id
        ("""INSERT INTO project_hosts(id, name, ssh_server) VALUES (%s, 'b', '127.0.0.2:2222')
            ON CONFLICT (id) DO UPDATE SET ssh_server = EXCLUDED.ssh_server""", (b.host_id,)),
        ("UPDATE project_hosts SET id = %s WHERE id = %s", (str(uuid.uuid4()), a.host_id)),
        ("DELETE FROM project_hosts WHERE id = %s", (b.host_id,)),
        ("INSERT INTO project_moves(project_id, source_host_id, dest_host_id) VALUES (%s, %s, %s)",
         (str(uuid.uuid4()), b.host_id, a.host_id)),
        ("UPDATE project_moves SET dest_host_id = %s", (a.host_id,)),
        ("DELETE FROM project_moves", None),
        ("UPDATE projects SET host_id = %s WHERE project_id = %s", (a.host_id, pb)),
        ("UPDATE projects SET rootfs_image = 'evil/img' WHERE project_id = %s", (pb,)),
        ("INSERT INTO projects(project_id, host_id) VALUES (%s, %s)", (str(uuid.uuid4()), a.host_id)),
        ("DELETE FROM projects", None),
        ("CREATE TABLE hub_keys2 (x int)", None),
    ]
    with as_role(a) as conn:
        for stmt, params in denied:
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                conn.execute(stmt, params)
        # RLS hides B's row from A's UPDATE: PostgreSQL changes nothing
        for stmt, params, rows in [
            ("UPDATE project_hosts SET ssh_server = '127.0.0.2:2222', host_to_host_public_key = %s WHERE id = %s",
             (evil_key, b.host_id), 0),
            ("UPDATE project_hosts SET status = 'deleted', name = 'x'", None, 1),  # all rows: only its own
            ("UPDATE projects SET last_backup = now() WHERE project_id = %s", (pb,), 0),
        ]:
            assert conn.execute(stmt, params).rowcount == rows
        # the group role itself (a member may SET ROLE to it) has no host id: no row is its own
        conn.execute(f"SET ROLE {hub_db.HOST_GROUP}")
        assert conn.execute("UPDATE project_hosts SET ssh_server = 'x:1'").rowcount == 0
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute("INSERT INTO project_hosts(id) VALUES (%s)", (str(uuid.uuid4()),))
    after = snapshot(hub.extra["hub_dsn"])
    # only A's own row may have changed (the "status = deleted, name" update above hit A's row alone)
    mine = lambda rows: [r for r in rows if r[0]["id"] != a.host_id]  # noqa: E731
    assert mine(after["project_hosts"]) == mine(before["project_hosts"])
    assert {k: v for k, v in after.items() if k != "project_hosts"} == \
           {k: v for k, v in before.items() if k != "project_hosts"}
    # `keys register` with B's id in A's config (A's login): refused, B's row untouched
    evil = KeyHost(tmp_path / "evil", host_id=b.host_id,
                   extra={"hub_dsn": a.extra["hub_dsn"], "ssh_server": "127.0.0.2:2222"})
    evil.cli("keys", "ensure")
    res = evil.cli("keys", "register", check=False)
    assert res.returncode == 5 and "row-level security" in res.stderr and len(res.stderr.splitlines()) == 1
    assert "Traceback" not in res.stderr
    assert mine(snapshot(hub.extra["hub_dsn"])["project_hosts"]) == mine(before["project_hosts"])


def test_migration_is_idempotent_on_a_hub_with_data_and_other_roles_keep_their_rights(fleet):
    hub, a, b = fleet
    a.json("keys", "register")
    b.json("keys", "register")
    dsn = hub.extra["hub_dsn"]
    pid = str(uuid.uuid4())
    hub.cli("hub", "project", "add", pid, "--host", a.host_id)
    before = snapshot(dsn)
    assert hub.json("hub", "migrate")["applied"] == []
    with psycopg.connect(dsn) as conn:  # the migration's statements themselves run again cleanly
        for stmt in hub_db.HOST_ROLE_SQL:
            conn.execute(stmt)
        assert conn.execute("SELECT max(version) FROM cocalc_ctl_schema_migrations").fetchone()[0] == \
            len(hub_db.MIGRATIONS)
    assert snapshot(dsn) == before
    assert a.json("keys", "register")["host_id"] == a.host_id  # still works after the re-run
    # a role that is not a host (e.g. the CoCalc hub's application role) is not limited by the policies
    app_role = "cocalc_ctl_test_app_" + uuid.uuid4().hex[:8]
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(f"CREATE ROLE {app_role} LOGIN")
        conn.execute(f"GRANT ALL ON projects, project_hosts TO {app_role}")
    try:
        app_dsn = psycopg.conninfo.make_conninfo(dsn, user=app_role)
        with psycopg.connect(app_dsn, autocommit=True) as conn:
            assert conn.execute("UPDATE project_hosts SET trusted = true").rowcount == 2
            assert conn.execute("UPDATE projects SET rootfs_image = 'x'").rowcount == 1
    finally:
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute(f"REVOKE ALL ON projects, project_hosts FROM {app_role}")
            conn.execute(f"DROP ROLE {app_role}")
