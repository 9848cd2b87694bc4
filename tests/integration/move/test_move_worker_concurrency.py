"""Three worker processes and ten queued moves on a real PostgreSQL: every move runs exactly once.

The host side is replaced by a recording transport (each host step appends a line to a shared file
and takes a little time), so this test is about the claim/lease protocol only; the real host steps
are covered by test_move_worker.py.
"""

from __future__ import annotations

import multiprocessing
import threading
import time
import uuid
from collections import Counter

import psycopg
import pytest

from cocalc_ctl import config as config_mod
from cocalc_ctl.actions.move import hub, worker
from cocalc_ctl.actions.move.transport import HostTransport
from cocalc_ctl.state import hub_db

pytestmark = pytest.mark.integration


class RecordingTransport(HostTransport):
    def __init__(self, path: str, owner: str, start=None):
        self.path, self.owner, self.start = path, owner, start

    def run(self, host_id, args, *, timeout=None, on_event=None):
        with open(self.path, "a") as fh:  # O_APPEND: whole lines from concurrent processes
            fh.write(f"{self.owner}\t{host_id}\t{' '.join(args)}\n")
        if self.start is not None:
            # the first step of each worker waits until every worker holds a move: a worker that a
            # loaded machine starts late still gets work, instead of finding the queue emptied
            start, self.start = self.start, None
            try:
                start.wait(60)
            except threading.BrokenBarrierError:
                pass  # a worker never claimed anything: the assertions below say so
        time.sleep(0.05)
        return {"bytes_total": 1, "snapshots": []}


def _work(cfg_env: dict, log: str, n: int, start=None) -> None:
    cfg = config_mod.load(None, env=cfg_env)
    worker.run(cfg, once=True, concurrency=1, transport=RecordingTransport(log, f"w{n}", start))


def test_three_workers_move_ten_projects_each_exactly_once(hub_dsn, tmp_path):
    env = {"COCALC_CTL_HUB_DSN": hub_dsn, "COCALC_CTL_DATA_DIR": str(tmp_path), "COCALC_CTL_MOVE_LEASE_SECONDS": "5",
           "COCALC_CTL_CONFIG": str(tmp_path / "none.yaml")}
    (tmp_path / "none.yaml").write_text("{}\n")
    hub_db.migrate(hub_dsn)
    src, dst = str(uuid.uuid4()), str(uuid.uuid4())
    pids = [str(uuid.uuid4()) for _ in range(10)]
    with psycopg.connect(hub_dsn, autocommit=True) as conn:
        for h, name in ((src, "a"), (dst, "b")):
            conn.execute("INSERT INTO project_hosts (id, name, ssh_server, status, last_seen, trusted) "
                         "VALUES (%s, %s, '127.0.0.9:22', 'active', now(), true)", (h, name))
        for p in pids:
            conn.execute("INSERT INTO projects (project_id, host_id) VALUES (%s, %s)", (p, src))
    cfg = config_mod.load(None, env=env)
    from cocalc_ctl.actions.keys import hub_keys

    hub_keys.ensure(cfg)  # the workers sign a ticket for every host step
    for p in pids:
        assert hub.start(cfg, p, to=dst).state == "queued"
    log = str(tmp_path / "steps.log")
    ctx = multiprocessing.get_context("fork")
    start = ctx.Barrier(3)
    procs = [ctx.Process(target=_work, args=(env, log, n, start)) for n in range(3)]
    for pr in procs:
        pr.start()
    for pr in procs:
        pr.join(120)
        assert pr.exitcode == 0
    lines = [line.rstrip("\n").split("\t") for line in open(log)]
    # `project show` runs twice per move: preparing checks the source, finalizing reads its quota
    for verb, times in (("project show", 2), ("move send", 1), ("move finalize", 1), ("move cleanup", 1)):
        counts = Counter(args.split()[2] for _, _, args in lines if args.startswith(verb))
        assert counts == {p: times for p in pids}, (verb, counts)
    owners = {}
    for owner, _, args in lines:
        owners.setdefault(args.split()[2], set()).add(owner)
    assert all(len(o) == 1 for o in owners.values())  # one worker carried each move from start to end
    assert len({o for os_ in owners.values() for o in os_}) == 3  # and the work was really shared
    moves = {m.project_id: m for m in hub.status(cfg)}
    assert all(moves[p].state == "done" and moves[p].attempt == 1 and moves[p].cleaned_at for p in pids)
    with psycopg.connect(hub_dsn, autocommit=True) as conn:
        hosts = {r[0] for r in conn.execute("SELECT host_id::text FROM projects")}
    assert hosts == {dst}


def test_start_picks_a_trusted_active_recent_host_and_refuses_otherwise(hub_dsn, tmp_path):
    from cocalc_ctl.errors import Busy, NotFound, PreconditionFailed

    (tmp_path / "none.yaml").write_text("{}\n")
    cfg = config_mod.load(None, env={"COCALC_CTL_HUB_DSN": hub_dsn, "COCALC_CTL_CONFIG": str(tmp_path / "none.yaml")})
    hub_db.migrate(hub_dsn)
    src, good, untrusted, stale, inactive = (str(uuid.uuid4()) for _ in range(5))
    pid = str(uuid.uuid4())
    with psycopg.connect(hub_dsn, autocommit=True) as conn:
        for h, trusted, status, seen in ((src, True, "active", "now()"), (untrusted, False, "active", "now()"),
                                         (stale, True, "active", "now() - interval '10 minutes'"),
                                         (inactive, True, "draining", "now()")):
            conn.execute(f"INSERT INTO project_hosts (id, name, ssh_server, status, last_seen, trusted) "
                         f"VALUES (%s, %s, 'h:22', %s, {seen}, %s)", (h, h[:8], status, trusted))
        conn.execute("INSERT INTO projects (project_id, host_id) VALUES (%s, %s)", (pid, src))
    with pytest.raises(PreconditionFailed):  # nobody suitable yet
        hub.start(cfg, pid)
    with pytest.raises(PreconditionFailed):  # an untrusted host is never a destination
        hub.start(cfg, pid, to=untrusted)
    with pytest.raises(NotFound):
        hub.start(cfg, str(uuid.uuid4()))
    with psycopg.connect(hub_dsn, autocommit=True) as conn:
        conn.execute("INSERT INTO project_hosts (id, name, ssh_server, status, last_seen, trusted) "
                     "VALUES (%s, 'good', 'h:22', 'active', now(), true)", (good,))
    move = hub.start(cfg, pid)
    assert move.dest_host_id == good and move.state == "queued"
    with pytest.raises(Busy):
        hub.start(cfg, pid, to="good")
    assert hub.cancel(cfg, pid).state == "cancelled"
    with pytest.raises(Busy):  # the worker has not rolled the destination back yet
        hub.start(cfg, pid, to="good")
    with psycopg.connect(hub_dsn, autocommit=True) as conn:
        conn.execute("UPDATE project_moves SET cleaned_at = now() WHERE project_id = %s", (pid,))
    assert hub.start(cfg, pid, to="good").state == "queued"  # a finished move can be started again
