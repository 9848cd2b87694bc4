"""Keys through a real hub PostgreSQL: register, trust, sync, watch (LISTEN/NOTIFY), untrust."""

from __future__ import annotations

import json
import subprocess
import time

import pytest

from tests.support.keys import CLI, KeyHost, REPO

pytestmark = pytest.mark.integration


@pytest.fixture
def hosts(tmp_path, hub_dsn):
    made = []
    for name, server in (("a", "127.0.0.2:2222"), ("b", "127.0.0.3:22")):
        h = KeyHost(tmp_path / name, extra={"hub_dsn": hub_dsn, "ssh_server": server})
        made.append(h)
    made[0].cli("hub", "migrate")
    for h in made:
        h.cli("keys", "ensure")
    return made


def peer_ids(h: KeyHost) -> list[str]:
    return [p["host_id"] for p in h.json("keys", "peers")]


def test_register_trust_sync_and_untrust(hosts):
    a, b = hosts
    ra = a.json("keys", "register")
    b.json("keys", "register")
    assert ra["trusted"] is False
    # nobody trusted yet: no peers anywhere, and an untrusted host gets nothing
    assert b.json("keys", "sync")["self_trusted"] is False
    assert peer_ids(b) == []
    a.cli("keys", "trust", a.host_id)
    r = b.json("keys", "sync")
    assert r["self_trusted"] is False and r["peers"] == []  # B itself is untrusted: it receives no peer keys
    b.cli("keys", "trust", b.host_id)
    r = b.json("keys", "sync")
    assert r["self_trusted"] and r["added"] == [a.host_id]
    peers = b.json("keys", "peers")
    assert peers[0]["ssh_server"] == "127.0.0.2:2222"
    assert peers[0]["host_to_host_fingerprints"] == [k["fingerprint"] for k in a.json("keys", "show")
                                                     if k["which"] == "host"]
    # the peer's key is accepted for btrfs-<A> on B; known_hosts pins A's sshpiperd key
    assert a.pub("host-to-host/id_ed25519").split()[1] in b.cli("sshpiper", "authorized-keys",
                                                               f"btrfs-{a.host_id}").stdout
    kh = (b.data / "ssh" / "known_hosts").read_text()
    assert f"[127.0.0.2]:2222 {' '.join(a.pub('sshpiperd/host_key').split()[:2])}" in kh.splitlines()
    # register again (heartbeat) keeps trust
    assert a.json("keys", "register")["trusted"] is True
    b.cli("keys", "untrust", a.host_id)
    r = b.json("keys", "sync")
    assert r["removed"] == [a.host_id] and peer_ids(b) == []
    assert b.cli("sshpiper", "authorized-keys", f"btrfs-{a.host_id}").stdout == ""
    assert a.host_id not in (b.data / "ssh" / "known_hosts").read_text()


def test_trust_unknown_host_is_not_found(hosts):
    a, _ = hosts
    res = a.cli("keys", "trust", "00000000-0000-4000-8000-000000000000", check=False)
    assert res.returncode == 3
    assert a.cli("keys", "trust", "not-a-uuid", check=False).returncode == 2


