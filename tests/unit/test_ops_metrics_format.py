"""metrics: the text format (escaping, types) and the atomic write, without a pool."""

from __future__ import annotations

import os

import pytest

from cocalc_ctl import config as config_mod
from cocalc_ctl.actions.ops import metrics


def test_label_values_are_escaped():
    f = metrics.Family("cocalc_ctl_x", "gauge", "help")
    f.add(1, path='a"b\\c\nd')
    f.add(2.5)
    text = metrics.render([f])
    assert text == ('# HELP cocalc_ctl_x help\n# TYPE cocalc_ctl_x gauge\n'
                    'cocalc_ctl_x{path="a\\"b\\\\c\\nd"} 1\ncocalc_ctl_x 2.5\n')


@pytest.fixture
def cfg(tmp_path, monkeypatch):
    for k in list(os.environ):
        if k.startswith("COCALC_CTL_"):
            monkeypatch.delenv(k)
    p = tmp_path / "c.yaml"
    p.write_text(f"btrfs_root: {tmp_path}/pool\ndata_dir: {tmp_path}/data\n")
    return config_mod.load(str(p))


def test_write_replaces_the_file_atomically_and_keeps_the_old_one_on_error(cfg, tmp_path, monkeypatch):
    d = tmp_path / "tf"
    d.mkdir()
    res = metrics.write(cfg, textfile_dir=str(d))
    text = (d / "cocalc_ctl.prom").read_text()
    assert res.samples >= 3 and "cocalc_ctl_pool_mounted 0" in text and "cocalc_ctl_host_db_up 0" in text

    def broken_write(*a, **k):
        raise OSError(28, "No space left on device")

    real_open = open

    def failing_open(path, mode="r", *a, **k):
        fh = real_open(path, mode, *a, **k)
        if "w" in mode and str(path).endswith(".tmp"):
            fh.write = broken_write
        return fh

    monkeypatch.setattr("builtins.open", failing_open)
    with pytest.raises(OSError):
        metrics.write(cfg, textfile_dir=str(d))
    monkeypatch.undo()
    assert (d / "cocalc_ctl.prom").read_text() == text  # the collector never sees a partial file
    assert sorted(p.name for p in d.iterdir()) == ["cocalc_ctl.prom"]


def test_metrics_show_json_lists_families(cfg):
    import json
    import subprocess

    from tests.support.hosts import CLI, REPO

    env = {k: v for k, v in os.environ.items() if not k.startswith("COCALC_CTL_")}
    env.update({"COCALC_CTL_CONFIG": cfg.file, "PYTHONPATH": str(REPO)})
    res = subprocess.run([*CLI, "--json", "metrics", "show"], capture_output=True, text=True, env=env)
    assert res.returncode == 0, res.stderr
    fams = {f["name"]: f for f in json.loads(res.stdout)}
    assert fams["cocalc_ctl_pool_mounted"]["samples"] == [{"labels": {}, "value": 0}]
    res = subprocess.run([*CLI, "metrics", "show"], capture_output=True, text=True, env=env)
    assert "# TYPE cocalc_ctl_pool_mounted gauge\ncocalc_ctl_pool_mounted 0\n" in res.stdout


def test_write_creates_a_missing_directory_and_dry_run_only_plans_it(cfg, tmp_path, monkeypatch, capsys):
    from cocalc_ctl import proc

    d = tmp_path / "not" / "yet"
    monkeypatch.setattr(proc, "DRY_RUN", True)
    monkeypatch.setattr(proc, "PLAN", [])
    metrics.write(cfg, textfile_dir=str(d))
    assert f"mkdir -p -m 0755 {d}" in capsys.readouterr().out and not d.exists()
    monkeypatch.setattr(proc, "DRY_RUN", False)
    res = metrics.write(cfg, textfile_dir=str(d))
    assert res.path == str(d / "cocalc_ctl.prom") and (d / "cocalc_ctl.prom").is_file()
