"""The move worker waits on NOTIFY: the trigger's payloads, a claim without waiting for the poll, a
listener whose connection dies, an idle worker that sends nothing, the migration on a hub with data.

Real PostgreSQL; the host side is a recording transport (as in test_move_worker_concurrency.py): these
tests are about when the worker claims, the real host steps are covered by test_move_worker.py. Every
worker here runs with a fallback poll of an hour, so only a NOTIFY (or the listener's reconnect) can
explain a claim within seconds.
"""

from __future__ import annotations

import threading
import time
import uuid

import psycopg
import pytest

from cocalc_ctl import config as config_mod
from cocalc_ctl.actions.move import hub, worker
from cocalc_ctl.actions.move.transport import HostTransport
from cocalc_ctl.state import hub_db
from tests.support.postgres import sql

pytestmark = pytest.mark.integration

LONG_POLL = 3600.0


class QuickTransport(HostTransport):
    """Every host step succeeds at once (and is counted)."""

    def __init__(self):
        self.steps = 0

    def run(self, host_id, args, *, timeout=None, on_event=None):
        self.steps += 1
        return {"bytes_total": 1, "snapshots": []}


@pytest.fixture
def moves_hub(hub_dsn, tmp_path):
    """A migrated hub with two trusted hosts and a hub key; returns (cfg, src, dst)."""
    (tmp_path / "none.yaml").write_text("{}\n")
    cfg = config_mod.load(None, env={"COCALC_CTL_HUB_DSN": hub_dsn, "COCALC_CTL_DATA_DIR": str(tmp_path),
                                     "COCALC_CTL_CONFIG": str(tmp_path / "none.yaml"),
                                     "COCALC_CTL_MOVE_LEASE_SECONDS": "30"})
    hub_db.migrate(hub_dsn)
    src, dst = str(uuid.uuid4()), str(uuid.uuid4())
    for h, name in ((src, "a"), (dst, "b")):
        sql(hub_dsn, "INSERT INTO project_hosts (id, name, ssh_server, status, last_seen, trusted) "
                     "VALUES (%s, %s, '127.0.0.9:22', 'active', now(), true)", (h, name))
    from cocalc_ctl.actions.keys import hub_keys

    hub_keys.ensure(cfg)
    return cfg, src, dst


def new_project(dsn: str, host: str) -> str:
    pid = str(uuid.uuid4())
    sql(dsn, "INSERT INTO projects (project_id, host_id) VALUES (%s, %s)", (pid, host))
    return pid


class RunningWorker:
    """`worker.run` in a thread (poll: an hour) recording when it claimed what."""

    def __init__(self, cfg, poll: float = LONG_POLL):
        self.claims: dict[str, float] = {}
        self.stop = threading.Event()
        self.listening = threading.Event()
        self.transport = QuickTransport()
        self.error: BaseException | None = None

        def on_claim(move):
            self.claims.setdefault(move.project_id, time.monotonic())

        def body():
            try:
                worker.run(cfg, poll=poll, transport=self.transport, stop=self.stop, on_claim=on_claim,
                           listening=self.listening)
            except BaseException as exc:  # noqa: BLE001 - reported by the test
                self.error = exc

        self.thread = threading.Thread(target=body, daemon=True)

    def __enter__(self):
        self.thread.start()
        assert self.listening.wait(30), "the worker never started listening"
        time.sleep(0.5)  # let the claim after LISTEN find nothing and the threads go idle
        return self

    def __exit__(self, *exc):
        self.stop.set()
        self.thread.join(30)
        assert not self.thread.is_alive()
        assert self.error is None, self.error

    def wait_claim(self, pid: str, timeout: float) -> float | None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if pid in self.claims:
                return self.claims[pid]
            time.sleep(0.01)
        return None


def _notifications(conn) -> list[str]:
    return [n.payload for n in conn.notifies(timeout=0.3) if n.channel == hub_db.MOVE_CHANNEL]