def test_watch_sees_a_new_key_promptly_and_untrust(hosts):
    a, b = hosts
    for h in hosts:
        h.cli("keys", "register")
        h.cli("keys", "trust", h.host_id)
    watch = subprocess.Popen([*CLI, "--json", "keys", "watch", "--seconds", "60"], env=b.env, cwd=str(REPO),
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        first = json.loads(watch.stdout.readline())  # the full sync done right after LISTEN
        assert first["event"] == "sync" and first["peers"] == [a.host_id]
        a.cli("keys", "rotate", "--which", "host")
        new_pub = a.pub("host-to-host/id_ed25519").split()[1]
        t0 = time.monotonic()
        a.cli("keys", "register")
        registered = time.monotonic()
        seen = None
        # keys.resync_every is 300 s: only the NOTIFY can bring the key within this (generous) window
        while time.monotonic() - registered < 10.0:
            row = b.db().execute("SELECT host_to_host_public_key FROM project_hosts WHERE host_id=?",
                                 (a.host_id,)).fetchone()
            if row and new_pub in row[0]:
                seen = time.monotonic()
                break
            time.sleep(0.02)
        assert seen is not None, f"B did not see A's new key within 10 s of register (started {t0})"
        # during the rotation both of A's keys are accepted on B
        lines = b.cli("sshpiper", "authorized-keys", f"btrfs-{a.host_id}").stdout
        assert new_pub in lines and lines.count("restrict,") == 3
        b.cli("keys", "untrust", a.host_id)
        deadline = time.monotonic() + 15
        while a.host_id in peer_ids(b) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert a.host_id not in peer_ids(b)
        assert b.cli("sshpiper", "authorized-keys", f"btrfs-{a.host_id}").stdout == ""
    finally:
        watch.terminate()
        try:
            watch.wait(timeout=10)
        except subprocess.TimeoutExpired:
            watch.kill()
            watch.wait()
    assert "Traceback" not in watch.stderr.read()


def test_watch_reconnects_after_the_hub_drops_it(hosts, postgres):
    import psycopg

    a, b = hosts
    for h in hosts:
        h.cli("keys", "register")
        h.cli("keys", "trust", h.host_id)
    watch = subprocess.Popen([*CLI, "--json", "keys", "watch", "--seconds", "60"], env=b.env, cwd=str(REPO),
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert json.loads(watch.stdout.readline())["event"] == "sync"
        dbname = b.extra["hub_dsn"].split("dbname=")[1]
        with psycopg.connect(postgres.dsn(), autocommit=True) as conn:
            conn.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                         "WHERE datname=%s AND pid<>pg_backend_pid()", (dbname,))
        # the reconnect does a full sync (another event) and then sees changes again
        assert json.loads(watch.stdout.readline())["event"] == "sync"
        b.cli("keys", "untrust", a.host_id)
        ev = json.loads(watch.stdout.readline())
        assert ev["removed"] == [a.host_id]
    finally:
        watch.terminate()
        try:
            watch.wait(timeout=10)
        except subprocess.TimeoutExpired:
            watch.kill()
            watch.wait()
    err = watch.stderr.read()
    assert "hub connection lost" in err and "Traceback" not in err


def test_dry_run_changes_nothing_in_the_hub_or_sqlite(hosts):
    import psycopg

    a, _ = hosts
    for args in (("keys", "register"), ("keys", "trust", a.host_id), ("keys", "sync"), ("keys", "broadcast")):
        res = a.cli("--dry-run", *args)
        assert res.stdout.startswith("# ")
    with psycopg.connect(a.extra["hub_dsn"]) as conn:
        assert conn.execute("SELECT count(*) FROM project_hosts").fetchone()[0] == 0


def test_sync_keeps_only_clean_keys_from_the_hub(hosts):
    """A hub row cannot smuggle key options (command=, from=) or junk into a host's authorized keys."""
    import psycopg

    a, b = hosts
    for h in hosts:
        h.cli("keys", "register")
        h.cli("keys", "trust", h.host_id)
    good = a.pub("host-to-host/id_ed25519")
    evil = f'command="/bin/sh" {good}\nnot a key at all\nssh-ed25519 !!!!\n{good}'
    with psycopg.connect(a.extra["hub_dsn"], autocommit=True) as conn:
        conn.execute("UPDATE project_hosts SET host_to_host_public_key=%s, ssh_server='x y:22' WHERE id=%s",
                     (evil, a.host_id))
    r = b.json("keys", "sync")
    assert r["peers"] == [a.host_id]
    stored = b.db().execute("SELECT host_to_host_public_key, ssh_server FROM project_hosts WHERE host_id=?",
                            (a.host_id,)).fetchone()
    assert stored[0] == good and stored[1] is None
    lines = b.cli("sshpiper", "authorized-keys", f"btrfs-{a.host_id}").stdout.splitlines()
    assert len(lines) == 2 and all(ln.startswith('restrict,command="') and ln.count("command=") == 1 for ln in lines)


def test_hub_key_is_published_pinned_by_sync_rotated_and_only_it_logs_in_as_cocalc_hub(hosts, tmp_path, hub_dsn):
    """`hub keys ensure` publishes the worker's key; a trusted host pins exactly the published set on
    `keys sync` (an untrusted one pins none); rotation publishes both keys, --finish only the new one."""
    import os
    import stat

    a, b = hosts
    hub = KeyHost(tmp_path / "hub", extra={"hub_dsn": hub_dsn})
    made = hub.json("hub", "keys", "ensure")
    assert made["action"] == "created" and made["published"] is True
    key = hub.secrets / "hub" / "hub_key"
    assert stat.S_IMODE(os.stat(key).st_mode) == 0o600 and stat.S_IMODE(os.stat(key.parent).st_mode) == 0o700
    assert hub.json("hub", "keys", "ensure")["action"] == "existing"
    b.json("keys", "register")
    r = b.json("keys", "sync")
    assert r["self_trusted"] is False and r["hub_keys"] == []  # an untrusted host pins no hub key
    assert b.cli("sshpiper", "authorized-keys", "cocalc-hub").stdout == ""
    b.cli("keys", "trust", b.host_id)
    r = b.json("keys", "sync")
    assert r["hub_keys"] == [made["fingerprint"]] and r["hub_added"] == [made["fingerprint"]]
    lines = b.cli("sshpiper", "authorized-keys", "cocalc-hub").stdout
    assert made["public_key"].split()[1] in lines and "move host-step" in lines
    assert b.pub("host-to-host/id_ed25519").split()[1] not in lines
    # rotation: both published (the hosts keep accepting tickets signed by either), then only the new one
    rot = hub.json("hub", "keys", "rotate")
    r = b.json("keys", "sync")
    assert sorted(r["hub_keys"]) == sorted([rot["fingerprint"], made["fingerprint"]])
    assert r["hub_added"] == [rot["fingerprint"]] and r["hub_removed"] == []
    hub.json("hub", "keys", "rotate", "--finish")
    r = b.json("keys", "sync")
    assert r["hub_keys"] == [rot["fingerprint"]] and r["hub_removed"] == [made["fingerprint"]]
    assert made["public_key"].split()[1] not in b.cli("sshpiper", "authorized-keys", "cocalc-hub").stdout
    # untrusting the host drops the pinned hub keys too
    b.cli("keys", "untrust", b.host_id)
    assert b.json("keys", "sync")["hub_keys"] == []
