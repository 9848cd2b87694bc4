"""Completions, man page, examples and help goldens are current, and each one actually works."""

from __future__ import annotations

import os
import re
import shutil
import subprocess

import pytest

from cocalc_ctl import config as config_mod
from cocalc_ctl.docgen import completions, examples, helptext, man, model, regenerate
from tests.support.hosts import REPO
from tests.support.ops import UPDATE_GOLDEN, cli_wrapper, exec_argv, parse_unit


def test_generated_files_are_current():
    """Regenerate everything in memory and diff against the checkout (scripts/regenerate fixes it)."""
    files = regenerate.outputs()
    if UPDATE_GOLDEN:
        regenerate.write(REPO, files)
    problems = regenerate.compare(REPO, files)
    assert problems == [], "run scripts/regenerate:\n" + "\n".join(problems)


def test_check_mode_notices_a_stale_file(tmp_path):
    files = {"man/cocalc-ctl.1": "new\n", "completions/x": "y\n"}
    (tmp_path / "man").mkdir()
    (tmp_path / "man" / "cocalc-ctl.1").write_text("old\n")
    (tmp_path / "completions").mkdir()
    (tmp_path / "completions" / "gone.bash").write_text("z\n")
    assert regenerate.compare(tmp_path, files) == ["missing completions/x", "stale   man/cocalc-ctl.1",
                                                  "extra   completions/gone.bash"]
    regenerate.write(tmp_path, files)
    assert regenerate.compare(tmp_path, files) == []


def test_every_command_has_a_help_golden():
    names = {helptext.golden_name(c.path) for c in model().walk()}
    on_disk = {p.name for p in (REPO / "tests" / "golden" / "help").glob("*.txt")}
    assert names == on_disk
    assert "cocalc-ctl_snapshot_prune.txt" in names and "cocalc-ctl_doctor.txt" in names


@pytest.mark.skipif(shutil.which("man") is None, reason="man not installed")
def test_man_page_renders():
    env = {**os.environ, "MANWIDTH": "100", "MAN_KEEP_FORMATTING": "0"}
    res = subprocess.run(["man", "-l", "-P", "cat", str(REPO / "man" / "cocalc-ctl.1")], capture_output=True,
                         text=True, env=env, timeout=60)
    assert res.returncode == 0, res.stderr
    text = re.sub(r".\x08", "", res.stdout)
    for heading in ("NAME", "SYNOPSIS", "COMMANDS", "CONFIGURATION", "EXIT STATUS", "FILES"):
        assert re.search(rf"^{heading}$", text, re.M), heading
    assert "cocalc-ctl snapshot prune" in text and "--keep-daily N" in text
    assert "backup.password_file (COCALC_CTL_BACKUP_PASSWORD_FILE)" in text


@pytest.mark.skipif(shutil.which("groff") is None, reason="groff not installed")
def test_man_page_has_no_roff_warnings():
    res = subprocess.run(["groff", "-man", "-ww", "-z", str(REPO / "man" / "cocalc-ctl.1")], capture_output=True,
                         text=True)
    assert res.returncode == 0 and res.stderr == "", res.stderr


def test_man_escapes_roff_control_characters():
    assert man.esc(".dot start\n'quote") == "\\&.dot start\n\\&'quote"
    assert man.esc("--keep-daily a\\b") == "\\-\\-keep\\-daily a\\eb"


def _bash_complete(words: list[str]) -> list[str]:
    script = (f"source {REPO}/completions/cocalc-ctl.bash\n"
              'COMP_WORDS=("$@"); COMP_CWORD=$(( ${#COMP_WORDS[@]} - 1 )); _cocalc_ctl\n'
              'printf "%s\\n" "${COMPREPLY[@]}"\n')
    res = subprocess.run(["bash", "-c", script, "bash", *words], capture_output=True, text=True, cwd="/")
    assert res.returncode == 0 and res.stderr == "", res.stderr
    return [w for w in res.stdout.splitlines() if w]


