"""doctor on a real host: all ok when set up, and breaking one prerequisite fails exactly that check."""

from __future__ import annotations

import json
import os
import shutil
import subprocess

import pytest

from tests.support.ops import prepare_host as prepare
from tests.support.postgres import Postgres

pytestmark = pytest.mark.integration


def doctor(host, env=None):
    res = host.cli("--json", "doctor", check=False, env=env)
    assert res.stdout, res.stderr
    report = json.loads(res.stdout)
    return res.returncode, {c["name"]: c for c in report["checks"]}


def statuses(checks):
    return {n: c["status"] for n, c in checks.items()}


def assert_only_failure(baseline, checks, name, *, allow_skip=()):
    got = statuses(checks)
    assert got[name] == "fail", checks[name]
    assert checks[name]["hint"], "a failing check must say how to fix it"
    for other, status in got.items():
        if other == name:
            continue
        if other in allow_skip:
            assert status in ("skip", "warn", baseline[other]), (other, checks[other])
        else:
            assert status == baseline[other], (other, checks[other])


@pytest.fixture
def ready(make_host, hub_dsn, workdir):
    return prepare(make_host("a"), hub_dsn, workdir)


def test_doctor_reports_all_ok_on_a_prepared_host(ready):
    code, checks = doctor(ready)
    bad = {n: c for n, c in checks.items() if c["status"] != "ok" and n != "units"}
    assert bad == {} and code == 0
    assert checks["units"]["status"] == "skip"  # no timers installed on this host
    assert checks["config"]["detail"].startswith("loaded ")
    assert checks["backup-engine"]["data"]["program"] == "restic"
    assert checks["btrfs"]["data"]["version"]
    human = ready.cli("doctor")
    assert human.stdout.splitlines()[0].startswith("ok    config ")
    assert any(line.startswith("ok    pool ") for line in human.stdout.splitlines())
    assert "0 fail" in human.stdout


def test_unmounted_pool_fails_only_the_pool_check(ready):
    _, base = doctor(ready)
    subprocess.run(["umount", str(ready.pool)], check=True)
    code, checks = doctor(ready)
    assert code == 1
    assert_only_failure(statuses(base), checks, "pool", allow_skip=("pool-hardening",))
    assert "host init" in checks["pool"]["hint"]
    assert "pool" not in checks["free-space"]["data"]  # still checks data_dir, says nothing false


def test_pool_without_nosuid_or_open_to_others_fails_only_pool_hardening_and_host_init_fixes_it(ready):
    _, base = doctor(ready)
    subprocess.run(["mount", "-o", "remount,suid,dev", str(ready.pool)], check=True)
    code, checks = doctor(ready)
    assert code == 1
    assert_only_failure(statuses(base), checks, "pool-hardening")
    assert "nosuid" in checks["pool-hardening"]["detail"] and "remount" in checks["pool-hardening"]["hint"]
    os.chmod(ready.pool, 0o755)
    code, checks = doctor(ready)
    assert any("mode 0755" in p for p in checks["pool-hardening"]["data"]["problems"])
    ready.cli("host", "init")
    code, checks = doctor(ready)
    assert code == 0 and checks["pool-hardening"]["status"] == "ok"
    assert os.stat(ready.pool).st_mode & 0o777 == 0o700


def test_world_readable_secret_fails_only_the_secrets_check(ready):
    _, base = doctor(ready)
    token = ready.data / "secrets" / "sshpiper" / "token"
    token.chmod(0o644)
    code, checks = doctor(ready)
    assert code == 1
    assert_only_failure(statuses(base), checks, "secrets")
    assert checks["secrets"]["hint"] == f"chmod 600 {token}"
    human = ready.cli("doctor", check=False)
    assert human.returncode == 1
    line = [l for l in human.stdout.splitlines() if l.startswith("FAIL")]
    assert len(line) == 1 and line[0].startswith("FAIL  secrets") and f"-> chmod 600 {token}" in line[0]
    assert "0123456789abcdef" not in human.stdout  # the secret itself is never printed


