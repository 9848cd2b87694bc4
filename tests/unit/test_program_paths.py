"""Units and sshd configs name the program that actually runs; doctor names the config file and checks
that installed units start programs that exist; its hints name cocalc-ctl commands."""

from __future__ import annotations

import sys

import pytest

from cocalc_ctl import config as config_mod
from cocalc_ctl import program
from cocalc_ctl.actions.ops import doctor, timers
from cocalc_ctl.errors import PreconditionFailed


@pytest.fixture
def cfg(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text(f"btrfs_root: {tmp_path}/pool\ndata_dir: {tmp_path}/data\nops:\n  unit_dir: {tmp_path}/units\n")
    return config_mod.load(str(path), env={})


def _exe(path):
    path.write_text("#!/bin/sh\n")
    path.chmod(0o755)
    return str(path)


def test_timers_run_the_running_program(cfg, tmp_path, monkeypatch):
    exe = _exe(tmp_path / "cocalc-ctl")
    monkeypatch.setattr(sys, "argv", [exe, "timers", "install"])
    assert timers.default_bin(cfg) == exe
    monkeypatch.setattr(sys, "argv", ["/srv/cocalc_ctl/__main__.py"])  # python -m cocalc_ctl ...
    venv = tmp_path / "venv" / "bin"
    venv.mkdir(parents=True)
    monkeypatch.setattr(sys, "executable", str(venv / "python"))
    beside = _exe(venv / "cocalc-ctl")
    assert timers.default_bin(cfg) == beside  # ... runs the same code as the console script beside it
    (venv / "cocalc-ctl").unlink()
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    with pytest.raises(PreconditionFailed) as err:
        timers.default_bin(cfg)
    assert "--bin" in err.value.hint
    assert program.running_program() is None


def test_doctor_names_the_config_file(cfg, monkeypatch):
    assert doctor.check_config(cfg).detail == f"loaded {cfg.file}"
    monkeypatch.setattr(cfg, "file", None)
    c = doctor.check_config(cfg)
    assert c.status == "warn" and "no config file" in c.detail and "--config" in c.hint


def test_doctor_checks_that_units_start_existing_programs(cfg, tmp_path):
    units = tmp_path / "units"
    units.mkdir()
    assert doctor.check_units(cfg).status == "skip"
    exe = _exe(tmp_path / "cocalc-ctl")
    good = timers.render_units(timers.context(cfg, bin=exe), [timers.get_job("snapshot-auto")])
    for name, text in good.items():
        (units / name).write_text(text)
    assert doctor.check_units(cfg).status == "ok", doctor.check_units(cfg)
    gone = "/usr/local/bin/cocalc-ctl-never-installed"
    for name, text in good.items():
        (units / name).write_text(text.replace(exe, gone))
    c = doctor.check_units(cfg)
    assert c.status == "fail" and gone in c.detail and "timers install --bin" in c.hint


def test_fresh_host_hints_name_cocalc_ctl_commands(cfg):
    assert doctor.check_keys(cfg).hint == "create them: cocalc-ctl keys ensure"
    assert doctor.check_sshpiper_token(cfg).hint == "create it: cocalc-ctl keys ensure"


@pytest.mark.skipif(__import__("shutil").which("restic") is None, reason="restic not installed")
def test_backup_repo_hint_names_backup_init(tmp_path):
    pw = tmp_path / "pw"
    pw.write_text("secret\n")
    pw.chmod(0o600)
    path = tmp_path / "c.yaml"
    path.write_text(f"data_dir: {tmp_path}/data\nbackup:\n  repo: {tmp_path}/repo\n  password_file: {pw}\n"
                    "  engine: restic\n")
    cfg = config_mod.load(str(path), env={})
    c = doctor.check_backup_repo(cfg)
    assert c.status == "fail" and c.hint == "create it: cocalc-ctl backup init", c
    assert "restic init" not in c.hint
