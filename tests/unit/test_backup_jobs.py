"""Job rows and stale detection (host sqlite only, no btrfs), and --path validation."""

from __future__ import annotations

import subprocess

import pytest

from cocalc_ctl import config, locks
from cocalc_ctl.actions.backup import repository as backup_repo, jobs as backups, restore
from cocalc_ctl.errors import InvalidInput
from cocalc_ctl.state import backup_jobs, host_db

PID = "0a0a0a0a-1111-4222-8333-444444444444"


@pytest.fixture
def cfg(tmp_path):
    (tmp_path / "c.yaml").write_text(f"data_dir: {tmp_path / 'data'}\nbtrfs_root: {tmp_path / 'pool'}\n"
                                     "backup:\n  stale_after: 60\n")
    return config.load(str(tmp_path / "c.yaml"), env={})


def _dead_pid() -> int:
    p = subprocess.Popen(["true"])
    p.wait()
    return p.pid


def test_job_lifecycle(cfg):
    with host_db.connect(cfg.data_dir) as conn:
        jid = backup_jobs.insert(conn, PID, "/r", 1)
        assert backup_jobs.get(conn, jid)["state"] == "pending"
        backup_jobs.set_running(conn, jid, "/snap", 17)
        backup_jobs.heartbeat(conn, jid)
        backup_jobs.finish(conn, jid, ok=True, backup_id="abc", bytes_=5, duration=1.5)
        row = backup_jobs.get(conn, jid)
        assert (row["state"], row["backup_id"], row["bytes"], row["generation"], row["duration"]) == (
            "succeeded", "abc", 5, 17, 1.5)
        # a finished job is never revived or re-finished
        backup_jobs.finish(conn, jid, ok=False, error="late")
        assert backup_jobs.get(conn, jid)["state"] == "succeeded"
        assert backup_jobs.last_success(conn)[PID]["id"] == jid


def test_job_of_dead_process_becomes_stale(cfg):
    with host_db.connect(cfg.data_dir) as conn:
        jid = backup_jobs.insert(conn, PID, "/r", _dead_pid())
        backup_jobs.set_running(conn, jid, None, None)
    (stale,) = backups.sweep_stale(cfg)
    assert stale.job_id == jid and stale.reason == "process gone"
    with host_db.connect(cfg.data_dir) as conn:
        row = backup_jobs.get(conn, jid)
    assert row["state"] == "failed" and row["error"] == "stale: process gone" and row["finished_at"]
    assert backups.sweep_stale(cfg) == []


def test_live_job_is_left_alone_until_its_heartbeat_is_too_old(cfg):
    import os

    with locks.hold(cfg.data_dir, backups.project_lock(PID)):
        with host_db.connect(cfg.data_dir) as conn:
            jid = backup_jobs.insert(conn, PID, "/r", os.getpid())
        assert backups.sweep_stale(cfg) == []
        with host_db.connect(cfg.data_dir) as conn:
            conn.execute("UPDATE backup_jobs SET heartbeat_at='2020-01-01T00:00:00+00:00' WHERE id=?", (jid,))
        (stale,) = backups.sweep_stale(cfg)
        assert stale.reason.startswith("no heartbeat") and stale.removed_snapshot is None


def test_job_with_reused_pid_is_stale_once_its_heartbeat_is_old(cfg):
    import os

    with host_db.connect(cfg.data_dir) as conn:
        jid = backup_jobs.insert(conn, PID, "/r", os.getpid())  # pid alive, but nobody holds the project lock
    assert backups.sweep_stale(cfg) == []
    with host_db.connect(cfg.data_dir) as conn:
        conn.execute("UPDATE backup_jobs SET heartbeat_at='2020-01-01T00:00:00+00:00' WHERE id=?", (jid,))
    (stale,) = backups.sweep_stale(cfg)
    assert stale.reason == "process gone"


@pytest.mark.parametrize("bad", ["", "/", "..", "a/../../b", ".snapshots/x", ".cocalc-ctl-persist", "a\x00b",
                                 ".cocalc-ctl-restore-1234/x", ".cocalc-ctl-backup.json"])
def test_restore_path_is_validated(bad):
    with pytest.raises(InvalidInput):
        restore._clean_rel_path(bad)


@pytest.mark.parametrize("good,clean", [("a/b", "a/b"), ("/a//b/", "a/b"), ("./x y/z", "x y/z"),
                                        ("new\nline", "new\nline")])
def test_restore_path_is_normalised(good, clean):
    assert restore._clean_rel_path(good) == clean


def test_repo_must_look_like_a_repository(cfg, tmp_path, monkeypatch):
    pw = tmp_path / "pw"
    pw.write_text("x")
    pw.chmod(0o600)
    for repo in ("relative/path", "rest:http://x/\n", "-rf"):
        bad = config.load(str(tmp_path / "c.yaml"), env={"COCALC_CTL_BACKUP_REPO": repo,
                                                         "COCALC_CTL_BACKUP_PASSWORD_FILE": str(pw)})
        with pytest.raises(InvalidInput):
            backup_repo.engine_for(bad)


def test_heartbeat_thread_updates_the_row(cfg):
    import time

    with host_db.connect(cfg.data_dir) as conn:
        jid = backup_jobs.insert(conn, PID, "/r", 1)
        conn.execute("UPDATE backup_jobs SET heartbeat_at='2020-01-01T00:00:00+00:00' WHERE id=?", (jid,))
    def beat_seen() -> bool:
        with host_db.connect(cfg.data_dir) as conn:
            return backup_jobs.get(conn, jid)["heartbeat_at"] > "2020-01-01T00:00:00+00:00"

    with backups.Heartbeat(cfg.data_dir, jid, 0.05):
        # a beat is due every 0.05 s; a loaded machine may start the thread late, so poll for it
        deadline = time.monotonic() + 30
        while not beat_seen():
            assert time.monotonic() < deadline, "no heartbeat within 30 s"
            time.sleep(0.05)
