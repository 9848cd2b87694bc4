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
    from cocalc_ctl.actions.project import projects

    def boom(cfg):
        raise RuntimeError("kaput\nsecond line")

    monkeypatch.setattr(projects, "list_projects", boom)
    assert run(["project", "list"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "kaput second line" in err and "Traceback" not in err


def test_a_noun_without_a_verb_prints_the_nouns_help(capsys):
    assert run(["project"]) == 2
    cap = capsys.readouterr()
    assert cap.err.startswith("Usage: cocalc-ctl project [OPTIONS] COMMAND [ARGS]...\n")
    assert "\n  create " in cap.err and "\n  list " in cap.err and "error" not in cap.err
    assert cap.out == ""
    assert run(["hub", "project"]) == 2
    assert capsys.readouterr().err.startswith("Usage: cocalc-ctl hub project ")


def test_help_shows_names_not_types_and_whole_summaries():
    from cocalc_ctl.docgen import helptext, model

    for c in model().walk():
        text = helptext.help_of(c.path)
        for bad in ("<str>", "<float>", "<int", "TEXT", "INTEGER", "FLOAT", "..."):
            assert bad not in text.replace("[ARGS]...", "").replace("/...", ""), (c.path, bad)
    top = helptext.help_of(())
    listed = [l.split()[0] for l in top.split("Commands:\n")[1].splitlines() if l.startswith("  ") and l[2] != " "]
    assert listed[:4] == ["host", "project", "snapshot", "backup"] and listed[-2:] == ["doctor", "config"]


def test_help_wording():
    from cocalc_ctl.docgen import helptext

    prune = helptext.help_of(("backup", "prune"))
    assert "last N last" not in prune and "Keep the N newest backups." in prune
    assert "Write units here" not in helptext.help_of(("timers", "list"))
    assert "(lowercase UUID)" not in helptext.help_of(("snapshot", "list"))


FAST = [["--version"], ["--help"], ["-h"], ["project"], ["hub", "project"], ["frob"], ["--json", "frob", "x"],
        ["snapshot", "prune", "--help"], ["--json", "keys", "-h"], []]


@pytest.mark.parametrize("argv", FAST, ids=[" ".join(a) or "(none)" for a in FAST])
def test_fast_paths_answer_like_the_full_cli_without_importing_typer(argv, monkeypatch, tmp_path):
    """--version, --help, a noun alone and an unknown command: the same stdout, stderr and exit code as
    the typer CLI, in a process that never imports typer."""
    import subprocess
    import sys

    from tests.support.hosts import REPO

    monkeypatch.setenv("COLUMNS", "80")
    code = ("import sys\nfrom cocalc_ctl.cli import entry\nsys.argv = ['cocalc-ctl', *sys.argv[1:]]\n"
            "try:\n    entry.main()\nexcept SystemExit as e:\n    rc = e.code\n"
            "print('TYPER' if 'typer' in sys.modules else 'NO-TYPER', rc, file=sys.stderr)\n")
    fast = subprocess.run([sys.executable, "-c", code, *argv], capture_output=True, text=True, timeout=60,
                          cwd=REPO)
    *fast_err, marker = fast.stderr.split("\n")[:-1]
    assert marker.split()[0] == "NO-TYPER", fast.stderr
    full = subprocess.run([sys.executable, "-c", "import sys\nfrom cocalc_ctl.cli.main import run\n"
                           "rc = run(sys.argv[1:])\nsys.stdout.flush(); sys.stderr.flush()\n"
                           "print('TYPER', rc, file=sys.stderr)", *argv],
                          capture_output=True, text=True, timeout=60, cwd=REPO)
    *full_err, full_marker = full.stderr.split("\n")[:-1]
    assert fast.stdout == full.stdout
    assert fast_err == full_err
    assert marker.split()[1] == full_marker.split()[1]


def test_bin_wrapper_execs_the_venv_interpreter_not_python3_on_path(tmp_path):
    """A python3 on PATH that fails (a broken version-manager shim) is never started."""
    import subprocess

    from tests.support.hosts import REPO

    if not (REPO / ".venv" / "bin" / "python").exists():
        pytest.skip("no .venv in this checkout")
    shim = tmp_path / "python3"
    shim.write_text("#!/bin/sh\necho shim >&2\nexit 99\n")
    shim.chmod(0o755)
    link = tmp_path / "cocalc-ctl"
    link.symlink_to(REPO / "bin" / "cocalc-ctl")  # installed as a symlink, like `make install`
    env = {"PATH": f"{tmp_path}:/usr/bin:/bin", "COLUMNS": "80"}
    res = subprocess.run([str(link), "--version"], capture_output=True, text=True, env=env, timeout=60)
    assert (res.returncode, res.stdout, res.stderr) == (0, "cocalc-ctl 0.1.0\n", "")
    (tmp_path / "c.yaml").write_text(f"data_dir: {tmp_path}/data\n")
    res = subprocess.run([str(link), "config", "show", "--json"], capture_output=True, text=True,
                         env={**env, "COCALC_CTL_CONFIG": str(tmp_path / "c.yaml")}, timeout=60)
    assert res.returncode == 0 and '"keys"' in res.stdout, res.stderr


def test_quiet_drops_confirmations_but_keeps_requested_output(monkeypatch, capsys):
    from cocalc_ctl.actions.project import projects, snapshots

    pid = "1b4e28ba-2fa1-11d2-883f-0016d3cca427"
    monkeypatch.setattr(snapshots, "lock", lambda cfg, project, name, reason="": name)
    monkeypatch.setattr(snapshots, "create", lambda cfg, project, name: type("S", (), {"name": name})())
    monkeypatch.setattr(projects, "list_projects", lambda cfg: [])
    assert run(["snapshot", "lock", pid, "keep"]) == 0
    assert capsys.readouterr().out == "locked snapshot keep\n"
    assert run(["-q", "snapshot", "lock", pid, "keep"]) == 0
    assert run(["snapshot", "create", pid, "first", "--quiet"]) == 0
    assert capsys.readouterr().out == ""
    assert run(["-q", "project", "list"]) == 0  # requested output stays
    assert capsys.readouterr().out.startswith("PROJECT")


def test_commands_say_when_no_config_file_was_loaded(monkeypatch, capsys):
    import os

    if os.path.exists("/etc/cocalc-ctl/config.yaml"):
        pytest.skip("this machine has a real config file")
    monkeypatch.delenv("COCALC_CTL_CONFIG")
    run(["project", "list"])
    assert "no config file (/etc/cocalc-ctl/config.yaml does not exist)" in capsys.readouterr().err
    run(["-q", "project", "list"])
    assert "no config file" not in capsys.readouterr().err


def test_config_show_stored_host_id_booleans_and_grouping(tmp_path, capsys):
    import os

    data = tmp_path / "data"  # the fixture's data_dir
    data.mkdir(exist_ok=True)
    (data / "host_id").write_text("1b4e28ba-2fa1-11d2-883f-0016d3cca427\n")
    assert run(["config", "show"]) == 0
    rows = [line.split(None, 2) for line in capsys.readouterr().out.splitlines()[2:]]
    by_key = {r[0]: r for r in rows}
    assert by_key["host_id"][1] == "1b4e28ba-2fa1-11d2-883f-0016d3cca427" and "host init" in by_key["host_id"][2]
    assert by_key["rootfs.keep_podman_copy"][1] == "false"
    assert by_key["secrets_dir"][1] == f"{data}/secrets"
    assert not any(r[1] in ("-", "True", "False") for r in rows)
    sections = [r[0].split(".")[0] for r in rows if "." in r[0]]
    assert sections == sorted(sections, key=sections.index)  # each section's keys together
    assert "." not in "".join(r[0] for r in rows[:8])  # top-level keys first
    assert os.environ["COCALC_CTL_CONFIG"]


def test_backup_prune_hint_lists_every_keep_option(capsys):
    import re

    assert run(["backup", "prune", "1b4e28ba-2fa1-11d2-883f-0016d3cca427"]) == 2
    err = capsys.readouterr().err
    options = set(re.findall(r"--keep-[a-z]+", err))
    from cocalc_ctl.docgen import model

    [prune] = [c for c in model().walk() if c.path == ("backup", "prune")]
    assert options == {n for o in prune.options for n in o.names if n.startswith("--keep-")}
    assert len(options) == 6


def _write_to_a_full_disk(*args, **kwargs):
    with open("/dev/full", "wb", buffering=0) as fh:  # the kernel answers ENOSPC for real
        fh.write(b"x")


def test_full_disk_is_one_line_exit_1_with_a_hint_not_an_internal_error(monkeypatch, capsys):
    from cocalc_ctl.actions.project import projects

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

    from cocalc_ctl.actions.project import projects

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
