"""host init/status/teardown against real loopback btrfs."""

import json
import subprocess

import pytest

pytestmark = pytest.mark.integration


def test_init_creates_mounted_pool_with_quotas_and_private_dirs(host):
    st = host.json("host", "status")
    assert st["fstype"] == "btrfs" and st["mounted"] and st["quotas"]
    assert st["size_bytes"] == 1 << 30 and st["projects"] == 0
    assert (host.data / "secrets").stat().st_mode & 0o777 == 0o700
    assert (host.data / "host.sqlite").exists()
    out = subprocess.run(["btrfs", "qgroup", "show", str(host.pool)], capture_output=True)
    assert out.returncode == 0


def test_init_is_idempotent_on_an_existing_pool(host):
    res = host.cli("host", "init")
    assert "pool ready" in res.stdout


def test_init_refuses_an_existing_non_btrfs_path(make_host):
    h = make_host("plain", init=False)
    h.pool.mkdir(parents=True)
    (h.pool / "precious").write_text("data")
    res = h.cli("host", "init", "--loopback", "1G", check=False)
    assert res.returncode == 5
    assert res.stderr.count("\n") == 1 and "refusing to touch it" in res.stderr
    assert (h.pool / "precious").read_text() == "data"
    assert not (h.data / "pool.img").exists()


def test_init_without_pool_or_loopback_says_what_to_do(make_host):
    h = make_host("none", init=False)
    res = h.cli("host", "init", check=False)
    assert res.returncode == 5 and "--loopback" in res.stderr


def test_teardown_unmounts_and_detaches(make_host):
    h = make_host("td")
    image = h.data / "pool.img"
    h.cli("host", "teardown", "--delete-image")
    with open("/proc/self/mountinfo") as fh:
        assert str(h.pool) not in fh.read()
    loops = subprocess.run(["losetup", "-j", str(image)], capture_output=True, text=True).stdout
    assert loops.strip() == "" and not image.exists()


def test_teardown_refuses_a_pool_it_did_not_make(make_host):
    h = make_host("foreign")
    (h.data / "pool.json").unlink()
    res = h.cli("host", "teardown", check=False)
    assert res.returncode == 5 and "not made by" in res.stderr
    st = h.json("host", "status")
    assert st["mounted"]


def test_status_json_is_one_document(host):
    res = host.cli("host", "status", "--json")
    assert isinstance(json.loads(res.stdout), dict)
