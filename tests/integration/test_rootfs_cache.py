"""rootfs pull into the cache from dir:, oci-archive: and a real registry; locking and failures."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import time

import pytest

from tests.support.hosts import CLI, REPO
from tests.support.rootfs import busybox_tree, import_image, podman_store, registry  # noqa: F401 (fixtures)

pytestmark = pytest.mark.integration


@pytest.fixture
def rhost(make_host, podman_store):  # noqa: F811
    """A host whose podman storage is private to the test."""
    return make_host("a", **podman_store.config)


def cache_entry(host, key):
    return host.data / "rootfs" / key


def marker(host, key):
    return json.loads((host.data / "rootfs" / (key + "~marker.json")).read_text())


def assert_tree_faithful(root):
    bb = root / "bin" / "busybox"
    assert os.access(bb, os.X_OK)
    assert (root / "bin" / "sh").stat().st_ino == bb.stat().st_ino, "hard links must stay hard links"
    assert bb.stat().st_nlink > 1
    assert os.readlink(root / "bin" / "true-link") == "busybox"
    assert stat.S_ISFIFO((root / "var" / "fifo").lstat().st_mode)
    owned = (root / "etc" / "owned").stat()
    assert (owned.st_uid, owned.st_gid) == (1234, 5678)
    assert stat.S_IMODE(owned.st_mode) == 0o4755
    assert stat.S_IMODE((root / "tmp").stat().st_mode) == 0o1777


def test_pull_dir_source_copies_tree_faithfully_and_second_pull_is_cached(rhost, workdir):
    tree = busybox_tree(workdir / "tree")
    out = rhost.json("rootfs", "pull", f"dir:{tree}")
    key = f"dir{tree}"
    assert out["downloaded"] is True and out["key"] == key
    entry = cache_entry(rhost, key)
    assert_tree_faithful(entry)
    assert os.getxattr(entry / "etc" / "tagged", "user.cocalc") == b"kept"
    m = marker(rhost, key)
    assert m["image"] == f"dir:{tree}" and m["size_bytes"] > 1_000_000 and m["pulled_at"]
    again = rhost.json("rootfs", "pull", f"dir:{tree}")
    assert again["downloaded"] is False
    listed = rhost.json("rootfs", "list")
    assert [e["image"] for e in listed] == [f"dir:{tree}"]


@pytest.mark.parametrize("transport", ["oci-archive", "docker-archive"])
def test_pull_archive_extracts_and_drops_podmans_copy(rhost, workdir, podman_store, transport):  # noqa: F811
    tree = busybox_tree(workdir / "tree", marker=transport)
    import_image(podman_store, tree, "localhost/bb:archive", workdir)
    archive = workdir / "bb.tar"
    podman_store.run("save", "--format", transport, "-o", str(archive), "localhost/bb:archive")
    podman_store.run("rmi", "localhost/bb:archive")
    assert podman_store.images() == []
    out = rhost.json("rootfs", "pull", f"{transport}:{archive}")
    entry = cache_entry(rhost, f"{transport}{archive}")
    assert (entry / "etc" / "image").read_text() == f"{transport}\n"
    assert_tree_faithful(entry)
    m = marker(rhost, f"{transport}{archive}")
    assert m["image_id"] and m["inspect"]["Os"] == "linux"
    assert out["kept_podman_copy"] is False
    assert podman_store.images() == [], "podman's copy must be removed after extraction"


def test_pull_from_local_registry(rhost, workdir, podman_store, registry):  # noqa: F811
    tree = busybox_tree(workdir / "tree", marker="registry")
    import_image(podman_store, tree, "localhost/bb:1", workdir)
    ref = f"{registry.address}/test/bb:1"
    podman_store.run("push", "--tls-verify=false", "localhost/bb:1", f"docker://{ref}")
    podman_store.run("rmi", "localhost/bb:1")
    rhost.write_config(**{"rootfs.registries": registry.address})
    out = rhost.json("rootfs", "pull", ref)
    assert out["downloaded"] is True and out["image"] == ref
    entry = cache_entry(rhost, ref)
    assert (entry / "etc" / "image").read_text() == "registry\n"
    assert_tree_faithful(entry)
    m = marker(rhost, ref)
    assert m["digest"].startswith("sha256:") and m["size_bytes"] > 1_000_000
    assert podman_store.images() == []
    assert not any((rhost.data / "rootfs" / ".partial").iterdir())


def test_concurrent_pulls_of_one_image_download_once(rhost, workdir, podman_store, registry):  # noqa: F811
    tree = busybox_tree(workdir / "tree")
    import_image(podman_store, tree, "localhost/bb:2", workdir)
    ref = f"{registry.address}/test/bb:2"
    podman_store.run("push", "--tls-verify=false", "localhost/bb:2", f"docker://{ref}")
    podman_store.run("rmi", "localhost/bb:2")
    rhost.write_config(**{"rootfs.registries": registry.address})
    fetches_before = registry.blob_fetches()
    procs = [subprocess.Popen([*CLI, "--json", "rootfs", "pull", ref], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True, env=rhost.env, cwd=str(REPO)) for _ in range(2)]
    results = []
    for p in procs:
        out, err = p.communicate(timeout=300)
        assert p.returncode == 0, err
        results.append(json.loads(out))
    assert sorted(r["downloaded"] for r in results) == [False, True]
    # one pull = one config blob + one layer blob fetched from the registry (the registry logs a request
    # after answering it, so its last line may still be on the way when the clients are done)
    deadline = time.monotonic() + 10
    while registry.blob_fetches() - fetches_before < 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert registry.blob_fetches() - fetches_before == 2
    assert_tree_faithful(cache_entry(rhost, ref))


def test_failed_pulls_leave_no_cache_entry(rhost, registry):  # noqa: F811
    missing = f"{registry.address}/test/nothing:1"
    rhost.write_config(**{"rootfs.registries": registry.address})
    res = rhost.cli("rootfs", "pull", missing, check=False)
    assert res.returncode == 1
    assert res.stderr.startswith("cocalc-ctl: error: pull of") and len(res.stderr.strip().splitlines()) == 1
    registry.stop()
    dead = f"{registry.address}/test/bb:1"
    res = rhost.cli("rootfs", "pull", dead, check=False)
    assert res.returncode == 1 and "cocalc-ctl: error:" in res.stderr
    cache = rhost.data / "rootfs"
    leftovers = [p for p in cache.rglob("*") if ".partial" not in p.parts and not p.is_dir()]
    assert leftovers == []
    assert not (cache / ".partial").exists() or not any((cache / ".partial").iterdir())
    assert rhost.json("rootfs", "list") == []


def test_hostile_references_are_refused_before_any_command(rhost, workdir):
    # A fake podman/cp on PATH records any call: none may happen.
    fake = workdir / "fakebin"
    fake.mkdir()
    calls = workdir / "calls"
    for prog in ("podman", "cp", "mount", "rm", "du", "skopeo"):
        (fake / prog).write_text(f"#!/bin/sh\necho {prog} \"$@\" >> {calls}\nexit 1\n")
        (fake / prog).chmod(0o755)
    env = {"PATH": f"{fake}:/usr/bin:/bin"}
    pid = "1b4e28ba-2fa1-11d2-883f-0016d3cca427"
    rhost.cli("project", "create", pid)
    refs = ("../../etc", "ubuntu;rm -rf /", "$(touch /tmp/pwned)", "a" * 10_000, "dir:/etc/../root",
            "oci-archive:relative.tar", "`id`", "UPPER/Case:1", "x\ny")
    cases = [["rootfs", "pull", ref] for ref in refs]
    for ref in refs[:2]:  # every command that takes an image, with a path escape and a shell injection
        cases += [["rootfs", "rm", ref], ["rootfs", "resolve", pid, "--image", ref],
                  ["rootfs", "mount", pid, "--image", ref], ["project", "start", pid, "--image", ref]]
    for argv in cases:
        res = rhost.cli(*argv, check=False, env=env)
        assert res.returncode == 2, (argv, res.stderr)
        assert res.stderr.startswith("cocalc-ctl: error: invalid image reference")
        assert len(res.stderr.strip().splitlines()) == 1
    assert not calls.exists()
    assert not (rhost.data / "project-roots").exists()
    assert not (rhost.data / "rootfs").exists() or rhost.json("rootfs", "list") == []


def test_leftovers_of_an_interrupted_pull_are_never_used_and_are_cleaned(rhost, workdir):
    tree = busybox_tree(workdir / "tree", marker="fresh")
    key = f"dir{tree}"
    cache = rhost.data / "rootfs"
    # what a pull killed at various points leaves: a half-extracted partial, and an entry renamed
    # into place whose marker was never written
    partial = cache / ".partial" / "0123456789abcdef01234567"
    (partial / "root" / "bin").mkdir(parents=True)
    half = cache_entry(rhost, key)
    (half / "etc").mkdir(parents=True)
    (half / "etc" / "image").write_text("half\n")
    assert rhost.json("rootfs", "list") == []
    pid_res = rhost.json("rootfs", "pull", f"dir:{tree}")
    assert pid_res["downloaded"] is True
    assert (half / "etc" / "image").read_text() == "fresh\n"
    rhost.json("rootfs", "gc")
    assert not partial.exists()


def test_pull_of_a_local_podman_image_uses_it_and_keeps_it(rhost, workdir, podman_store):  # noqa: F811
    tree = busybox_tree(workdir / "tree", marker="local")
    iid = import_image(podman_store, tree, "localhost/bb:3", workdir)
    rhost.write_config(**{"rootfs.registries": "localhost"})
    out = rhost.json("rootfs", "pull", "localhost/bb:3")
    assert out["downloaded"] is True and out["kept_podman_copy"] is True
    assert (cache_entry(rhost, "localhost/bb:3") / "etc" / "image").read_text() == "local\n"
    assert any(i.endswith(iid.split(":")[-1]) or iid.endswith(i) for i in podman_store.images()), \
        "an image that was in podman before the pull is not ours to remove"