def test_bash_completion_completes_nouns_verbs_and_options():
    nouns = [c.path[-1] for c in model().commands]
    assert _bash_complete(["cocalc-ctl", ""]) == sorted(nouns)
    assert _bash_complete(["cocalc-ctl", "sn"]) == ["snapshot"]
    assert _bash_complete(["cocalc-ctl", "--config", "/x.yaml", "--json", "snapshot", "p"]) == ["prune"]
    assert _bash_complete(["cocalc-ctl", "snapshot", "prune", "--keep-w"]) == ["--keep-weekly"]
    assert _bash_complete(["cocalc-ctl", "timers", "install", "--only", "x", "--no"]) == ["--no-enable"]
    assert "--dry-run" in _bash_complete(["cocalc-ctl", "timers", "list", "--d"])
    assert _bash_complete(["cocalc-ctl", "timers", "install", "--user-unit-dir", "/us"]) == ["/usr"]


def test_bash_completion_offers_option_values_per_command():
    assert _bash_complete(["cocalc-ctl", "move", "start", "P", "--mode", ""]) == ["pipe", "staged", "backup"]
    assert _bash_complete(["cocalc-ctl", "proxy", "serve", "--mode", ""]) == ["host", "hub"]
    assert _bash_complete(["cocalc-ctl", "move", "send", "P", "--compress", "z"]) == ["zstd"]
    assert _bash_complete(["cocalc-ctl", "keys", "rotate", "--which", "s"]) == ["sshpiperd"]
    assert _bash_complete(["cocalc-ctl", "timers", "install", "--role", ""]) == ["host", "hub", "all"]
    assert _bash_complete(["cocalc-ctl", "timers", "install", "--only", "snap"]) == ["snapshot-auto"]
    assert _bash_complete(["cocalc-ctl", "host", "init", "--image", "/us"]) == ["/usr"]  # a file there


def _completion_host(tmp_path):
    """A config whose host sqlite knows two projects and whose rootfs cache holds one image."""
    from cocalc_ctl.state import host_db

    data = tmp_path / "data"
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"btrfs_root: {tmp_path}/pool\ndata_dir: {data}\n")
    with host_db.connect(data) as conn:
        for pid in ("1b4e28ba-2fa1-11d2-883f-0016d3cca427", "2c5f39cb-2fa1-11d2-883f-0016d3cca427"):
            host_db.upsert_project(conn, pid)
    cache = data / "rootfs" / "docker.io" / "library"
    (cache / "busybox:latest").mkdir(parents=True)
    (cache / "busybox:latest~marker.json").write_text('{"image": "docker.io/library/busybox:latest"}')
    return cfg


def test_bash_completion_completes_project_ids_and_images_from_the_host(tmp_path):
    cfg = _completion_host(tmp_path)
    prog = str(REPO / "bin" / "cocalc-ctl")
    assert _bash_complete([prog, "--config", str(cfg), "snapshot", "list", "1b"]) == \
        ["1b4e28ba-2fa1-11d2-883f-0016d3cca427"]
    assert _bash_complete([prog, "--config", str(cfg), "project", "show", ""]) == \
        ["1b4e28ba-2fa1-11d2-883f-0016d3cca427", "2c5f39cb-2fa1-11d2-883f-0016d3cca427"]
    assert _bash_complete([prog, "--config", str(cfg), "project", "start", "P", "--image", "docker"]) == \
        ["docker.io/library/busybox:latest"]
    # no config, no database: nothing, and nothing on stderr
    assert _bash_complete([prog, "--config", str(tmp_path / "none.yaml"), "project", "show", ""]) == []


def test_complete_fast_path_does_not_load_typer(tmp_path):
    cfg = _completion_host(tmp_path)
    code = ("import sys; sys.argv = ['cocalc-ctl', '--config', sys.argv[1], '__complete', 'projects', '2c'];"
            "from cocalc_ctl.cli import entry\n"
            "try:\n    entry.main()\nexcept SystemExit:\n    pass\n"
            "print('typer' in sys.modules)")
    res = subprocess.run([str(REPO / ".venv" / "bin" / "python"), "-c", code, str(cfg)], capture_output=True,
                         text=True, timeout=60)
    assert res.stdout.split() == ["2c5f39cb-2fa1-11d2-883f-0016d3cca427", "False"], res.stderr


