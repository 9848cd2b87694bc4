"""A failed (or cancelled) move leaves nothing of itself on the source: when the worker marks it failed
it rolls back the destination and then has the source release the move's own snapshot and staged
stream files (`move release` under a `release` ticket). The project stays, a retry succeeds. Real
btrfs pools, the receiver sshd, PostgreSQL and the local transport."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import time
import uuid

import pytest

from tests.integration.move.test_move_pipe import assert_moved, build_project, tree_digest
from tests.integration.move.test_move_worker import _wait_state, assert_done, queue, rig  # noqa: F401 - fixture
from tests.support.procfs import cmdline

pytestmark = pytest.mark.integration

USER_SNAPSHOT = "move-20200101T000000Z"  # a user's snapshot that merely looks like a move snapshot


def snapshots(host, pid) -> list[str]:
    return sorted(os.listdir(host.project_path(pid) / ".snapshots"))


def move_log(host, pid) -> list[tuple]:
    with sqlite3.connect(host.data / "host.sqlite") as conn:
        return conn.execute("SELECT step, status, move_id, snapshot FROM move_log WHERE project_id=? ORDER BY id",
                            (pid,)).fetchall()


def assert_failed_and_released(rig, pid, digests, row):
    a, b = rig.a, rig.b
    assert row["state"] == "failing" and row["cleaned_at"] is not None, row
    name = row["snapshot_name"]
    assert name and name.startswith("move-")
    # the source: the project intact, its own snapshots and the look-alike kept, the move's snapshot gone
    assert tree_digest(a.project_path(pid)) == digests["live"]
    for s in ("s1", "s2", "s3"):
        assert tree_digest(a.project_path(pid) / ".snapshots" / s) == digests[s]
    assert snapshots(a, pid) == sorted(["s1", "s2", "s3", USER_SNAPSHOT])
    assert not (a.pool / "_streams" / pid).exists()
    assert ("release", "ok", name, name) in move_log(a, pid)
    assert rig.sql("SELECT host_id::text FROM projects WHERE project_id=%s", (pid,))[0][0] == a.host_id
    # the destination: rolled back
    assert not b.project_path(pid).exists() and not (b.pool / "_incoming" / pid).exists()
    assert not (b.pool / "_streams" / pid).exists()


def retry_succeeds(rig, pid, digests, mode):
    rig.write_config()
    rig.cli("move", "start", pid, "--mode", mode)
    rig.cli("move", "worker", "--once")
    assert_done(rig, pid, digests)
    assert rig.move_row(pid)["attempt"] == 1


def _user_lookalike(a, pid):
    subprocess.run(["btrfs", "subvolume", "snapshot", "-r", str(a.project_path(pid)),
                    str(a.project_path(pid) / ".snapshots" / USER_SNAPSHOT)], check=True, capture_output=True)


def test_staged_move_failed_at_the_receiver_releases_its_snapshot_and_streams_and_a_retry_succeeds(rig):
    a, b = rig.a, rig.b
    pid = str(uuid.uuid4())
    digests = build_project(a, pid)
    _user_lookalike(a, pid)
    rig.sql("INSERT INTO projects (project_id, host_id) VALUES (%s, %s)", (pid, a.host_id))
    rig.cli("move", "start", pid, "--mode", "staged", "--compress", "lz4")
    # the receiver refuses the first stream: its incoming dir (claimed by A) holds a directory named s1
    incoming = b.pool / "_incoming" / pid
    (incoming / "s1").mkdir(parents=True)
    (incoming / ".source").write_text(a.host_id + "\n")
    rig.write_config(**{"move.max_attempts": 1})
    rig.cli("move", "worker", "--once")
    row = rig.move_row(pid)
    assert "sending failed" in (row["status_reason"] or ""), row
    assert_failed_and_released(rig, pid, digests, row)
    retry_succeeds(rig, pid, digests, "staged")


def _receives_of(b, pid) -> list[int]:
    target = str(b.pool / "_incoming" / pid)
    out = []
    for d in os.listdir("/proc"):
        if d.isdigit():
            line = cmdline(int(d))
            if line.startswith("btrfs receive") and target in line:
                out.append(int(d))
    return out


def test_pipe_move_failed_mid_stream_releases_its_snapshot_and_a_retry_succeeds(rig):
    a, b = rig.a, rig.b
    pid = str(uuid.uuid4())
    digests = build_project(a, pid)
    _user_lookalike(a, pid)
    queue(rig, pid)
    # 512 KiB/s: the 6 MiB of s1 take 12 s; the destination's `btrfs receive` is killed mid-stream
    rig.write_config(**{"move.bwlimit": "512K", "move.max_attempts": 1})
    with rig.spawned("move", "worker", "--once") as w:
        _wait_state(rig, pid, "sending")
        deadline = time.monotonic() + 60
        receives = []
        while time.monotonic() < deadline:
            live = rig.move_row(pid)["progress"]
            receives = _receives_of(b, pid)
            if receives and live and live.get("bytes"):
                break
            time.sleep(0.1)
        assert receives, "no btrfs receive on the destination"
        for r in receives:
            os.kill(r, signal.SIGKILL)
        w.wait(timeout=180)
    row = rig.move_row(pid)
    assert "sending failed" in (row["status_reason"] or ""), row
    assert_failed_and_released(rig, pid, digests, row)
    retry_succeeds(rig, pid, digests, "pipe")


def test_release_deletes_only_the_moves_own_snapshot_and_needs_the_right_ticket(pair):
    """By hand: only a name this host's move log records as a send of the project; never a user's
    look-alike, never for a ticket of another project or host role."""
    a, b, _, _ = pair
    pid = str(uuid.uuid4())
    digests = build_project(a, pid)
    _user_lookalike(a, pid)
    res = a.cli("--json", "move", "release", pid, "--snapshot", USER_SNAPSHOT)
    assert json.loads(res.stdout)["deleted_snapshot"] is False
    assert USER_SNAPSHOT in snapshots(a, pid)
    assert a.cli("move", "release", pid, check=False).returncode == 2  # which snapshot? (no pattern, no default)
    other = str(uuid.uuid4())
    bad = a.hub.ticket(other, a, b, mode="pipe", snapshot=USER_SNAPSHOT, verbs=["release"])
    assert a.cli("move", "release", pid, "--ticket", bad, check=False).returncode == 2
    as_dest = a.hub.ticket(pid, b, a, mode="pipe", snapshot=USER_SNAPSHOT, verbs=["release"])
    assert a.cli("move", "release", pid, "--ticket", as_dest, check=False).returncode == 2
    assert snapshots(a, pid) == sorted(["s1", "s2", "s3", USER_SNAPSHOT])
    assert tree_digest(a.project_path(pid)) == digests["live"]


def test_a_failed_send_by_hand_without_a_ticket_takes_its_snapshot_away(make_host, workdir):
    """Backup mode needs no peer, so an operator runs it by hand without a hub ticket; when it fails (here:
    the repository was never initialised) the move snapshot it took goes again. (A pipe or staged send
    without a ticket is refused by the receiver before any snapshot is taken.)"""
    from tests.support.backup import backup_host
    from tests.support.move import make_project

    a = backup_host(make_host, workdir, "a", init_repo=False)
    pid = str(uuid.uuid4())
    make_project(a, pid, {"notes.txt": b"v1\n"})
    a.cli("snapshot", "create", pid, "s1")
    res = a.cli("move", "send", pid, "--mode", "backup", "--snapshot", "move-hand", check=False)
    assert res.returncode != 0, res.stdout
    assert snapshots(a, pid) == ["s1"]
    assert ("release", "ok", "move-hand", "move-hand") in move_log(a, pid)
    assert (a.project_path(pid) / "notes.txt").read_bytes() == b"v1\n"
