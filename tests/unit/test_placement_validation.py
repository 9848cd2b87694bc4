"""Placement commands without a hub: input validation, dry-run plans and exit codes (in-process)."""

import json

import pytest

from cocalc_ctl import ids, output, proc
from cocalc_ctl.actions.hub import placement
from cocalc_ctl.cli import common
from cocalc_ctl.cli.main import run
from cocalc_ctl.config import load
from cocalc_ctl.errors import ConfigError, InvalidInput
from cocalc_ctl.proxy.routing import parse_internal_url

PID = "1b4e28ba-2fa1-11d2-883f-0016d3cca427"
HID = "0b7e4d52-1f6a-4e8c-b3d9-7c2a5e0f9a22"


@pytest.fixture
def cfg_file(monkeypatch, tmp_path):
    monkeypatch.setattr(common, "G", common.Globals())
    # run() sets these process-wide (a --dry-run would stay on for later tests): restore them after
    for mod, names in ((proc, ("DRY_RUN", "VERBOSE", "ECHO_PLAN", "DEFAULT_TIMEOUT")),
                       (output, ("JSON", "QUIET", "VERBOSE"))):
        for name in names:
            monkeypatch.setattr(mod, name, getattr(mod, name))
    monkeypatch.setattr(proc, "PLAN", [])
    for k in list(__import__("os").environ):
        if k.startswith("COCALC_CTL_"):
            monkeypatch.delenv(k)
    path = tmp_path / "c.yaml"
    path.write_text(f"btrfs_root: {tmp_path}/pool\ndata_dir: {tmp_path}/data\n")
    monkeypatch.setenv("COCALC_CTL_CONFIG", str(path))
    return path


# -- internal URLs ----------------------------------------------------------------------------

@pytest.mark.parametrize("value, canonical", [
    ("http://10.0.0.5:8080", "http://10.0.0.5:8080"),
    ("http://10.0.0.5:8080/", "http://10.0.0.5:8080"),
    (" http://Host-B.example:80 ", "http://host-b.example:80"),
    ("http://[fd00:0::1]:8080", "http://[fd00::1]:8080"),
    ("http://localhost:08080", "http://localhost:8080"),
    ("http://10.0.0.5:8080\n", "http://10.0.0.5:8080"),  # as an env var or a file line may carry it
])
def test_internal_url_is_canonical_and_routable(value, canonical):
    assert ids.internal_url(value) == canonical
    assert parse_internal_url(canonical) is not None  # whatever we store, the hub proxy can route to


@pytest.mark.parametrize("value", [
    "", "  ", "10.0.0.5:8080", "https://10.0.0.5:8080", "http://10.0.0.5", "http://10.0.0.5:0",
    "http://10.0.0.5:65536", "http://10.0.0.5:8080/path", "http://user@10.0.0.5:8080",
    "http://user:pw@10.0.0.5:8080", "http://10.0.0.5:8080?x=1", "http://10.0.0.5:8080#f",
    "http://-bad.example:80", "http://a..b:80", "http://[zz::1]:80", "http://10.0.0.5:8080\n/x",
    "http://h\u00e9.example:80", "http://" + "a" * 300 + ":80", None, 8080,
])
def test_bad_internal_urls_are_refused_with_exit_2(value):
    with pytest.raises(InvalidInput) as exc:
        ids.internal_url(value)
    assert exc.value.exit_code == 2 and "\n" not in exc.value.one_line()


def test_config_key_internal_url_is_validated(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("proxy:\n  internal_url: http://10.0.0.5:8080/\n")
    assert load(str(path), env={})["proxy.internal_url"] == "http://10.0.0.5:8080"
    assert load(str(path), env={"COCALC_CTL_PROXY_INTERNAL_URL": ""})["proxy.internal_url"] is None
    path.write_text("proxy:\n  internal_url: http://10.0.0.5:8080/admin\n")
    with pytest.raises(ConfigError) as exc:
        load(str(path), env={})
    assert "proxy.internal_url" in exc.value.one_line() and exc.value.exit_code == 2


# -- images and hosts -------------------------------------------------------------------------

@pytest.mark.parametrize("value, stored", [
    ("ubuntu:25.10", "docker.io/library/ubuntu:25.10"),
    (" registry.example:5000/team/img ", "registry.example:5000/team/img:latest"),
    ("dir:/srv/images/busybox", "dir:/srv/images/busybox"),
    ("", None),
])
def test_images_are_normalised_before_they_are_stored(value, stored):
    assert placement.image_ref(value) == stored


@pytest.mark.parametrize("value", ["ubuntu2404", "default", "Ubuntu:25.10", "dir:../x", "a b:1", "x;rm:1"])
def test_legacy_labels_and_bad_images_are_refused(value):
    with pytest.raises(InvalidInput):
        placement.image_ref(value)


@pytest.mark.parametrize("value", ["", "a\nb", "x" * 201, "tab\there"])
def test_bad_host_refs_are_refused(value):
    with pytest.raises(InvalidInput):
        placement.host_ref(value)


# -- CLI exit codes ---------------------------------------------------------------------------

@pytest.mark.parametrize("argv, code, text", [
    (["hub", "project", "add", "nope", "--host", HID], 2, "invalid project id"),
    (["hub", "project", "add", PID], 2, "--host"),
    (["hub", "project", "add", PID, "--host", "a\nb"], 2, "invalid host"),
    (["hub", "project", "add", PID, "--host", HID, "--image", "ubuntu2404"], 2, "legacy label"),
    (["hub", "project", "set", PID], 2, "nothing to change"),
    (["hub", "project", "set", PID, "--image", "UPPER/case:1"], 2, "invalid image"),
    (["hub", "project", "show", "project-x"], 2, "invalid project id"),
    (["hub", "project", "rm", "../etc"], 2, "invalid project id"),
    (["hub", "project", "show", PID], 5, "hub_dsn is not configured"),
    (["hub", "project", "list"], 5, "hub_dsn is not configured"),
    (["hub", "project", "add", PID, "--host", HID], 5, "hub_dsn is not configured"),
    (["keys", "register", "--internal-url", "http://10.0.0.5:8080/x"], 2, "invalid internal URL"),
    (["keys", "register", "--internal-url", "http://10.0.0.5:8080", "--clear-internal-url"], 2, "exclude"),
])
def test_exit_codes(cfg_file, capsys, argv, code, text):
    assert run(argv) == code
    err = capsys.readouterr().err
    assert err.startswith("cocalc-ctl: error: ") and err.count("\n") == 1 and text in err


def test_dry_run_prints_the_plan_without_a_hub(cfg_file, capsys):
    assert run(["--dry-run", "hub", "project", "add", PID, "--host", "host-b", "--image", "ubuntu:25.10"]) == 0
    out = capsys.readouterr().out
    assert out.strip() == (f"# INSERT INTO hub projects (project_id, host_id, rootfs_image) "
                           f"VALUES ({PID}, <host host-b>, docker.io/library/ubuntu:25.10)")
    proc.PLAN.clear()  # one invocation per process in real life
    assert run(["--dry-run", "--json", "hub", "project", "rm", PID]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["dry_run"] and doc["result"]["action"] == "removed" and "DELETE FROM hub projects" in doc["commands"][0]
    assert run(["--dry-run", "hub", "project", "set", PID, "--image", ""]) == 0
    assert "rootfs_image = NULL" in capsys.readouterr().out
