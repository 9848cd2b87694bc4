"""The hub's move queue and worker: real PostgreSQL, real hosts and sshd, leases, crashes, cancel."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
import uuid

import pytest

from tests.integration.move.test_move_pipe import assert_moved, build_project, quota_of, set_quota, tree_digest
from tests.support.move import ssh_to
from tests.support.move_hub import make_hub_rig
from tests.support.procfs import children, cmdline

pytestmark = pytest.mark.integration


@pytest.fixture
def rig(pair, hub_dsn, workdir):
    a, b, rb, ra = pair
    rig = make_hub_rig(hub_dsn, workdir / "hub", a, b, ra.port, rb.port)
    rig.rb = rb
    return rig


def queue(rig, pid):
    rig.sql("INSERT INTO projects (project_id, host_id) VALUES (%s, %s)", (pid, rig.a.host_id))
    return json.loads(rig.cli("--json", "move", "start", pid).stdout)


def assert_done(rig, pid, digests):
    row = rig.move_row(pid)
    assert row["state"] == "done" and row["cleaned_at"] is not None, row
    assert str(row["dest_host_id"]) == rig.b.host_id
    host, status = rig.sql("SELECT host_id::text, move_status FROM projects WHERE project_id=%s", (pid,))[0]
    assert host == rig.b.host_id and status["state"] == "done"
    assert_moved(rig.b, pid, digests)
    assert not rig.a.project_path(pid).exists()  # the source is cleaned only after done


def test_worker_moves_a_project_and_cleans_the_source_after_done(rig):
    pid = str(uuid.uuid4())
    digests = build_project(rig.a, pid)
    set_quota(rig.a, pid, 77 << 20)
    started = queue(rig, pid)
    assert started["state"] == "queued" and started["dest_host_id"] == rig.b.host_id  # chosen: the only other host
    assert rig.sql("SELECT move_status->>'state' FROM projects WHERE project_id=%s", (pid,))[0][0] == "queued"
    again = rig.cli("move", "start", pid, check=False)
    assert again.returncode == 4  # already being moved
    out = json.loads(rig.cli("--json", "move", "worker", "--once").stdout)
    assert [p["state"] for p in out["processed"]] == ["done"]
    assert_done(rig, pid, digests)
    assert rig.move_row(pid)["attempt"] == 1
    assert quota_of(rig.b, pid) == 77 << 20  # the project keeps its own limit, not B's default
    # moving to where it already is: done at once
    same = json.loads(rig.cli("--json", "move", "start", pid, "--to", rig.b.host_id).stdout)
    assert same["state"] == "done" and same["status_reason"] == "already on the destination"


def _crash_left(rig, pid, state, snapshot="move-crash"):
    """What a worker killed in `state` leaves: the row in that state with a stale lease of a dead owner."""
    rig.sql("UPDATE project_moves SET state=%s, snapshot_name=%s, attempt=1, lease_owner='dead-worker', "
            "lease_until=now() - interval '1 second' WHERE project_id=%s", (state, snapshot, pid))


@pytest.mark.parametrize("state", ["preparing", "sending", "finalizing", "done"])
def test_restarted_worker_resumes_a_move_left_in_each_state(rig, state):
    a, b = rig.a, rig.b
    pid = str(uuid.uuid4())
    digests = build_project(a, pid)
    queue(rig, pid)
    rb_spec = f"root@{rig.sql('SELECT ssh_server FROM project_hosts WHERE id=%s', (b.host_id,))[0][0]}"
    if state == "sending":
        # the killed send had already delivered s1
        snap = a.project_path(pid) / ".snapshots" / "s1"
        uid = subprocess.run(["btrfs", "subvolume", "show", str(snap)], capture_output=True, text=True).stdout
        uid = next(line.split()[-1] for line in uid.splitlines() if line.strip().startswith("UUID:"))
        stream = subprocess.run(["btrfs", "send", "-q", str(snap)], capture_output=True, check=True).stdout
        assert ssh_to(a, rig.rb, f"receive {pid} s1 snapshot none {uid}", input=stream,
                      ticket=a.hub.ticket(pid, a, b)).returncode == 0
    if state in ("finalizing", "done"):
        a.cli("move", "send", pid, "--to", rb_spec, "--snapshot", "move-crash")
    if state == "finalizing":
        # finalize had created the project, then died
        incoming = b.pool / "_incoming" / pid
        (incoming / ".finalizing").write_text("x")
        subprocess.run(["btrfs", "subvolume", "snapshot", str(incoming / "move-crash"), str(b.project_path(pid))],
                       check=True, capture_output=True)
    if state == "done":
        b.cli("move", "finalize", pid)
        rig.sql("UPDATE projects SET host_id=%s WHERE project_id=%s", (b.host_id, pid))
    _crash_left(rig, pid, state)
    assert a.project_path(pid).exists() and tree_digest(a.project_path(pid) / ".snapshots" / "s2") == digests["s2"]
    rig.cli("move", "worker", "--once")
    assert_done(rig, pid, digests)


def _wait_state(rig, pid, state, timeout=60):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        row = rig.move_row(pid)
        if row["state"] == state:
            return row
        time.sleep(0.1)
    pytest.fail(f"move never reached {state}: {rig.move_row(pid)}")


@pytest.mark.parametrize("victim", ["worker", "send"])
def test_sigkill_during_send_then_restart_completes(rig, victim):
    a, b = rig.a, rig.b
    pid = str(uuid.uuid4())
    digests = build_project(a, pid)
    queue(rig, pid)
    # 512 KiB/s: the 6 MiB of s1 take 12 s, so the kill (right after the first progress report, which
    # comes with the worker's heartbeat, under a second in) surely lands mid-stream, before s1 is done
    rig.write_config(**{"move.bwlimit": "512K"})
    with rig.spawned("move", "worker", "--once") as w:
        _wait_state(rig, pid, "sending")
        # while the stream runs, the worker publishes its progress into the hub row
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            live = rig.move_row(pid)["progress"]
            if live and live.get("bytes"):
                break
            time.sleep(0.1)
        assert live and live["event"] == "progress" and live["snapshot"] == "s1" and live["bytes"] > 0, live
        if victim == "worker":
            os.killpg(w.pid, signal.SIGKILL)  # the worker and everything it started
        else:
            sends = [c for c in children(w.pid) if " move send " in cmdline(c)]
            assert sends, "no send process found"
            os.kill(sends[0], signal.SIGKILL)
        w.wait(timeout=60)
    row = rig.move_row(pid)
    assert row["state"] == "sending" and row["attempt"] == 1
    assert a.project_path(pid).exists() and not b.project_path(pid).exists()  # source intact
    rig.write_config()
    rig.wait_claimable(pid)  # the dead worker's lease / the retry back-off expires
    rig.cli("move", "worker", "--once")
    assert_done(rig, pid, digests)
    assert rig.move_row(pid)["attempt"] == 2


def test_move_gives_up_after_max_attempts_and_leaves_the_source_intact(rig):
    a, b = rig.a, rig.b
    pid = str(uuid.uuid4())
    digests = build_project(a, pid)
    queue(rig, pid)
    rig.write_config(**{"move.max_attempts": 1})
    closed = rig.sql("SELECT ssh_server FROM project_hosts WHERE id=%s", (b.host_id,))[0][0].split(":")[0] + ":1"
    rig.sql("UPDATE project_hosts SET ssh_server=%s WHERE id=%s", (closed, b.host_id))
    rig.cli("move", "worker", "--once")
    row = rig.move_row(pid)
    assert row["state"] == "failing" and "sending failed" in row["status_reason"] and row["cleaned_at"]
    assert tree_digest(a.project_path(pid)) == digests["live"]
    assert rig.sql("SELECT host_id::text FROM projects WHERE project_id=%s", (pid,))[0][0] == a.host_id
    assert not b.project_path(pid).exists() and not (b.pool / "_incoming" / pid).exists()


def test_cancel_before_finalizing_rolls_back_the_destination(rig):
    a, b = rig.a, rig.b
    pid = str(uuid.uuid4())
    digests = build_project(a, pid)
    queue(rig, pid)
    rb_spec = f"root@{rig.sql('SELECT ssh_server FROM project_hosts WHERE id=%s', (b.host_id,))[0][0]}"
    a.cli("move", "send", pid, "--to", rb_spec, "--snapshot", "move-c")  # as if the worker had sent
    rig.sql("UPDATE project_moves SET state='sending' WHERE project_id=%s", (pid,))
    assert json.loads(rig.cli("--json", "move", "cancel", pid).stdout)["state"] == "cancelled"
    rig.cli("move", "worker", "--once")
    row = rig.move_row(pid)
    assert row["state"] == "cancelled" and row["cleaned_at"] is not None
    assert not (b.pool / "_incoming" / pid).exists() and not b.project_path(pid).exists()
    assert tree_digest(a.project_path(pid) / ".snapshots" / "s3") == digests["s3"]
    # a finalizing move can no longer be cancelled
    rig.sql("UPDATE project_moves SET state='finalizing', cleaned_at=NULL WHERE project_id=%s", (pid,))
    assert rig.cli("move", "cancel", pid, check=False).returncode == 5


def test_worker_over_ssh_transport_runs_host_steps_through_the_forced_command(rig, pair):
    a, b, rb, ra = pair
    hub_data = rig.base / "data"
    ra.allow_worker(hub_data)
    rb.allow_worker(hub_data)
    rig.write_config(**{"move.transport": "ssh", "move.host_user": "root"})
    pid = str(uuid.uuid4())
    digests = build_project(a, pid)
    queue(rig, pid)
    rig.cli("move", "worker", "--once")
    assert_done(rig, pid, digests)
    # the host-step forced command refuses anything but its verbs
    from tests.support.move import ssh_to

    class _Key:  # ssh_to wants a Host-like object with .data holding the known_hosts
        data = hub_data

    res = ssh_to(_Key, ra, f"project delete {pid}", key=hub_data / "secrets" / "hub" / "hub_key")
    assert res.returncode == 2 and b"refused" in res.stderr


def test_worker_with_concurrency_moves_two_projects_at_once(rig):
    a = rig.a
    pids = [str(uuid.uuid4()) for _ in range(2)]
    digests = {p: build_project(a, p) for p in pids}
    for p in pids:
        queue(rig, p)
    out = json.loads(rig.cli("--json", "move", "worker", "--once", "--concurrency", "2").stdout)
    assert sorted(p["state"] for p in out["processed"]) == ["done", "done"]
    for p in pids:
        assert_done(rig, p, digests[p])


def test_hub_key_rotation_in_the_middle_of_a_queue_fails_no_move(rig):
    """Rotate the hub key while the worker works through a queue, the hosts picking up each published
    key set late (as `keys sync` would): no step is refused, every move ends done at its first attempt."""
    from tests.support.move import pinned_hub_keys

    a = rig.a
    pids = [str(uuid.uuid4()) for _ in range(3)]
    digests = {p: build_project(a, p) for p in pids}
    for p in pids:
        queue(rig, p)
    old = rig.hub_public_keys()
    rig_key = a.hub.public
    with rig.spawned("move", "worker", "--once") as w:
        _wait_state(rig, pids[0], "done", timeout=300)
        rotated = json.loads(rig.cli("--json", "hub", "keys", "rotate").stdout)
        assert rotated["action"] == "rotated" and rotated["previous_fingerprint"]
        published = rig.hub_public_keys()
        assert len(published) == 2 and published[1] == old[0] and published[0] != old[0]
        # the next move's send, signed with both keys, is accepted by hosts that pinned only the old one
        deadline = time.monotonic() + 300
        while rig.move_row(pids[1])["state"] not in ("finalizing", "done"):
            assert time.monotonic() < deadline, rig.move_row(pids[1])
            time.sleep(0.1)
        assert old[0] in pinned_hub_keys(rig.b) and published[0] not in pinned_hub_keys(rig.b)
        rig.pin_published_hub_keys(rig_key)
        _wait_state(rig, pids[1], "done", timeout=300)
        assert json.loads(rig.cli("--json", "hub", "keys", "rotate", "--finish").stdout)["action"] == "finished"
        assert rig.hub_public_keys() == published[:1]
        rig.pin_published_hub_keys(rig_key)
        out, err = w.communicate(timeout=600)
        assert w.returncode == 0, err
    for p in pids:
        assert_done(rig, p, digests[p])
        row = rig.move_row(p)
        assert row["attempt"] == 1 and row["status_reason"] is None, row
    assert old[0] not in pinned_hub_keys(rig.b) and published[0] in pinned_hub_keys(rig.b)


def test_worker_started_as_bin_cocalc_ctl_runs_host_steps_with_the_same_program(rig, workdir):
    """bin/cocalc-ctl may run under a system python3 that gets the venv's packages only in-process:
    the host steps must be started the same way, not as `sys.executable -m cocalc_ctl`."""
    from tests.support.hosts import REPO

    pid = str(uuid.uuid4())
    digests = build_project(rig.a, pid)
    queue(rig, pid)
    env = {k: v for k, v in rig.a.env.items() if k != "COCALC_CTL_CONFIG"}
    elsewhere = workdir / "cwd"
    elsewhere.mkdir()
    res = subprocess.run([str(REPO / "bin" / "cocalc-ctl"), "--config", str(rig.config_path), "--json", "move",
                          "worker", "--once"], cwd=str(elsewhere), env=env, capture_output=True, text=True,
                         timeout=600)
    assert res.returncode == 0, res.stderr
    out = json.loads(res.stdout)
    assert [p["state"] for p in out["processed"]] == ["done"], out
    assert_done(rig, pid, digests)


def test_status_reason_of_a_finished_clean_up_drops_the_old_clean_up_failure(rig):
    pid = str(uuid.uuid4())
    build_project(rig.a, pid)
    queue(rig, pid)
    assert json.loads(rig.cli("--json", "move", "cancel", pid).stdout)["state"] == "cancelled"
    # what a clean-up attempt that failed leaves behind: the reason the move ended, plus the failure
    rig.sql("UPDATE project_moves SET status_reason = 'cancelled by an admin; clean-up failed: boom' "
            "WHERE project_id = %s", (pid,))
    rig.cli("move", "worker", "--once")
    row = rig.move_row(pid)
    assert row["cleaned_at"] is not None and row["status_reason"] == "cancelled by an admin", row
