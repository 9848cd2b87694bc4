"""Crashes (SIGKILL mid-backup, mid-restore at every step), concurrency (per-project lock, host
cap) and error cases (wrong password, missing repository, full disk) with real restic and btrfs."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import time

import pytest

from tests.support.backup import PID_A, PID_B, ResticControl, backup_host, has_file_data, jobs, restic, tree_digest, \
    wait_for
from tests.support.hosts import CLI, REPO
from tests.support.procfs import children, exe

pytestmark = pytest.mark.integration


def _spawn(h, *args: str, env: dict | None = None) -> subprocess.Popen:
    e = h.env
    if env:
        e.update(env)
    return subprocess.Popen([*CLI, *args], env=e, cwd=str(REPO), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)


def _big_file(path, mb: int) -> None:
    with open(path, "wb") as fh:
        for _ in range(mb):
            fh.write(os.urandom(1 << 20))


def test_sigkill_mid_backup_marks_job_stale_and_removes_snapshot(make_host, workdir):
    h = backup_host(make_host, workdir)
    h.cli("project", "create", PID_A)
    live = h.project_path(PID_A)
    _big_file(live / "big.bin", 60)
    # restic uploads at 2 MiB/s: the 60 MiB backup runs for half a minute, so the kill surely lands mid-run
    slow = ResticControl(workdir / "slow-restic", upload_kib=2048)
    p = _spawn(h, "backup", "create", PID_A, env=slow.env)
    tmp = live / ".snapshots" / ".backup-tmp" / "project"
    locks = workdir / "repo" / "locks"

    def engine_at_work() -> list[int]:
        """The real restic (not its wrapper) running for the job, once it holds its repository lock."""
        found = [c for c in children(p.pid) if os.path.basename(exe(c)) == "restic"]
        return found if found and tmp.is_dir() and has_file_data(locks) else []

    engine = wait_for(engine_at_work, timeout=120)
    os.kill(p.pid, signal.SIGKILL)
    p.wait()
    assert jobs(h)[-1]["state"] == "running"
    # the engine dies with its job (no orphan keeps the repository locked); restic counts a lock as
    # stale only once its process is reaped, not while it is a zombie, so wait until it is not listed
    wait_for(lambda: not os.path.exists(f"/proc/{engine[0]}"), timeout=30)
    assert tmp.is_dir() and jobs(h)[-1]["state"] == "running"
    assert oct(os.stat(tmp.parent).st_mode & 0o777) == "0o700"  # the project's users cannot reach it

    st = h.json("backup", "status")
    assert st["stale"] and st["stale"][0]["removed_snapshot"]
    row = jobs(h)[-1]
    assert row["state"] == "failed" and row["error"].startswith("stale")
    assert not tmp.exists() and not tmp.parent.exists()
    chk = restic(h, "check", check=False)
    assert chk.returncode == 0, (chk.stdout, chk.stderr, st)
    # and the next backup works
    assert h.json("backup", "list", PID_A) == []
    h.cli("backup", "create", PID_A)
    assert jobs(h)[-1]["state"] == "succeeded"


def test_sigkill_restore_at_every_step_leaves_old_or_new(make_host, workdir):
    h = backup_host(make_host, workdir)
    h.cli("project", "create", PID_A)
    live = h.project_path(PID_A)
    persist = h.data / "sync" / "projects" / PID_A
    persist.mkdir(parents=True)
    versions = {}
    for v in ("v1", "v2"):
        for i in range(50):
            (live / f"f{i}").write_text(f"{v} {i}\n" * 100)
        (live / v).write_text(v)
        _big_file(live / "big.bin", 24)  # restic takes a while over it: the SIGKILL below lands mid-restore
        for old in versions:
            (live / old).unlink(missing_ok=True)
        (persist / "state").write_text(v)
        bid = json.loads(h.cli("--json", "backup", "create", PID_A).stdout.splitlines()[-1])["backup_id"]
        versions[v] = (bid, tree_digest(live))
    h.cli("snapshot", "create", PID_A, "s")
    staging_root = h.pool / ".restore-staging"
    current = "v2"
    for point in ("engine-restoring", "engine-restored", "verified", "snapshots-moved", "live-set-aside",
                  "staging-swapped-in", "persist-set-aside"):
        target = "v1" if current == "v2" else "v2"
        if point == "engine-restoring":  # kill while restic is writing into staging
            # restic reads the repository at 2 MiB/s: the ~25 MiB restore takes over ten seconds,
            # so the kill surely lands while it runs, once it has written the first data
            slow = ResticControl(workdir / f"slow-restic-{target}", download_kib=2048)
            p = _spawn(h, "restore", PID_A, versions[target][0], env=slow.env)
            staging = staging_root / f"project-{PID_A}"
            engine = wait_for(lambda: [c for c in children(p.pid) if os.path.basename(exe(c)) == "restic"]
                              if has_file_data(staging) else [], timeout=120)
            os.kill(p.pid, signal.SIGKILL)
            rc = p.wait()
            wait_for(lambda: not os.path.exists(f"/proc/{engine[0]}"), timeout=30)  # it dies with its job
        else:
            p = _spawn(h, "restore", PID_A, versions[target][0], env={"CCTL_FAILPOINT": point})
            rc = p.wait()
        assert rc == -signal.SIGKILL, (point, rc, p.stderr.read())
        # at the crash: whole trees only, the live project is old or new (or set aside whole)
        digests = {versions["v1"][1].__repr__(), versions["v2"][1].__repr__()}
        if live.exists():
            assert repr(tree_digest(live)) in digests, point
        else:
            assert point == "live-set-aside"
            assert repr(tree_digest(staging_root / f"project-{PID_A}.old")) in digests
        # the next run finishes a verified restore, or drops an unverified one
        mark = staging_root / f".restore_in_progress.{PID_A}"
        verified = mark.exists() and json.loads(mark.read_text())["phase"] == "verified"
        assert verified == (point not in ("engine-restoring", "engine-restored")), point
        h.cli("backup", "cleanup")
        expected = target if verified else current
        assert tree_digest(live) == versions[expected][1], point
        assert (persist / "state").read_text() == expected, point
        assert os.listdir(staging_root) == [], point
        assert os.listdir(live / ".snapshots") == ["s"], point
        assert sorted(os.listdir(persist.parent)) == [PID_A], point
        current = expected
    # a marker update cut short (its temporary file) is removed too
    (staging_root / f".restore_in_progress.{PID_A}.tmp").write_text('{"pha')
    h.cli("backup", "cleanup")
    assert os.listdir(staging_root) == []
    # a leftover is also cleaned by the next restore itself
    p = _spawn(h, "restore", PID_A, versions["v1"][0], env={"CCTL_FAILPOINT": "engine-restored"})
    p.wait()
    assert os.listdir(staging_root)
    h.cli("restore", PID_A, versions["v2"][0])
    assert tree_digest(live) == versions["v2"][1] and os.listdir(staging_root) == []


def test_concurrent_backups_of_one_project_one_wins(make_host, workdir):
    h = backup_host(make_host, workdir)
    h.cli("project", "create", PID_A)
    _big_file(h.project_path(PID_A) / "big.bin", 40)
    gate = ResticControl(workdir / "gated-restic", gate=True)  # the first backup's engine waits for us
    p = _spawn(h, "backup", "create", PID_A, env=gate.env)
    gate.wait_held(1)
    assert [r["state"] for r in jobs(h)] == ["running"]
    second = h.cli("backup", "create", PID_A, check=False)
    assert second.returncode == 4 and "busy" in second.stderr and second.stderr.count("\n") == 1
    restore = h.cli("restore", PID_A, "latest", check=False)
    assert restore.returncode == 4
    gate.release()
    assert p.wait() == 0, p.stderr.read()
    assert [r["state"] for r in jobs(h)] == ["succeeded"]
    assert restic(h, "check").returncode == 0


def test_host_cap_runs_backups_one_after_the_other(make_host, workdir):
    h = backup_host(make_host, workdir, backup={"max_concurrent": 1})
    for pid in (PID_A, PID_B):
        h.cli("project", "create", pid)
        _big_file(h.project_path(pid) / "big.bin", 25)
    gate = ResticControl(workdir / "gated-restic", gate=True)  # engines wait until both jobs are recorded
    procs = [_spawn(h, "backup", "create", pid, env=gate.env) for pid in (PID_A, PID_B)]
    gate.wait_held(1)
    # one job holds the only slot (its engine is held back), the other queues behind it
    wait_for(lambda: sorted(r["state"] for r in jobs(h)) == ["pending", "running"], timeout=60)
    assert gate.held() == 1
    gate.release()
    while any(p.poll() is None for p in procs):
        states = [r["state"] for r in jobs(h)]
        assert states.count("running") <= 1, states
        time.sleep(0.02)
    assert [p.returncode for p in procs] == [0, 0], [p.stderr.read() for p in procs]
    assert gate.held() == 2  # both engines ran, one after the other
    assert [r["state"] for r in jobs(h)] == ["succeeded", "succeeded"]
    # --no-wait refuses instead of queueing
    gate = ResticControl(workdir / "gated-restic-2", gate=True)
    p = _spawn(h, "backup", "create", PID_A, env=gate.env)
    gate.wait_held(1)
    assert jobs(h)[-1]["state"] == "running" and jobs(h)[-1]["project_id"] == PID_A
    r = h.cli("backup", "create", PID_B, "--no-wait", check=False)
    assert r.returncode == 4 and "max_concurrent" in r.stderr
    gate.release()
    assert p.wait() == 0, p.stderr.read()
    assert [r["state"] for r in jobs(h)] == ["succeeded"] * 3  # the refused run left no failed job


def test_errors_are_one_line_with_exit_codes_and_leave_project_untouched(make_host, workdir):
    h = backup_host(make_host, workdir, size="600M")
    h.cli("project", "create", PID_A)
    live = h.project_path(PID_A)
    _big_file(live / "big.bin", 150)
    (live / "small").write_text("x")
    h.cli("backup", "create", PID_A)
    before = tree_digest(live)

    good_pw = h.extra_config["backup"]["password_file"]
    wrong = workdir / "secrets" / "wrong"
    wrong.write_text("nope\n")
    os.chmod(wrong, 0o600)
    h.write_config(backup={**h.extra_config["backup"], "password_file": str(wrong)})
    for args in (("backup", "create", PID_A), ("restore", PID_A, "latest"), ("backup", "list", PID_A)):
        r = h.cli(*args, check=False)
        assert r.returncode == 5 and "wrong password" in r.stderr and r.stderr.count("\n") == 1, r.stderr
    os.chmod(wrong, 0o644)
    r = h.cli("backup", "list", PID_A, check=False)
    assert r.returncode == 5 and "chmod 600" in r.stderr

    h.write_config(backup={**h.extra_config["backup"], "password_file": good_pw,
                           "repo": str(workdir / "no-such-repo")})
    for args in (("backup", "create", PID_A), ("restore", PID_A, "latest")):
        r = h.cli(*args, check=False)
        assert r.returncode == 5 and "backup init" in r.stderr and r.stderr.count("\n") == 1, r.stderr
    assert not (live / ".snapshots" / ".backup-tmp").exists()
    assert jobs(h)[-1]["state"] == "failed"

    # full disk during the restore: the staging fills up, the live project stays as it was
    h.write_config(backup={**h.extra_config["backup"], "repo": str(workdir / "repo")})
    filler = h.pool / "filler"
    with open(filler, "wb") as fh:
        try:
            while True:
                fh.write(os.urandom(1 << 20))
                fh.flush()
        except OSError:
            pass
    os.truncate(filler, max(0, os.path.getsize(filler) - (60 << 20)))
    subprocess.run(["btrfs", "filesystem", "sync", str(h.pool)], check=True)
    r = h.cli("restore", PID_A, "latest", check=False)
    assert r.returncode == 1 and r.stderr.count("\n") == 1 and "no space left" in r.stderr, r.stderr
    assert tree_digest(live) == before
    assert os.listdir(h.pool / ".restore-staging") == []
    assert h.cli("restore", PID_A, "nothex!", check=False).returncode == 2
    assert h.cli("restore", "not-a-uuid", "latest", check=False).returncode == 2
    assert h.cli("restore", PID_A, "deadbeef", check=False).returncode == 3
    with sqlite3.connect(str(h.data / "host.sqlite")) as db:
        db.execute("UPDATE projects SET state='running' WHERE project_id=?", (PID_A,))
    r = h.cli("restore", PID_A, "latest", check=False)
    assert r.returncode == 4 and "is running" in r.stderr


def test_full_pool_during_backup_is_one_line_and_the_job_records_why(make_host, workdir):
    h = backup_host(make_host, workdir, size="300M")
    h.cli("project", "create", PID_A)
    (h.project_path(PID_A) / "small").write_text("x")
    filler = h.pool / "filler"
    with open(filler, "wb") as fh:  # fill data and metadata: small files until nothing fits
        try:
            while True:
                fh.write(os.urandom(1 << 20))
                fh.flush()
        except OSError:
            pass
    n = 0
    try:
        while True:
            (h.pool / f"f{n}").write_bytes(os.urandom(2048))
            n += 1
    except OSError:
        pass
    subprocess.run(["btrfs", "filesystem", "sync", str(h.pool)], check=True)
    r = h.cli("backup", "create", PID_A, check=False)
    assert r.returncode == 1 and r.stderr.count("\n") == 1, r.stderr
    assert "internal error" not in r.stderr and "no space left" in r.stderr.lower(), r.stderr
    job = jobs(h)[-1]
    assert job["state"] == "failed" and "OSError" not in job["error"] and "no space left" in job["error"].lower(), job
    assert not (h.project_path(PID_A) / ".snapshots" / ".backup-tmp").exists()
    # the timer's `backup due` records it as this project's failure and goes on (exit 1, JSON intact)
    r = h.cli("--json", "backup", "due", check=False)
    assert r.returncode == 1, r.stderr
    (failed,) = json.loads(r.stdout)["failed"]
    assert failed["project_id"] == PID_A and "no space left" in failed["error"].lower(), failed