@pytest.mark.skipif(shutil.which("fish") is None, reason="fish not installed (apt-get install fish)")
def test_fish_completion_completes_nouns_verbs_and_options():
    def complete(line):
        res = subprocess.run(["fish", "--no-config", "-c", f"source {REPO}/completions/cocalc-ctl.fish; "
                              f"complete -C {line!r}"], capture_output=True, text=True, timeout=60)
        assert res.returncode == 0 and res.stderr == "", res.stderr
        return [l.split("\t")[0] for l in res.stdout.splitlines()]

    assert complete("cocalc-ctl sna") == ["snapshot"]
    assert complete("cocalc-ctl --json snapshot pr") == ["prune"]
    assert complete("cocalc-ctl snapshot prune --keep-m") == ["--keep-monthly"]
    assert complete("cocalc-ctl timers ") == ["cron", "install", "list", "remove"]


@pytest.mark.skipif(shutil.which("zsh") is None, reason="zsh not installed (apt-get install zsh)")
def test_zsh_completion_parses_and_registers():
    script = (f"autoload -U compinit; compinit -u -D; source {REPO}/completions/_cocalc-ctl; "
              "print -r -- ${_comps[cocalc-ctl]}")
    res = subprocess.run(["zsh", "-f", "-c", script], capture_output=True, text=True, timeout=60,
                         env={**os.environ, "HOME": "/nonexistent"})
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == "_cocalc_ctl"
    text = (REPO / "completions" / "_cocalc-ctl").read_text()
    assert "'prune:Delete timestamp-named snapshots" in text


@pytest.mark.skipif(shutil.which("zsh") is None, reason="zsh not installed (apt-get install zsh)")
def test_zsh_completion_offers_the_right_candidates():
    """Call the completion function with zsh's completion helpers replaced by printers."""
    def complete(*words):
        script = ("compdef() { : }\n"
                  f"source {REPO}/completions/_cocalc-ctl\n"
                  "_describe() { local arr=${@[-1]}; print -l -- ${(P)arr} }\n"
                  "_files() { print -- \"<files $*>\" }\n"
                  "_message() { print -- \"<message $*>\" }\n"
                  'words=("$@"); CURRENT=$#words; _cocalc_ctl\n')
        res = subprocess.run(["zsh", "-f", "-c", script, "zsh", *words], capture_output=True, text=True,
                             timeout=60)
        assert res.returncode == 0 and res.stderr == "", res.stderr
        return [l.split(":")[0] for l in res.stdout.splitlines()]

    assert complete("cocalc-ctl", "--json", "snapshot", "p") == ["auto", "create", "delete", "list", "lock",
                                                                  "prune", "unlock"]
    assert "--keep-daily" in complete("cocalc-ctl", "snapshot", "prune", "--keep-d")
    assert "--dry-run" in complete("cocalc-ctl", "snapshot", "prune", "--")  # global flags at every level
    assert complete("cocalc-ctl", "timers", "install", "--user-unit-dir", "") == ["<files -/>"]
    assert complete("cocalc-ctl", "--config", "") == ["<files >"]


def test_completions_know_every_command():
    text = {n: (REPO / "completions" / n).read_text() for n in completions.FILES}
    for c in model().walk():
        if c.path:
            assert c.path[-1] in text["cocalc-ctl.bash"]
            assert f'"{c.name}"' in text["cocalc-ctl.fish"]
            assert f"'{c.name}')" in text["_cocalc-ctl"]


