"""The CLI's own contract, in-process: global flags anywhere, errors to exit codes in one place."""

import json

import pytest

from cocalc_ctl.cli import common
from cocalc_ctl.cli.main import hoist_global_flags, run


@pytest.fixture(autouse=True)
def fresh_globals(monkeypatch, tmp_path):
    monkeypatch.setattr(common, "G", common.Globals())
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"btrfs_root: {tmp_path}/pool\ndata_dir: {tmp_path}/data\n")
    monkeypatch.setenv("COCALC_CTL_CONFIG", str(cfg))
    for k in list(__import__("os").environ):
        if k.startswith("COCALC_CTL_") and k != "COCALC_CTL_CONFIG":
            monkeypatch.delenv(k)
    yield


def test_global_flags_are_hoisted_in_front_of_the_noun():
    assert hoist_global_flags(["project", "list", "--json", "--config", "/c.yaml", "-v"]) == \
        ["--json", "--config", "/c.yaml", "-v", "project", "list"]
    assert hoist_global_flags(["snapshot", "create", "P", "--", "--json"]) == ["snapshot", "create", "P", "--", "--json"]


def test_invalid_input_is_exit_2_one_line(capsys):
    assert run(["project", "show", "nope"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("cocalc-ctl: error: invalid project id") and err.count("\n") == 1


def test_missing_pool_is_exit_5(capsys):
    assert run(["project", "list"]) == 5
    assert "host init" in capsys.readouterr().err


def test_usage_error_is_exit_2(capsys):
    assert run(["snapshot", "prune", "--keep-daily", "x", "1b4e28ba-2fa1-11d2-883f-0016d3cca427"]) == 2
    assert capsys.readouterr().err.count("\n") == 1


def test_help_and_version_exit_0(capsys):
    assert run(["--version"]) == 0
    assert run(["--help"]) == 0
    out = capsys.readouterr().out
    assert "cocalc-ctl 0." in out and "snapshot" in out


def test_config_show_json_after_the_verb(capsys):
    assert run(["config", "show", "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["keys"]["btrfs_root"]["source"].startswith("file:")


def test_unexpected_exception_is_one_line_without_traceback(monkeypatch, capsys):
    from cocalc_ctl.actions import projects

    def boom(cfg):
        raise RuntimeError("kaput\nsecond line")

    monkeypatch.setattr(projects, "list_projects", boom)
    assert run(["project", "list"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "kaput second line" in err and "Traceback" not in err


def _write_to_a_full_disk(*args, **kwargs):
    with open("/dev/full", "wb", buffering=0) as fh:  # the kernel answers ENOSPC for real
        fh.write(b"x")


def test_full_disk_is_one_line_exit_1_with_a_hint_not_an_internal_error(monkeypatch, capsys):
    from cocalc_ctl.actions import projects

    monkeypatch.setattr(projects, "list_projects", _write_to_a_full_disk)
    assert run(["project", "list"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "internal error" not in err, err
    assert err.startswith("cocalc-ctl: error: no space left on device") and "free space" in err, err


@pytest.mark.parametrize("errno_name,code,words", [
    ("EDQUOT", 1, "quota"), ("EACCES", 5, "run as root"), ("ENOENT", 3, "check the path"),
    ("EROFS", 5, "read-only"), ("ECONNREFUSED", 1, "server is running"), ("EBUSY", 4, "retry"),
])
def test_expected_os_errors_map_to_documented_exit_codes(monkeypatch, capsys, errno_name, code, words):
    import errno
    import os

    from cocalc_ctl.actions import projects

    def fail(cfg):
        number = getattr(errno, errno_name)
        raise OSError(number, os.strerror(number), "/some/path")

    monkeypatch.setattr(projects, "list_projects", fail)
    assert run(["project", "list"]) == code
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "internal error" not in err and "/some/path" in err and words in err, err


def test_non_utf8_config_file_is_exit_2_not_internal_error(tmp_path, monkeypatch, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_bytes(b"data_dir: /caf\xe9\n")
    monkeypatch.setenv("COCALC_CTL_CONFIG", str(bad))
    assert run(["project", "list"]) == 2
    err = capsys.readouterr().err
    assert "not UTF-8" in err and str(bad) in err and err.count("\n") == 1, err


def test_unreachable_hub_for_proxy_hub_mode_is_one_line_exit_1(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("COCALC_CTL_HUB_DSN", f"host={tmp_path}/no-such-socket-dir dbname=hub")
    assert run(["proxy", "serve", "--mode", "hub", "--listen", "127.0.0.1:0", "--no-access-log"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("cocalc-ctl: error: ") and "hub" in err and err.count("\n") == 1, err
    assert "internal error" not in err and "Traceback" not in err, err
