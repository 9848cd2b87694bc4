"""Incremental key sync (`keys watch`) against a real hub PostgreSQL: a change re-reads only the host its
NOTIFY names; this host's own row, `keys broadcast` and unknown payloads still do the full sync."""

from __future__ import annotations

import contextlib
import json
import subprocess
import time

import pytest

from tests.support.keys import CLI, KeyHost, REPO
from tests.support.postgres import sql

pytestmark = pytest.mark.integration


@pytest.fixture
def fleet(tmp_path, hub_dsn):
    made = []
    for name, server in (("a", "127.0.0.2:2222"), ("b", "127.0.0.3:22"), ("c", "127.0.0.4:22")):
        made.append(KeyHost(tmp_path / name, extra={"hub_dsn": hub_dsn, "ssh_server": server,
                                                     "keys.sync_jitter_ms": 50}))
    made[0].cli("hub", "migrate")
    for h in made:
        h.cli("keys", "ensure")
        h.cli("keys", "register")
        h.cli("keys", "trust", h.host_id)
    return made


@contextlib.contextmanager
def watching(h: KeyHost):
    proc = subprocess.Popen([*CLI, "--json", "keys", "watch", "--seconds", "90"], env=h.env, cwd=str(REPO),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        yield proc
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    assert "Traceback" not in proc.stderr.read()


def next_sync(proc) -> dict:
    ev = json.loads(proc.stdout.readline())
    assert ev["event"] == "sync"
    return ev


def cached_server(h: KeyHost, peer: str) -> str | None:
    with contextlib.closing(h.db()) as db:
        row = db.execute("SELECT ssh_server FROM project_hosts WHERE host_id=?", (peer,)).fetchone()
    return row[0] if row else None


def test_a_key_change_resyncs_only_the_host_it_names(fleet):
    a, b, c = fleet
    with watching(b) as watch:
        first = next_sync(watch)
        assert first["scope"] == "full" and sorted(first["peers"]) == sorted([a.host_id, c.host_id])
        # a stale entry for C that only a re-read of C's hub row would repair
        with contextlib.closing(b.db()) as db:
            db.execute("UPDATE project_hosts SET ssh_server='10.9.9.9:22' WHERE host_id=?", (c.host_id,))
        a.cli("keys", "rotate", "--which", "host")
        new_pub = a.pub("host-to-host/id_ed25519").split()[1]
        a.cli("keys", "register")
        ev = next_sync(watch)
        assert ev["scope"] == "incremental" and ev["synced"] == [a.host_id], ev
        assert ev["changed"] == [a.host_id] and ev["added"] == [] and ev["removed"] == []
        assert sorted(ev["peers"]) == sorted([a.host_id, c.host_id])
        with contextlib.closing(b.db()) as db:
            row = db.execute("SELECT host_to_host_public_key FROM project_hosts WHERE host_id=?",
                             (a.host_id,)).fetchone()
        assert new_pub in row[0]
        assert new_pub in b.cli("sshpiper", "authorized-keys", f"btrfs-{a.host_id}").stdout
        assert cached_server(b, c.host_id) == "10.9.9.9:22"  # C's entry was not touched
        # untrusting A: an incremental removal of A alone
        b.cli("keys", "untrust", a.host_id)
        ev = next_sync(watch)
        assert ev["scope"] == "incremental" and ev["removed"] == [a.host_id] and ev["peers"] == [c.host_id]
        assert b.cli("sshpiper", "authorized-keys", f"btrfs-{a.host_id}").stdout == ""
        assert cached_server(b, c.host_id) == "10.9.9.9:22"
        # `keys broadcast` (payload `all`): the full sync repairs C
        b.cli("keys", "broadcast")
        ev = next_sync(watch)
        assert ev["scope"] == "full" and ev["changed"] == [c.host_id]
        assert cached_server(b, c.host_id) == "127.0.0.4:22"


def test_own_row_and_unknown_payloads_do_the_full_sync(fleet, hub_dsn):
    a, b, c = fleet
    with watching(b) as watch:
        assert next_sync(watch)["scope"] == "full"
        sql(hub_dsn, "SELECT pg_notify('cocalc_ctl_keys', 'not-a-host')")
        assert next_sync(watch)["scope"] == "full"
        b.cli("keys", "untrust", b.host_id)  # its own trust: everything goes
        ev = next_sync(watch)
        assert ev["scope"] == "full" and ev["self_trusted"] is False and ev["peers"] == []
        assert sorted(ev["removed"]) == sorted([a.host_id, c.host_id])
        # an untrusted host gets nothing from an incremental sync either
        sql(hub_dsn, "UPDATE project_hosts SET ssh_server='127.0.0.9:22' WHERE id=%s", (a.host_id,))
        ev = next_sync(watch)
        assert ev["self_trusted"] is False and ev["peers"] == []
        assert cached_server(b, a.host_id) is None


def test_a_burst_of_changes_is_one_sync_reading_only_the_named_rows(fleet, hub_dsn):
    a, b, c = fleet
    with watching(b) as watch:
        assert next_sync(watch)["scope"] == "full"
        with contextlib.closing(b.db()) as db:
            db.execute("UPDATE project_hosts SET ssh_server='10.9.9.9:22' WHERE host_id=?", (c.host_id,))
        # two changes of A in one transaction and one of C: one NOTIFY batch
        sql(hub_dsn, """WITH x AS (UPDATE project_hosts SET ssh_server='127.0.0.12:22' WHERE id=%s RETURNING 1)
                        UPDATE project_hosts SET ssh_server='127.0.0.14:22' WHERE id=%s""", (a.host_id, c.host_id))
        ev = next_sync(watch)
        assert ev["scope"] == "incremental" and sorted(ev["synced"]) == sorted([a.host_id, c.host_id])
        assert cached_server(b, a.host_id) == "127.0.0.12:22" and cached_server(b, c.host_id) == "127.0.0.14:22"


def test_watch_through_transaction_pooling_says_notify_does_not_reach_it(fleet, hub_dsn, postgres):
    from tests.support.pgbouncer import pgbouncer

    a, b, c = fleet
    with pgbouncer(postgres, hub_dsn.split("dbname=")[1], "transaction") as dsn:
        env = {**b.env, "COCALC_CTL_HUB_DSN": dsn}
        watch = subprocess.Popen([*CLI, "--json", "keys", "watch", "--seconds", "60"], env=env, cwd=str(REPO),
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            first = next_sync(watch)  # the full sync still works through the pooler
            assert first["scope"] == "full" and sorted(first["peers"]) == sorted([a.host_id, c.host_id])
        finally:
            watch.terminate()
            watch.wait(timeout=10)
        err = watch.stderr.read()
    assert "a NOTIFY on cocalc_ctl_keys does not reach this LISTEN session" in err, err
    assert "Traceback" not in err