def test_example_config_documents_every_key_and_loads(tmp_path):
    text = (REPO / "examples" / "config.yaml").read_text()
    for key in config_mod.SCHEMA.values():
        leaf = key.name.split(".")[-1]
        assert re.search(rf"^\s*(# )?{re.escape(leaf)}:", text, re.M), key.name
        assert key.help.split()[0] in text, key.name
    cfg = config_mod.load(str(REPO / "examples" / "config.yaml"), env={})
    for key, value in examples.EXAMPLE_VALUES.items():
        assert str(cfg[key]).startswith(str(value).rstrip("G")) or cfg[key] == value, key
    # every commented-out line shows the key's real default, in a form the schema accepts
    import yaml

    section = ""
    seen = 0
    for line in text.splitlines():
        m = re.match(r"^(# )?(\w+):\s*$", line)
        if m and any(k.startswith(m.group(2) + ".") for k in config_mod.SCHEMA):
            section = m.group(2) + "."
            continue
        if line and not line.startswith((" ", "#")):
            section = ""
        m = re.match(r"^\s*# (\w+):(.*)$", line)
        if m and (section + m.group(1)) in config_mod.SCHEMA:
            key = config_mod.SCHEMA[section + m.group(1)]
            raw = yaml.safe_load(m.group(2)) if m.group(2).strip() else None
            assert (key.convert(raw) if raw is not None else None) == key.default, key.name
            seen += 1
    assert seen == len(config_mod.SCHEMA) - len(examples.EXAMPLE_VALUES)


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze not installed")
def test_example_units_verify(tmp_path):
    """examples/systemd, with the binary path pointed at this checkout, passes systemd-analyze verify."""
    (tmp_path / "bin").mkdir()
    bin_path = cli_wrapper(tmp_path / "bin")
    (tmp_path / "units").mkdir()
    for p in (REPO / "examples" / "systemd").iterdir():
        (tmp_path / "units" / p.name).write_text(p.read_text().replace(examples.EXAMPLE_BIN, bin_path))
    tmp_path = tmp_path / "units"
    res = subprocess.run(["systemd-analyze", "verify", "--man=no", *sorted(str(p) for p in tmp_path.iterdir())],
                         capture_output=True, text=True, cwd=str(tmp_path))
    assert res.returncode == 0 and res.stderr.strip() == "", res.stderr


def test_example_crontab_runs_the_same_commands_as_the_units():
    cron = (REPO / "examples" / "crontab").read_text()
    for p in (REPO / "examples" / "systemd").glob("*.service"):
        unit = parse_unit(p.read_text())
        if "Type" in unit["Service"] and unit["Service"]["Type"] == ["oneshot"]:
            argv = exec_argv(unit["Service"]["ExecStart"][0])
            assert " ".join(argv) in cron, p.name


@pytest.mark.skipif(shutil.which("zsh") is None or shutil.which("fish") is None, reason="zsh or fish not installed")
def test_zsh_and_fish_complete_project_ids_and_option_values(tmp_path):
    cfg = _completion_host(tmp_path)
    env = {**os.environ, "PATH": f"{REPO / 'bin'}:{os.environ['PATH']}", "HOME": "/nonexistent"}
    script = ("compdef() { : }\n"
              f"source {REPO}/completions/_cocalc-ctl\n"
              "compadd() { shift; print -l -- $@ }\n_describe() { : }\n_files() { : }\n"
              'words=("$@"); CURRENT=$#words; _cocalc_ctl\n')

    def zsh(*words):
        res = subprocess.run(["zsh", "-f", "-c", script, "zsh", *words], capture_output=True, text=True,
                             timeout=60, env=env)
        assert res.returncode == 0 and res.stderr == "", res.stderr
        return res.stdout.split()

    assert zsh("cocalc-ctl", "--config", str(cfg), "project", "show", "") == \
        ["1b4e28ba-2fa1-11d2-883f-0016d3cca427", "2c5f39cb-2fa1-11d2-883f-0016d3cca427"]
    assert zsh("cocalc-ctl", "--config", str(cfg), "rootfs", "mount", "P", "--image", "") == \
        ["docker.io/library/busybox:latest"]
    assert zsh("cocalc-ctl", "proxy", "serve", "--mode", "") == ["host", "hub"]

    def fish(line):
        res = subprocess.run(["fish", "--no-config", "-c", f"source {REPO}/completions/cocalc-ctl.fish; "
                              f"complete -C {line!r}"], capture_output=True, text=True, timeout=60, env=env)
        assert res.returncode == 0 and res.stderr == "", res.stderr
        return [l.split("\t")[0] for l in res.stdout.splitlines()]

    assert fish(f"cocalc-ctl --config {cfg} snapshot list 1b") == ["1b4e28ba-2fa1-11d2-883f-0016d3cca427"]
    assert sorted(fish("cocalc-ctl move start x --compress ")) == ["lz4", "none", "zstd"]