def test_trigger_notifies_exactly_when_a_move_becomes_claimable(moves_hub):
    cfg, src, dst = moves_hub
    dsn = cfg["hub_dsn"]
    pid = new_project(dsn, src)
    with psycopg.connect(dsn, autocommit=True) as listener:
        listener.execute(f"LISTEN {hub_db.MOVE_CHANNEL}")
        hub.start(cfg, pid, to=dst)  # insert: claimable, unleased
        assert _notifications(listener) == [pid]
        sql(dsn, "UPDATE project_moves SET lease_owner='w1', lease_until=now() + interval '1 minute', "
                 "attempt=1 WHERE project_id=%s", (pid,))  # a claim
        sql(dsn, "UPDATE project_moves SET state='preparing' WHERE project_id=%s", (pid,))  # a step under lease
        sql(dsn, "UPDATE project_moves SET lease_until=now() + interval '2 minutes' WHERE project_id=%s", (pid,))
        assert _notifications(listener) == []  # only the worker holding it cares
        sql(dsn, "UPDATE project_moves SET lease_owner=NULL, lease_until=now() + interval '3 seconds' "
                 "WHERE project_id=%s", (pid,))  # released (for a retry later)
        assert _notifications(listener) == [pid]
        sql(dsn, "UPDATE project_moves SET progress='{\"bytes\": 1}' WHERE project_id=%s", (pid,))
        assert _notifications(listener) == []  # nothing about its claimability changed
        hub.cancel(cfg, pid)  # unleased and cancelled: claimable for the roll-back
        assert _notifications(listener) == [pid]
        sql(dsn, "UPDATE project_moves SET cleaned_at=now() WHERE project_id=%s", (pid,))
        assert _notifications(listener) == []  # finished: nothing to claim
        hub.start(cfg, pid, to=dst)  # re-queued over the old row (INSERT … ON CONFLICT DO UPDATE)
        assert _notifications(listener) == [pid]
        other = new_project(dsn, src)
        sql(dsn, "INSERT INTO project_moves (project_id, source_host_id, dest_host_id, state, cleaned_at) "
                 "VALUES (%s, %s, %s, 'done', now())", (other, src, dst))
        assert _notifications(listener) == []  # a finished move inserted as such


def test_worker_claims_a_queued_move_on_notify_without_waiting_for_the_poll(moves_hub):
    cfg, src, dst = moves_hub
    dsn = cfg["hub_dsn"]
    with RunningWorker(cfg) as w:
        delays = []
        for _ in range(3):
            pid = new_project(dsn, src)
            hub.start(cfg, pid, to=dst)  # committed when it returns
            committed = time.monotonic()
            claimed = w.wait_claim(pid, 30.0)
            assert claimed is not None, "not claimed within 30 s with a fallback poll of an hour"
            delays.append(claimed - committed)
            deadline = time.monotonic() + 30
            while hub.status(cfg, pid)[0].cleaned_at is None and time.monotonic() < deadline:
                time.sleep(0.02)
            assert hub.status(cfg, pid)[0].state == "done"
    assert max(delays) < 10.0, delays  # generous for a loaded machine; the poll alone would take an hour


def test_worker_relistens_after_its_connection_dies_and_claims_what_queued_meanwhile(moves_hub, postgres):
    cfg, src, dst = moves_hub
    dsn = cfg["hub_dsn"]
    dbname = dsn.split("dbname=")[1]
    with RunningWorker(cfg) as w:
        killed = sql(postgres.dsn(), "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                                     "WHERE datname=%s AND query = %s",
                     (dbname, f"LISTEN {hub_db.MOVE_CHANNEL}"))
        assert killed == [(True,)]
        deadline = time.monotonic() + 30
        while w.listening.is_set() and time.monotonic() < deadline:
            time.sleep(0.005)
        assert not w.listening.is_set(), "the listener did not notice its connection died"
        # queued while nobody listens (the listener waits ~1 s before reconnecting): its NOTIFY is lost,
        # the claim after the reconnect must find it
        pid = new_project(dsn, src)
        hub.start(cfg, pid, to=dst)
        assert w.wait_claim(pid, 30.0) is not None, "the move queued while the listener was away was not claimed"
        assert w.listening.wait(30)
        # and NOTIFY works again on the new session
        time.sleep(0.5)
        pid2 = new_project(dsn, src)
        hub.start(cfg, pid2, to=dst)
        assert w.wait_claim(pid2, 30.0) is not None


def _statements_logged(postgres, since: int) -> list[str]:
    """The statements (possibly several lines each) the server logged after byte `since`."""
    text = (postgres.dir / "log").read_bytes()[since:].decode(errors="replace")
    return text.split(" LOG:  statement: ")[1:]


