"""The hub credential's per-host secrets through the key registry, with real PostgreSQL and real CLI runs:
`keys trust` makes one, `keys sync` (as the host's own least-privilege login) delivers only the host's
own, `keys proxy-secret --rotate/--finish` rotates with overlap while real hub and host proxies serve.
"""

from __future__ import annotations

import json
import stat
import uuid

import psycopg
import pytest

from cocalc_ctl.proxy import hubcred
from cocalc_ctl.state import hub_db
from tests.support.access import add_account, add_token, grant
from tests.support.keys import KeyHost
from tests.support.proxy import host_state, send_raw, start_backend, start_proxy, status_of

pytestmark = pytest.mark.integration


@pytest.fixture
def fleet(tmp_path, hub_dsn):
    """The hub admin and hosts A and B, each on its own host login, registered and trusted."""
    hub = KeyHost(tmp_path / "hub", extra={"hub_dsn": hub_dsn})
    hub.cli("hub", "migrate")
    hosts = []
    try:
        for name, server in (("a", "127.0.0.2:2222"), ("b", "127.0.0.3:22")):
            h = KeyHost(tmp_path / name, extra={"ssh_server": server})
            r = hub.json("hub", "host-role", h.host_id, "--no-password")
            h.write_config(hub_dsn=r["dsn"])
            hosts.append(h)
            h.cli("keys", "ensure")
            h.cli("keys", "register")
            hub.cli("keys", "trust", h.host_id)
        yield hub, *hosts
    finally:
        with psycopg.connect(hub_dsn, autocommit=True) as conn:
            for h in hosts:
                conn.execute(f'DROP ROLE IF EXISTS "{hub_db.host_role_name(h.host_id)}"')


def secrets_in_hub(dsn: str, host_id: str) -> list[tuple[str, bytes]]:
    with psycopg.connect(dsn) as conn:
        return [(k, bytes(s)) for k, s in conn.execute(
            "SELECT key_id, secret FROM host_proxy_secrets WHERE host_id=%s ORDER BY created_at", (host_id,))]


def test_trust_makes_a_secret_and_sync_delivers_only_the_hosts_own(fleet, hub_dsn):
    import base64

    hub, a, b = fleet
    own = secrets_in_hub(hub_dsn, a.host_id)
    assert len(own) == 1 and len(secrets_in_hub(hub_dsn, b.host_id)) == 1
    res = a.cli("--json", "keys", "sync")
    r = json.loads(res.stdout)
    assert r["proxy_key_ids"] == [own[0][0]] and r["proxy_keys_changed"] is True
    path = hubcred.secrets_path(a.secrets)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600 and stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert hubcred.load_secrets(path) == {own[0][0].encode(): own[0][1]}
    for secret in (own[0][1], secrets_in_hub(hub_dsn, b.host_id)[0][1]):
        assert base64.urlsafe_b64encode(secret).rstrip(b"=").decode() not in res.stdout + res.stderr
    assert a.json("keys", "sync")["proxy_keys_changed"] is False  # unchanged: the file is left alone
    # row-level security: A's login sees its own row only, and can change none
    with psycopg.connect(a.extra["hub_dsn"], autocommit=True) as conn:
        assert [str(r[0]) for r in conn.execute("SELECT host_id FROM host_proxy_secrets")] == [a.host_id]
        for sql in ("DELETE FROM host_proxy_secrets", "UPDATE host_proxy_secrets SET key_id='0000000000000000'",
                    f"INSERT INTO host_proxy_secrets(host_id, key_id, secret) VALUES ('{a.host_id}', "
                    "'0123456789abcdef', '\\x" + "00" * 32 + "')"):
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                conn.execute(sql)
    # the admin's view: ids, never a secret
    res = hub.cli("--json", "keys", "proxy-secret", a.host_id)
    shown = json.loads(res.stdout)
    assert shown["action"] == "existing" and shown["key_ids"] == [own[0][0]] and "secret" not in res.stdout.lower()


