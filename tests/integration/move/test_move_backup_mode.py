"""`move --mode backup`: backup on the source, restore on the destination, through one repository
(a real restic REST server, `rclone serve restic`), real btrfs, real PostgreSQL and the worker.

The two hosts never talk to each other here (no sshd at all): the worker carries the backup id.
"""

from __future__ import annotations

import json
import os
import re
import signal
import time
import uuid

import pytest

from tests.integration.move.test_move_pipe import build_project, quota_of, set_quota, tree_digest
from tests.support.backup import ResticControl, backup_host, has_file_data, rclone_rest_server, restic
from tests.support.move_hub import make_hub_rig
from tests.support.ops import check_golden
from tests.support.procfs import exe

pytestmark = pytest.mark.integration


@pytest.fixture
def rest_repo(workdir):
    with rclone_rest_server(workdir / "rest-repo") as (url, _):
        yield url


@pytest.fixture
def hosts(make_host, workdir, rest_repo):
    a = backup_host(make_host, workdir, "a", repo=rest_repo)
    b = backup_host(make_host, workdir, "b", repo=rest_repo, init_repo=False)
    return a, b


@pytest.fixture
def rig(hosts, hub_dsn, workdir):
    a, b = hosts
    return make_hub_rig(hub_dsn, workdir / "hub", a, b, 22, 22)


def queue(rig, pid):
    rig.sql("INSERT INTO projects (project_id, host_id) VALUES (%s, %s)", (pid, rig.a.host_id))
    bad = rig.cli("move", "start", pid, "--mode", "backup", "--compress", "zstd", check=False)
    assert bad.returncode == 2 and "does not apply" in bad.stderr  # nothing to compress: no stream
    out = json.loads(rig.cli("--json", "move", "start", pid, "--to", rig.b.host_id, "--mode", "backup").stdout)
    assert out["state"] == "queued" and out["mode"] == "backup" and out["backup_id"] is None
    return out


def move_backups(host, pid) -> list[dict]:
    """The project's backups in the repository that a move made (tagged move:<snapshot uuid>)."""
    snaps = json.loads(restic(host, "snapshots", "--json", "--tag", f"project:{pid}").stdout) or []
    return [s for s in snaps if any(t.startswith("move:") for t in s.get("tags") or [])]


def assert_done(rig, pid, digests):
    a, b = rig.a, rig.b
    row = rig.move_row(pid)
    assert row["state"] == "done" and row["cleaned_at"] is not None, row
    assert row["backup_id"] and re.fullmatch(r"[0-9a-f]{64}", row["backup_id"])
    host, status = rig.sql("SELECT host_id::text, move_status FROM projects WHERE project_id=%s", (pid,))[0]
    assert host == b.host_id and status["state"] == "done" and status["backup_id"] == row["backup_id"]
    # the content, overlay upper dir and persist store arrived; the snapshots did not (documented)
    assert tree_digest(b.project_path(pid)) == digests["live"]
    assert (b.data / "sync" / "projects" / pid / "state.db").read_bytes() == b"persisted\n"
    shown = b.json("project", "show", pid)
    assert shown["state"] == "stopped" and shown["snapshots"] == []
    assert not (b.pool / "_incoming" / pid).exists()
    assert not any((b.pool / ".restore-staging").iterdir())
    assert not a.project_path(pid).exists()  # the source is cleaned only after done
    # exactly one backup was made for the move, and it is the one restored
    made = move_backups(a, pid)
    assert [s["id"] for s in made] == [row["backup_id"]], made


def test_worker_moves_a_project_by_backup_and_restore(rig):
    pid = str(uuid.uuid4())
    digests = build_project(rig.a, pid)
    set_quota(rig.a, pid, 77 << 20)
    queue(rig, pid)
    out = json.loads(rig.cli("--json", "move", "worker", "--once").stdout)
    assert [p["state"] for p in out["processed"]] == ["done"]
    assert_done(rig, pid, digests)
    assert quota_of(rig.b, pid) == 77 << 20  # the project keeps its own limit, not B's default
    row = rig.move_row(pid)
    assert row["attempt"] == 1 and row["progress"]["reused"] is False and row["progress"]["bytes"] > 6 << 20
    assert restic(rig.a, "check", check=False).returncode == 0


