"""Host-mode route cache: reused only while the host database has provably not changed."""

from __future__ import annotations

import subprocess
import sys

import pytest

from cocalc_ctl.proxy.http1 import HttpError
from cocalc_ctl.proxy.routing import HostRoutes
from cocalc_ctl.state import host_db

PID = "11111111-1111-4111-8111-111111111111"
OTHER = "22222222-2222-4222-8222-222222222222"


@pytest.fixture
def db(tmp_path):
    conn = host_db.connect(tmp_path)
    host_db.upsert_project(conn, PID, state="running", http_port=40001)
    host_db.upsert_project(conn, OTHER, state="running", http_port=40002)
    yield tmp_path, conn
    conn.close()


def _status(routes, pid):
    try:
        return routes.resolve_now(pid).port
    except HttpError as exc:
        return exc.status


def test_unchanged_database_is_not_read_again(db):
    data_dir, _ = db
    routes = HostRoutes(data_dir)
    assert routes._shm is not None, "the host database is in WAL mode: the cache must be on"
    assert routes.resolve_now(PID).port == 40001
    n = routes.lookups
    for _ in range(100):
        assert routes.resolve_now(PID).port == 40001
    assert routes.lookups == n


def test_stop_is_seen_by_the_very_next_request(db):
    data_dir, conn = db
    routes = HostRoutes(data_dir)
    for i in range(200):
        assert _status(routes, PID) == 40001
        assert _status(routes, OTHER) == 40002
        conn.execute("UPDATE projects SET http_port=NULL WHERE project_id=?", (PID,))
        assert _status(routes, PID) == 502
        assert _status(routes, OTHER) == 40002
        conn.execute("UPDATE projects SET http_port=? WHERE project_id=?", (40001, PID))
        if i % 50 == 0:
            conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")  # the WAL restarts: must still be noticed


def test_stop_from_another_process_is_seen(db):
    data_dir, _ = db
    routes = HostRoutes(data_dir)
    assert _status(routes, PID) == 40001
    code = ("import sys; from pathlib import Path; from cocalc_ctl.state import host_db; "
            "c = host_db.connect(Path(sys.argv[1])); host_db.upsert_project(c, sys.argv[2], state='stopped', "
            "http_port=None); c.close()")
    subprocess.run([sys.executable, "-c", code, str(data_dir), PID], check=True)
    assert _status(routes, PID) == 502
    assert _status(routes, OTHER) == 40002


def test_errors_are_not_cached(db):
    data_dir, _ = db
    routes = HostRoutes(data_dir)
    for _ in range(3):
        assert _status(routes, "33333333-3333-4333-8333-333333333333") == 404
    assert routes._cache == {}


def test_a_torn_header_disables_the_cache(db, monkeypatch):
    data_dir, _ = db
    routes = HostRoutes(data_dir)
    real = routes._shm
    torn = bytearray(real[:96])
    torn[8] ^= 1  # the two header copies disagree, as while a commit is being published

    class Torn:
        def __getitem__(self, key):
            return bytes(torn[key])

    routes._shm = Torn()
    for _ in range(3):
        assert _status(routes, PID) == 40001
    assert routes._cache == {} and routes.lookups == 3
    routes._shm = real


def test_without_wal_every_request_reads_sqlite(tmp_path):
    conn = host_db.connect(tmp_path)
    host_db.upsert_project(conn, PID, state="running", http_port=40001)
    conn.execute("PRAGMA journal_mode=DELETE")
    conn.close()
    routes = HostRoutes(tmp_path)
    assert routes._shm is None
    assert _status(routes, PID) == 40001
    assert _status(routes, PID) == 40001
    assert routes.lookups == 2