@pytest.mark.parametrize("poll", [LONG_POLL, 0.5])
def test_an_idle_worker_sends_no_statement_but_its_fallback_poll(moves_hub, postgres, poll):
    cfg, _, _ = moves_hub
    dbname = cfg["hub_dsn"].split("dbname=")[1]
    # every statement of a new session on this database goes to the server log
    sql(postgres.dsn(), f'ALTER DATABASE "{dbname}" SET log_statement = \'all\'')
    with RunningWorker(cfg, poll=poll):
        time.sleep(1.0)  # past its start-up claim
        mark = (postgres.dir / "log").stat().st_size
        time.sleep(3.0)
        idle = _statements_logged(postgres, mark)
    if poll == LONG_POLL:
        assert idle == []
    else:  # the method sees a polling worker: its claim and next-due query, every half second
        assert sum("UPDATE project_moves" in st for st in idle) >= 2, idle


def test_move_notify_migration_reapplies_on_a_hub_with_data(moves_hub):
    from cocalc_ctl.state.hub_db import MIGRATIONS

    cfg, src, dst = moves_hub
    dsn = cfg["hub_dsn"]
    pids = [new_project(dsn, src) for _ in range(3)]
    hub.start(cfg, pids[0], to=dst)
    sql(dsn, "INSERT INTO project_moves (project_id, source_host_id, dest_host_id, state, cleaned_at) "
             "VALUES (%s, %s, %s, 'done', now())", (pids[1], src, dst))
    before = sql(dsn, "SELECT project_id, state, cleaned_at FROM project_moves ORDER BY project_id")
    version = next(i for i, (name, _) in enumerate(MIGRATIONS, 1) if name == "move: notify claimable moves")
    # a hub from before this migration
    sql(dsn, "DROP TRIGGER cocalc_ctl_move_claimable ON project_moves")
    sql(dsn, "DROP FUNCTION cocalc_ctl_notify_move()")
    sql(dsn, "DELETE FROM cocalc_ctl_schema_migrations WHERE version = %s", (version,))
    first = hub_db.migrate(dsn)
    assert first.applied == [f"{version}: move: notify claimable moves"] and first.version == len(MIGRATIONS)
    assert hub_db.migrate(dsn).applied == []
    with psycopg.connect(dsn, autocommit=True) as conn:  # the statements themselves are idempotent
        for statement in MIGRATIONS[version - 1][1]:
            conn.execute(statement)
    assert sql(dsn, "SELECT count(*) FROM pg_trigger WHERE tgname = 'cocalc_ctl_move_claimable'") == [(1,)]
    assert sql(dsn, "SELECT project_id, state, cleaned_at FROM project_moves ORDER BY project_id") == before
    with psycopg.connect(dsn, autocommit=True) as listener:  # and it notifies
        listener.execute(f"LISTEN {hub_db.MOVE_CHANNEL}")
        hub.start(cfg, pids[2], to=dst)
        assert _notifications(listener) == [pids[2]]


@pytest.mark.parametrize("pool_mode", ["session", "transaction"])
def test_worker_tells_whether_notify_reaches_it_through_pgbouncer(moves_hub, postgres, capfd, pool_mode):
    """Through session pooling the worker claims on NOTIFY; through transaction pooling its LISTEN
    lands on a server session it does not keep, its probe never arrives, and it says so."""
    from tests.support.pgbouncer import pgbouncer

    cfg, src, dst = moves_hub
    dbname = cfg["hub_dsn"].split("dbname=")[1]
    with pgbouncer(postgres, dbname, pool_mode) as dsn:
        pooled = config_mod.load(None, env={**{f"COCALC_CTL_{k}": v for k, v in (
            ("HUB_DSN", dsn), ("DATA_DIR", str(cfg.data_dir)), ("CONFIG", str(cfg.file or "")),
            ("MOVE_LEASE_SECONDS", "30"))}})
        capfd.readouterr()
        with RunningWorker(pooled) as w:  # `listening` is set once the probe has answered or timed out
            err = capfd.readouterr().err
            if pool_mode == "session":
                assert "does not reach" not in err, err
                pid = new_project(cfg["hub_dsn"], src)
                hub.start(cfg, pid, to=dst)
                assert w.wait_claim(pid, 30.0) is not None
            else:
                assert f"a NOTIFY on {hub_db.MOVE_CHANNEL} does not reach this worker's LISTEN session" in err, err