def test_host_side_by_hand_send_prints_the_id_and_finalize_is_idempotent(hosts):
    a, b = hosts
    pid = str(uuid.uuid4())
    digests = build_project(a, pid)
    sent = a.cli("move", "send", pid, "--mode", "backup", "--snapshot", "move-hand")
    bid = re.search(r"backup ([0-9a-f]{64})", sent.stdout).group(1)
    assert f"move finalize {pid} --from-backup {bid}" in sent.stdout
    # a rerun of the same move (snapshot unchanged) reuses the backup instead of making a second one
    again = json.loads(a.cli("--json", "move", "send", pid, "--mode", "backup", "--snapshot", "move-hand")
                       .stdout.strip().splitlines()[-1])
    assert again["backup_id"] == bid and again["reused"] is True
    assert len(move_backups(a, pid)) == 1
    assert a.project_path(pid).exists()  # the source stays until cleanup
    # pipe-mode options make no sense here
    assert a.cli("move", "send", pid, "--mode", "backup", "--to", "root@127.0.0.3:22", check=False).returncode == 2
    fin = b.json("move", "finalize", pid, "--from-backup", bid[:12])
    assert fin["backup_id"] == bid and fin["already_finalized"] is False and fin["persist_restored"] is True
    assert tree_digest(b.project_path(pid)) == digests["live"]
    for given in (bid, bid[:8]):
        assert b.json("move", "finalize", pid, "--from-backup", given)["already_finalized"] is True
    # a project this host has for another reason is never restored over
    other = str(uuid.uuid4())
    b.cli("project", "create", other)
    (b.project_path(other) / "mine").write_text("keep")
    a.cli("project", "create", other)
    obid = re.search(r"backup ([0-9a-f]{64})", a.cli("move", "send", other, "--mode", "backup").stdout).group(1)
    res = b.cli("move", "finalize", other, "--from-backup", obid, check=False)
    assert res.returncode == 1 and "already exists" in res.stderr
    assert (b.project_path(other) / "mine").read_text() == "keep"
    # a backup of another project is not found under this project's tag
    stranger = str(uuid.uuid4())
    res = b.cli("move", "finalize", stranger, "--from-backup", bid, check=False)
    assert res.returncode == 3 and "same backup.repo" in res.stderr
    assert not (b.pool / "_incoming" / stranger).exists() and not b.project_path(stranger).exists()


@pytest.mark.parametrize("failpoint", ["engine-restored", "verified"])
def test_finalize_killed_mid_restore_resumes_or_aborts_cleanly(hosts, failpoint):
    a, b = hosts
    pid = str(uuid.uuid4())
    digests = build_project(a, pid)
    bid = re.search(r"backup ([0-9a-f]{64})", a.cli("move", "send", pid, "--mode", "backup").stdout).group(1)
    res = b.cli("move", "finalize", pid, "--from-backup", bid, check=False, env={"CCTL_FAILPOINT": failpoint})
    assert res.returncode == -9
    marker = b.pool / "_incoming" / pid / ".finalizing"
    assert json.loads(marker.read_text()) == {"backup_id": bid, "phase": "restoring"}
    # a btrfs-mode finalize does not take over a backup-mode one
    assert b.cli("move", "finalize", pid, check=False).returncode == 5
    if failpoint == "verified":  # the worker's roll-back: nothing of the move stays on the destination
        b.cli("move", "abort", pid)
        assert not b.project_path(pid).exists() and not (b.pool / "_incoming" / pid).exists()
        assert not any((b.pool / ".restore-staging").iterdir())
        assert not (b.data / "sync" / "projects" / pid).exists()
    else:  # a rerun resumes
        assert b.json("move", "finalize", pid, "--from-backup", bid)["already_finalized"] is False
        assert tree_digest(b.project_path(pid)) == digests["live"] and not marker.exists()
        assert not any((b.pool / ".restore-staging").iterdir())


def test_finalize_refused_on_the_destination_leaves_the_source_intact(rig):
    a, b = rig.a, rig.b
    pid = str(uuid.uuid4())
    digests = build_project(a, pid)
    b.cli("project", "create", pid)  # the destination already has a project with this id
    (b.project_path(pid) / "theirs").write_text("do not touch")
    queue(rig, pid)
    rig.write_config(**{"move.max_attempts": 1})
    rig.cli("move", "worker", "--once")
    row = rig.move_row(pid)
    assert row["state"] == "failing" and "already exists" in row["status_reason"] and row["cleaned_at"], row
    assert tree_digest(a.project_path(pid)) == digests["live"]
    assert rig.sql("SELECT host_id::text FROM projects WHERE project_id=%s", (pid,))[0][0] == a.host_id
    assert (b.project_path(pid) / "theirs").read_text() == "do not touch"  # the roll-back kept it


