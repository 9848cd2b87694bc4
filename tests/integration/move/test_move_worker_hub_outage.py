"""What the fleet soak found in the move worker, proven on a hub without hosts:

- a long-running `move worker` outlives a restart of the hub's PostgreSQL (every worker exited 0 when
  the database went away, so a unit restarting only on failure stayed dead), and `move worker --once`
  reports an unreachable hub with exit 1 and one line, not a traceback and 0;
- a move whose attempts were used up by workers that died (SIGKILL) says so when it gives up (it
  ended `failing` with the reason "gave up after 3 attempts" and no cause)."""

from __future__ import annotations

import subprocess
import time
import uuid

import pytest
import yaml

from tests.support.hosts import CLI, REPO
from tests.support.postgres import Postgres, sql

pytestmark = pytest.mark.integration


@pytest.fixture
def own_postgres():
    """A server of this test's own: it is stopped and started again (not the session's shared one)."""
    pg = Postgres().start()
    try:
        pg.wait_ready()
        yield pg
    finally:
        pg.stop()


def _hub(tmp_path, pg):
    cfg = tmp_path / "hub.yaml"
    (tmp_path / "hosts").mkdir()
    cfg.write_text(yaml.safe_dump({"hub_dsn": pg.dsn(), "data_dir": str(tmp_path / "data"),
                                   "btrfs_root": str(tmp_path / "none"),
                                   "move": {"transport": "local", "host_configs": str(tmp_path / "hosts")}}))

    def cli(*args, check=True):
        r = subprocess.run([*CLI, "--config", str(cfg), *args], capture_output=True, text=True, cwd=str(REPO),
                           env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "PYTHONPATH": str(REPO)}, timeout=120)
        assert not check or r.returncode == 0, r.stderr
        return r

    cli("hub", "migrate")
    return cfg, cli


def _queue_a_move(pg, cli) -> str:
    """A move between two registered hosts; neither has a config here, so its first step fails and is
    recorded (attempt 1, a reason): what shows that a worker claimed it."""
    a, b, pid = str(uuid.uuid4()), str(uuid.uuid4()), str(uuid.uuid4())
    for h in (a, b):
        sql(pg.dsn(), "INSERT INTO project_hosts (id, name, ssh_server, status, last_seen, trusted) "
                      "VALUES (%s, %s, '127.0.0.1:1', 'active', now(), true)", (h, "h-" + h[:8]))
    cli("hub", "project", "add", pid, "--host", a)
    cli("move", "start", pid, "--to", b)
    return pid


def test_worker_keeps_running_through_a_hub_restart_and_then_claims(tmp_path, own_postgres):
    pg = own_postgres
    cfg, cli = _hub(tmp_path, pg)
    log = open(tmp_path / "worker.log", "wb")
    worker = subprocess.Popen([*CLI, "--config", str(cfg), "move", "worker", "--poll", "0.2"], stdout=log,
                              stderr=subprocess.STDOUT, cwd=str(REPO),
                              env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "PYTHONPATH": str(REPO)})
    try:
        time.sleep(2)  # polling
        pg.pause()
        time.sleep(3)  # several polls meet no database
        pg.resume()
        pg.wait_ready()
        assert worker.poll() is None, (tmp_path / "worker.log").read_text()
        pid = _queue_a_move(pg, cli)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            (attempt, reason), = sql(pg.dsn(), "SELECT attempt, status_reason FROM project_moves WHERE project_id=%s",
                                     (pid,))
            if attempt >= 1 and reason:
                break
            time.sleep(0.2)
        text = (tmp_path / "worker.log").read_text()
        assert attempt >= 1 and reason, f"the worker never claimed the move after the restart:\n{text}"
        assert worker.poll() is None, text
        assert "cocalc-ctl: warning: move worker:" in text and "Traceback" not in text, text
    finally:
        worker.kill()
        worker.wait()
        log.close()


def test_worker_once_with_the_hub_down_exits_1_with_one_line(tmp_path, own_postgres):
    pg = own_postgres
    _cfg, cli = _hub(tmp_path, pg)
    pg.pause()
    try:
        r = cli("move", "worker", "--once", check=False)
    finally:
        pg.resume()
    assert r.returncode == 1, (r.returncode, r.stderr)
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("cocalc-ctl: error: ") and "hub database" in lines[0], r.stderr


def test_a_lapsed_lease_is_recorded_as_the_attempt_s_cause(tmp_path, own_postgres):
    pg = own_postgres
    _cfg, cli = _hub(tmp_path, pg)
    pid = _queue_a_move(pg, cli)
    # what three claims by workers SIGKILLed mid-send leave: attempt 3, a lease still owned, now lapsed
    sql(pg.dsn(), "UPDATE project_moves SET state='sending', snapshot_name='move-soak', move_id=gen_random_uuid(), "
                  "attempt=3, status_reason=NULL, lease_owner='dead-worker:1', lease_until=now() - interval '1 second' "
                  "WHERE project_id=%s", (pid,))
    cli("move", "worker", "--once")
    (state, reason), = sql(pg.dsn(), "SELECT state, status_reason FROM project_moves WHERE project_id=%s", (pid,))
    assert state == "failing", reason
    assert reason.startswith("gave up after 3 attempts: attempt 3 ended in sending: worker dead-worker:1 stopped "
                             "renewing its lease"), reason
