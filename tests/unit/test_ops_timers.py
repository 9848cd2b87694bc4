"""timers: units and crontab lines rendered from the job table, install/list/remove in a directory."""

from __future__ import annotations

import os
import re
import shutil
import subprocess

import pytest

from cocalc_ctl import config as config_mod
from cocalc_ctl.actions.ops import timers
from cocalc_ctl.errors import InvalidInput
from tests.support.hosts import CLI, REPO
from tests.support.ops import cli_wrapper, exec_argv, parse_unit

BIN = ""  # set by the autouse fixture below: a wrapper running this checkout with the test's Python


@pytest.fixture(autouse=True, scope="module")
def _bin(tmp_path_factory):
    global BIN
    BIN = cli_wrapper(tmp_path_factory.mktemp("bin"))
    yield


@pytest.fixture
def cfg(tmp_path, monkeypatch):
    path = tmp_path / "config.yaml"
    path.write_text(f"btrfs_root: {tmp_path}/pool\ndata_dir: {tmp_path}/data\nhost_id: "
                    "1b4e28ba-2fa1-11d2-883f-0016d3cca427\n")
    for k in list(os.environ):
        if k.startswith("COCALC_CTL_"):
            monkeypatch.delenv(k)
    return config_mod.load(str(path))


def units_for(cfg, role="all"):
    return timers.render_units(timers.context(cfg, bin=BIN), timers.select(role))


def test_every_periodic_job_gets_a_persistent_randomized_timer(cfg):
    units = units_for(cfg)
    for job in timers.JOBS:
        if not job.default:
            continue
        svc = parse_unit(units[f"cocalc-ctl-{job.name}.service"])["Service"]
        if job.on_calendar:
            timer = parse_unit(units[f"cocalc-ctl-{job.name}.timer"])
            assert timer["Timer"]["OnCalendar"] == [job.on_calendar]
            assert timer["Timer"]["Persistent"] == ["true"]
            assert timer["Timer"]["RandomizedDelaySec"] == [job.random_delay]
            assert timer["Install"]["WantedBy"] == ["timers.target"]
            assert svc["Type"] == ["oneshot"]
        else:
            assert f"cocalc-ctl-{job.name}.timer" not in units
            assert svc["Restart"] == [job.restart] and job.restart in ("on-failure", "always")


def test_periodic_runs_are_guarded_by_flock_and_refresh_metrics(cfg):
    units = units_for(cfg)
    svc = parse_unit(units["cocalc-ctl-backup-due.service"])["Service"]
    argv = exec_argv(svc["ExecStart"][0])
    assert argv[:5] == ["/usr/bin/flock", "--nonblock", "--conflict-exit-code", "4",
                        f"{cfg.data_dir}/locks/timer-backup-due.lock"]
    assert argv[5:] == [BIN, "--config", cfg.file, "-q", "backup", "due"]
    post = svc["ExecStopPost"][0]
    assert post.startswith("-"), "a metrics failure must not fail the job"
    assert exec_argv(post)[-2:] == ["metrics", "write"]