def test_restarted_worker_reuses_the_backup_a_killed_send_had_made(rig):
    """The window between the source's backup and the hub's write: no second backup."""
    a = rig.a
    pid = str(uuid.uuid4())
    digests = build_project(a, pid)
    queue(rig, pid)
    a.cli("move", "send", pid, "--mode", "backup", "--snapshot", "move-crash")
    rig.sql("UPDATE project_moves SET state='sending', snapshot_name='move-crash', attempt=1, "
            "lease_owner='dead-worker', lease_until=now() - interval '1 second' WHERE project_id=%s", (pid,))
    rig.cli("move", "worker", "--once")
    assert_done(rig, pid, digests)
    assert rig.move_row(pid)["progress"]["reused"] is True


def _session_restics(sid: int) -> list[int]:
    """The real restic processes (not a wrapper script) in session `sid`."""
    out = []
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            stat = open(f"/proc/{d}/stat").read()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2:].split()
        if int(fields[3]) == sid and os.path.basename(exe(int(d))) == "restic":  # field 6 of stat: session id
            out.append(int(d))
    return out


@pytest.mark.parametrize("state", ["sending", "finalizing"])
def test_sigkill_of_the_worker_mid_step_resumes_without_a_second_backup(rig, workdir, state):
    a, b = rig.a, rig.b
    pid = str(uuid.uuid4())
    digests = build_project(a, pid)
    with open(a.project_path(pid) / "data" / "bulk.bin", "wb") as fh:  # big enough to be killed mid-engine
        for _ in range(48):
            fh.write(os.urandom(1 << 20))
    digests["live"] = tree_digest(a.project_path(pid))
    queue(rig, pid)
    # the step to kill moves its data at 2 MiB/s (restic's own limit): it runs for half a minute,
    # so the kill lands in the middle of it, after restic has locked the repository and written data
    slow = ResticControl(workdir / "slow-restic", **({"upload_kib": 2048} if state == "sending"
                                                      else {"download_kib": 2048}))
    if state == "sending":
        in_the_step = lambda: has_file_data(workdir / "rest-repo" / "locks")  # noqa: E731
    else:  # the restore has started writing the project into its staging
        in_the_step = lambda: has_file_data(b.pool / ".restore-staging")  # noqa: E731
    with rig.spawned("move", "worker", "--once", env=slow.env) as w:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if rig.move_row(pid)["state"] == state and _session_restics(w.pid) and in_the_step():
                break
            assert w.poll() is None, w.communicate()
            time.sleep(0.02)
        else:
            pytest.fail(f"restic never ran in {state}: {rig.move_row(pid)}")
        os.killpg(w.pid, signal.SIGKILL)  # the worker and everything it started
        w.wait(timeout=60)
    row = rig.move_row(pid)
    assert row["state"] == state and row["attempt"] == 1, row
    assert (row["backup_id"] is None) == (state == "sending")
    assert a.project_path(pid).exists() and tree_digest(a.project_path(pid)) == digests["live"]  # source intact
    assert rig.sql("SELECT host_id::text FROM projects WHERE project_id=%s", (pid,))[0][0] == a.host_id
    rig.wait_claimable(pid)  # the dead worker's lease expires
    rig.cli("move", "worker", "--once")
    assert_done(rig, pid, digests)
    assert rig.move_row(pid)["attempt"] == 2
    assert restic(a, "check", check=False).returncode == 0


PLAN_PID = "55555555-5555-4555-8555-555555555555"


def test_backup_mode_dry_run_plans(hosts):
    a, b = hosts

    def norm(text: str) -> str:
        text = text.replace(str(a.base.parent), "$TMP").replace(a.host_id, "$A").replace(b.host_id, "$B")
        text = re.sub(r"\b[0-9a-f]{64}\b", "$BACKUP_ID", text)
        return re.sub(r"rest:http://127\.0\.0\.1:\d+/", "rest:$REPO", text)

    a.cli("project", "create", PLAN_PID)
    (a.project_path(PLAN_PID) / "notes.md").write_text("hello\n")
    res = a.cli("--dry-run", "move", "send", PLAN_PID, "--mode", "backup", "--snapshot", "move-plan")
    check_golden("plans/move-send-backup.txt", norm(res.stdout))
    assert not (a.project_path(PLAN_PID) / ".snapshots" / "move-plan").exists() and move_backups(a, PLAN_PID) == []
    bid = re.search(r"backup ([0-9a-f]{64})",
                    a.cli("move", "send", PLAN_PID, "--mode", "backup", "--snapshot", "move-plan").stdout).group(1)
    res = b.cli("--dry-run", "move", "finalize", PLAN_PID, "--from-backup", bid)
    check_golden("plans/move-finalize-backup.txt", norm(res.stdout))
    assert not b.project_path(PLAN_PID).exists() and not (b.pool / "_incoming" / PLAN_PID).exists()