def test_missing_restic_fails_only_the_backup_engine_check(ready, workdir):
    _, base = doctor(ready)
    bindir = workdir / "bin-without-restic"
    bindir.mkdir()
    for prog in ("btrfs", "podman", "runc", "crun", "ssh", "sshd", "rsync", "lz4", "zstd", "flock", "conmon"):
        found = shutil.which(prog, path=os.environ["PATH"] + ":/usr/sbin:/sbin")
        if found:
            (bindir / prog).symlink_to(found)
    code, checks = doctor(ready, env={"PATH": str(bindir)})
    assert code == 1
    assert_only_failure(statuses(base), checks, "backup-engine", allow_skip=("backup-repo",))
    assert checks["backup-repo"]["status"] == "skip"
    assert checks["backup-engine"]["hint"] == "install it: apt-get install restic"


def test_stopped_postgres_fails_only_the_hub_check(make_host, workdir):
    pg = Postgres().start()
    try:
        pg.wait_ready()
        host = prepare(make_host("b"), pg.new_database(), workdir)
        code, base = doctor(host)
        assert code == 0, {n: c for n, c in base.items() if c["status"] != "ok"}
        pg.stop()
        code, checks = doctor(host)
        assert code == 1
        assert_only_failure(statuses(base), checks, "hub", allow_skip=("keys-registered", "time"))
        assert checks["keys-registered"]["status"] == "skip"
        assert checks["time"]["status"] in ("ok", "warn")  # falls back to the kernel's NTP state
        assert "PostgreSQL" in checks["hub"]["hint"]
    finally:
        pg.stop()


def test_unmigrated_hub_and_unregistered_keys_fail_with_the_command_to_run(make_host, hub_dsn, workdir):
    host = make_host("c")
    host.write_config(hub_dsn=hub_dsn)
    _, checks = doctor(host)
    assert checks["hub"]["status"] == "fail" and checks["hub"]["hint"] == "run: cocalc-ctl hub migrate"
    host.cli("hub", "migrate")
    _, checks = doctor(host)
    assert checks["hub"]["status"] == "ok"
    assert checks["keys-registered"]["status"] == "fail"
    assert checks["keys-registered"]["hint"] == "run: cocalc-ctl keys register"
    assert checks["keys"]["status"] == "fail" and "keys ensure" in checks["keys"]["hint"]
    assert checks["sshpiper-token"]["status"] == "fail"
    assert checks["backup-repo"]["status"] == "warn"  # not configured is not broken


def test_free_space_below_the_threshold_fails(ready):
    ready.write_config(ops={"free_fail_percent": 100, "free_warn_percent": 100})
    code, checks = doctor(ready)
    assert code == 1 and checks["free-space"]["status"] == "fail"
    assert checks["free-space"]["data"]["pool"]["free_percent"] > 50


def test_wrong_restic_password_fails_the_repo_check(ready):
    (ready.data / "secrets" / "backup-password").write_text("hunter2-not-it\n")
    _, checks = doctor(ready)
    assert checks["backup-repo"]["status"] == "fail"
    assert "hunter2-not-it" not in json.dumps(checks) and "correct horse" not in json.dumps(checks)


def test_token_in_a_process_argv_fails_only_the_argv_check(ready):
    """A process started with the sshpiper REST token on its command line (what the old sshpiperd
    command line did): every local user can read it with `ps`, and doctor says so, without the token."""
    import sys
    import time

    _, base = doctor(ready)
    assert base["secrets-in-argv"]["status"] == "ok"
    token = (ready.data / "secrets" / "sshpiper" / "token").read_text().strip()
    leak = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(300)", "--url",
                             f"http://127.0.0.1:8089/{token}"])
    try:
        time.sleep(0.3)
        code, checks = doctor(ready)
        human = ready.cli("doctor", check=False)
    finally:
        leak.kill()
        leak.wait()
    assert code == 1
    assert_only_failure(statuses(base), checks, "secrets-in-argv")
    assert f"pid {leak.pid}" in checks["secrets-in-argv"]["detail"]
    assert token not in json.dumps(checks) and token not in human.stdout + human.stderr
    assert doctor(ready)[1]["secrets-in-argv"]["status"] == "ok"