def test_units_are_hardened_and_backups_run_at_low_priority(cfg):
    units = units_for(cfg)
    backup = parse_unit(units["cocalc-ctl-backup-due.service"])["Service"]
    assert backup["Nice"] == ["10"] and backup["IOSchedulingClass"] == ["idle"]
    for name, text in units.items():
        if not name.endswith(".service") or "receiver-sshd" in name:
            continue
        svc = parse_unit(text)["Service"]
        assert svc["ProtectSystem"] == ["strict"], name
        assert svc["PrivateTmp"] == ["true"] and svc["NoNewPrivileges"] == ["true"], name
        assert "CapabilityBoundingSet" in svc, name
        rw = svc["ReadWritePaths"][0].split()
        assert f"-{cfg.data_dir}" in rw, name
    snap = parse_unit(units["cocalc-ctl-snapshot-auto.service"])
    assert "CAP_SYS_ADMIN" in snap["Service"]["CapabilityBoundingSet"][0].split()
    assert f"-{cfg.btrfs_root}" in snap["Service"]["ReadWritePaths"][0].split()
    assert snap["Unit"]["RequiresMountsFor"] == [f"{cfg.btrfs_root} {cfg.data_dir}"]
    piper = parse_unit(units["cocalc-ctl-sshpiper-serve.service"])["Service"]
    assert "CAP_SYS_ADMIN" not in piper["CapabilityBoundingSet"][0]
    assert f"-{cfg.btrfs_root}" not in piper["ReadWritePaths"][0].split()


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze not installed")
def test_generated_units_pass_systemd_analyze_verify(cfg, tmp_path):
    d = tmp_path / "units"
    result = timers.install(cfg, unit_dir=str(d), role="all", only=None, bin=BIN)
    timers.install(cfg, unit_dir=str(d), only=["keys-watch"], bin=BIN)
    assert len(result.written) == 11
    files = sorted(str(p) for p in d.iterdir())
    res = subprocess.run(["systemd-analyze", "verify", "--man=no", *files], capture_output=True, text=True,
                         cwd=str(d))
    assert res.returncode == 0, res.stderr
    assert res.stderr.strip() == "", res.stderr  # unknown keys and bad values only warn: none allowed


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze not installed")
def test_verify_catches_a_broken_unit(cfg, tmp_path):
    """The verification above can fail: a bad calendar spec is refused."""
    d = tmp_path / "units"
    timers.install(cfg, unit_dir=str(d), only=["snapshot-auto"], bin=BIN)
    t = d / "cocalc-ctl-snapshot-auto.timer"
    t.write_text(t.read_text().replace("OnCalendar=*:0/15", "OnCalendar=every quarter hour"))
    res = subprocess.run(["systemd-analyze", "verify", "--man=no", str(t)], capture_output=True, text=True)
    assert res.returncode != 0 or res.stderr.strip()


def test_adding_a_job_is_one_table_line(cfg, monkeypatch):
    job = timers.Job("quota-report", ("project", "list"), "Report project sizes", on_calendar="hourly",
                     cron="7 * * * *", random_delay="5m")
    monkeypatch.setattr(timers, "JOBS", [*timers.JOBS, job])
    units = units_for(cfg)
    assert "cocalc-ctl-quota-report.timer" in units
    svc = parse_unit(units["cocalc-ctl-quota-report.service"])["Service"]
    assert exec_argv(svc["ExecStart"][0])[-2:] == ["project", "list"]
    cron = timers.crontab(cfg, role="all", bin=BIN)
    assert re.search(r"^7 \* \* \* \* root /usr/bin/flock .*timer-quota-report\.lock .* project list;", cron, re.M)


def test_roles_and_only_select_jobs():
    host = [j.name for j in timers.select("host")]
    assert "move-worker" not in host and "keys-watch" not in host and "snapshot-auto" in host
    assert [j.name for j in timers.select("hub")] == ["move-worker"]
    assert [j.name for j in timers.select("host", ["keys-watch"])] == ["keys-watch"]
    with pytest.raises(InvalidInput):
        timers.select("host", ["no-such-job"])
    with pytest.raises(InvalidInput):
        timers.select("everything")


CRON_LINE = re.compile(r"^(\S+ \S+ \S+ \S+ \S+) (\w+) (.+)$")


def test_cron_lines_match_the_timers(cfg):
    text = timers.crontab(cfg, role="all", bin=BIN)
    jobs = {}
    for line in text.splitlines():
        if not line or line.startswith("#") or "=" in line.split()[0]:
            continue
        m = CRON_LINE.match(line)
        assert m, line
        for field, (lo, hi) in zip(m.group(1).split(), [(0, 59), (0, 23), (1, 31), (1, 12), (0, 7)]):
            for part in field.split(","):
                base = part.split("/")[0]
                if base != "*":
                    assert lo <= int(base) <= hi, line
        jobs[re.search(r"timer-([\w-]+)\.lock", line).group(1)] = line
    assert set(jobs) == {j.name for j in timers.JOBS if j.on_calendar}
    assert jobs["snapshot-auto"].startswith("*/15 * * * * root ")
    assert "/usr/bin/ionice -c 3" in jobs["backup-due"] and "/usr/bin/nice -n 10" in jobs["backup-due"]
    assert "# " in text and "sshpiper serve" in text  # services are listed as comments
    # daily jobs get a stable per-host time
    assert text == timers.crontab(cfg, role="all", bin=BIN)