def test_rotation_overlaps_through_real_hub_and_host_proxies(fleet, hub_dsn, tmp_path):
    hub, a, _ = fleet
    pid = str(uuid.uuid4())
    started = []
    try:
        backend = start_backend(tmp_path, name="a")
        started.append(backend)
        host_state(a.data, {pid: backend.port})
        a.cli("keys", "sync")
        host = start_proxy(tmp_path, "host", {"data_dir": str(a.data), "host_id": a.host_id,
                                              "proxy": {"trust_forwarded": ["127.0.0.1"]}})
        started.append(host)
        a.cli("keys", "register", "--internal-url", f"http://127.0.0.1:{host.port}")
        with psycopg.connect(hub_dsn, autocommit=True) as conn:
            conn.execute("INSERT INTO projects(project_id, host_id) VALUES (%s, %s)", (pid, a.host_id))
        hubp = start_proxy(tmp_path, "hub", {"data_dir": str(tmp_path / "hubproxy"), "hub_dsn": hub_dsn})
        started.append(hubp)
        account = add_account(hub_dsn, "rotation")
        grant(hub_dsn, pid, account, "owner")
        token = add_token(hub_dsn, account)[0]

        def via_hub() -> int:
            return status_of(send_raw(hubp.port, f"GET /{pid}/x HTTP/1.1\r\nHost: h\r\nConnection: close\r\n"
                                                 f"Authorization: Bearer {token}\r\n\r\n"))

        def direct(key: tuple[str, bytes]) -> int:
            cred = hubcred.credential(key[1], key[0].encode(), a.host_id.encode(), b"GET", b"h",
                                      f"/{pid}/x".encode(), project=pid.encode()).decode()
            return status_of(send_raw(host.port, f"GET /{pid}/x HTTP/1.1\r\nHost: h\r\nConnection: close\r\n"
                                                 f"x-cocalc-hub-auth: {cred}\r\n\r\n"))

        assert via_hub() == 200
        (old,) = secrets_in_hub(hub_dsn, a.host_id)
        r = hub.json("keys", "proxy-secret", a.host_id, "--rotate")
        new = secrets_in_hub(hub_dsn, a.host_id)[1]
        assert r["action"] == "rotated" and r["key_ids"] == [old[0], new[0]] and r["signing_key_id"] == old[0]
        again = hub.cli("keys", "proxy-secret", a.host_id, "--rotate", check=False)
        assert again.returncode == 5 and "already in progress" in again.stderr and len(again.stderr.splitlines()) == 1
        # the host has not synced yet: the new key is unknown there, the hub still signs with the old one
        assert direct(new) == 401 and via_hub() == 200
        a.cli("keys", "sync")
        assert (direct(old), direct(new), via_hub()) == (200, 200, 200)
        r = hub.json("keys", "proxy-secret", a.host_id, "--finish")
        assert r["action"] == "finished" and r["key_ids"] == [new[0]] and r["signing_key_id"] == new[0]
        # overlap: the old key is accepted until this host drops it at its next sync
        assert direct(old) == 200 and via_hub() == 200
        a.cli("keys", "sync")
        assert direct(old) == 401 and direct(new) == 200
        assert via_hub() == 200  # so the hub signs with the new key now (the host no longer has the old one)
        assert hub.json("keys", "proxy-secret", a.host_id, "--finish")["action"] == "nothing to finish"
    finally:
        for s in reversed(started):
            s.stop()


def test_keys_watch_brings_a_rotated_secret_at_once(fleet, hub_dsn):
    import subprocess
    import time

    from tests.support.keys import CLI, REPO

    hub, a, _ = fleet
    path = hubcred.secrets_path(a.secrets)
    watch = subprocess.Popen([*CLI, "--json", "keys", "watch", "--seconds", "60"], env=a.env, cwd=str(REPO),
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        first = json.loads(watch.stdout.readline())  # the full sync right after LISTEN
        assert len(first["proxy_key_ids"]) == 1 and len(hubcred.load_secrets(path)) == 1
        t0 = time.monotonic()
        hub.cli("keys", "proxy-secret", a.host_id, "--rotate")  # NOTIFY cocalc_ctl_keys <host id>
        line = json.loads(watch.stdout.readline())
        assert len(line["proxy_key_ids"]) == 2 and line["proxy_keys_changed"] is True
        assert set(hubcred.load_secrets(path)) == {k.encode() for k, _ in secrets_in_hub(hub_dsn, a.host_id)}
        print(f"rotation reached the host's file {time.monotonic() - t0:.2f} s after the command started")
    finally:
        watch.terminate()
        try:
            watch.wait(timeout=10)
        except subprocess.TimeoutExpired:
            watch.kill()
            watch.wait()
    assert "Traceback" not in watch.stderr.read()