def test_install_list_remove_in_a_directory(cfg, tmp_path):
    d = tmp_path / "units"
    first = timers.install(cfg, unit_dir=str(d), bin=BIN)
    assert "cocalc-ctl-snapshot-auto.timer" in first.written and not first.enabled
    again = timers.install(cfg, unit_dir=str(d), bin=BIN)
    assert again.written == [] and len(again.unchanged) == len(first.written)
    status = {j.name: j for j in timers.list_jobs(cfg, unit_dir=str(d), bin=BIN)}
    assert status["snapshot-auto"].installed == "yes"
    assert status["move-worker"].installed == "no"
    (d / "cocalc-ctl-backup-due.service").write_text((d / "cocalc-ctl-backup-due.service").read_text() + "\n#x\n")
    assert {j.name: j for j in timers.list_jobs(cfg, unit_dir=str(d), bin=BIN)}["backup-due"].installed == "outdated"
    foreign = d / "cocalc-ctl-mine.service"
    foreign.write_text("[Service]\nExecStart=/bin/true\n")
    removed = timers.remove(cfg, unit_dir=str(d))
    assert sorted(removed.removed) == sorted(first.written)
    assert [p.name for p in d.iterdir()] == ["cocalc-ctl-mine.service"]  # never touches others' files


def test_install_refuses_to_overwrite_a_foreign_unit(cfg, tmp_path):
    d = tmp_path / "units"
    d.mkdir()
    (d / "cocalc-ctl-snapshot-auto.service").write_text("[Service]\nExecStart=/bin/true\n")
    with pytest.raises(InvalidInput, match="not written by cocalc-ctl"):
        timers.install(cfg, unit_dir=str(d), bin=BIN)


def _cli(cfg, *args, env_extra=None):
    env = {k: v for k, v in os.environ.items() if not k.startswith("COCALC_CTL_")}
    env.update({"COCALC_CTL_CONFIG": cfg.file, "PYTHONPATH": str(REPO), **(env_extra or {})})
    return subprocess.run([*CLI, *args], capture_output=True, text=True, env=env)


def test_cli_dry_run_install_writes_nothing(cfg, tmp_path):
    d = tmp_path / "units"
    res = _cli(cfg, "--dry-run", "timers", "install", "--user-unit-dir", str(d), "--bin", BIN)
    assert res.returncode == 0, res.stderr
    assert f"install -m 0644 /dev/stdin {d}/cocalc-ctl-snapshot-auto.timer" in res.stdout
    assert not d.exists()


def test_cli_cron_and_list(cfg, tmp_path):
    res = _cli(cfg, "timers", "cron", "--bin", BIN, "--only", "snapshot-auto")
    assert res.returncode == 0, res.stderr
    assert [l for l in res.stdout.splitlines() if l.startswith("*/15")]
    res = _cli(cfg, "--json", "timers", "list", "--user-unit-dir", str(tmp_path), "--bin", BIN)
    assert res.returncode == 0, res.stderr
    import json

    names = [j["name"] for j in json.loads(res.stdout)]
    assert names == timers.job_names()
    res = _cli(cfg, "timers", "install", "--role", "nope", "--user-unit-dir", str(tmp_path))
    assert res.returncode == 2 and "unknown role" in res.stderr


def test_exec_lines_quote_odd_paths(tmp_path, monkeypatch):
    for k in list(os.environ):
        if k.startswith("COCALC_CTL_"):
            monkeypatch.delenv(k)
    d = tmp_path / "with space%"
    d.mkdir()
    path = d / "config.yaml"
    path.write_text(f"data_dir: {d}/data\n")
    cfg = config_mod.load(str(path))
    svc = parse_unit(timers.render_service(timers.context(cfg, bin=BIN), timers.get_job("keys-sync")))
    argv = exec_argv(svc["Service"]["ExecStart"][0])
    assert argv[argv.index("--config") + 1] == str(path)
    if shutil.which("systemd-analyze"):
        units = tmp_path / "units"
        timers.install(cfg, unit_dir=str(units), only=["snapshot-auto", "keys-sync"], bin=BIN)
        res = subprocess.run(["systemd-analyze", "verify", "--man=no", *sorted(map(str, units.iterdir()))],
                             capture_output=True, text=True, cwd=str(units))
        assert res.returncode == 0 and res.stderr.strip() == "", res.stderr
