"""`host teardown` refuses while the pool is in use; `project delete` of a project at its quota."""

from __future__ import annotations

import subprocess
import uuid

import pytest

from tests.support.rootfs import busybox_tree, podman_store  # noqa: F401 (fixture)

pytestmark = pytest.mark.integration


def mounted(path) -> bool:
    with open("/proc/self/mountinfo") as fh:
        return f" {path} " in fh.read()


def test_teardown_refuses_while_a_project_runs_or_its_root_is_mounted(make_host, workdir, podman_store):  # noqa: F811
    h = make_host("a", **{**podman_store.config, "podman.command": "/bin/sh -c 'exec sleep 1000'",
                          "podman.ulimits": "nofile=1024:1024,nproc=1024:1024", "podman.stop_timeout": 1})
    tree = busybox_tree(workdir / "tree")
    pid = str(uuid.uuid4())
    h.cli("project", "create", pid)
    h.cli("project", "start", pid, "--image", f"dir:{tree}")
    res = h.cli("host", "teardown", "--delete-image", check=False)
    assert res.returncode == 4 and pid in res.stderr and len(res.stderr.strip().splitlines()) == 1, res.stderr
    assert mounted(h.pool) and (h.data / "pool.img").exists()
    assert h.json("project", "status", pid)["state"] == "running"
    h.cli("project", "stop", pid)
    # an overlay root alone (its upper dir lies in the pool) also keeps the pool busy
    h.cli("rootfs", "mount", pid, "--image", f"dir:{tree}")
    res = h.cli("host", "teardown", check=False)
    assert res.returncode == 4 and "project-roots" in res.stderr, res.stderr
    assert mounted(h.pool)
    h.cli("rootfs", "umount", pid)
    h.cli("host", "teardown", "--delete-image")
    assert not mounted(h.pool) and not (h.data / "pool.img").exists()


def fill(path) -> None:
    """Write until the quota says no."""
    res = subprocess.run(["dd", "if=/dev/zero", f"of={path}", "bs=1M", "count=400", "conv=fsync"],
                         capture_output=True, text=True)
    assert res.returncode != 0 and "quota" in res.stderr.lower(), res.stderr


def test_delete_of_a_project_that_filled_its_quota_removes_everything(host):
    pid = str(uuid.uuid4())
    host.cli("project", "create", pid, "--quota", "48M")
    root = host.project_path(pid)
    fill(root / "a.bin")
    host.cli("snapshot", "create", pid, "one")
    (root / "a.bin").unlink()
    fill(root / "b.bin")
    host.cli("snapshot", "create", pid, "two")
    host.cli("snapshot", "lock", pid, "two")
    res = host.cli("project", "delete", pid, "--force", check=False)
    assert res.returncode == 0, res.stderr
    assert not root.exists()
    assert pid not in host.cli("project", "list").stdout
    left = subprocess.run(["btrfs", "subvolume", "list", str(host.pool)], capture_output=True, text=True).stdout
    assert pid not in left, left
    assert not (host.pool / "_deleting").exists()


def test_delete_that_is_refused_leaves_the_project_and_its_quota_as_they_were(host):
    pid = str(uuid.uuid4())
    host.cli("project", "create", pid, "--quota", "48M")
    fill(host.project_path(pid) / "a.bin")
    host.cli("snapshot", "create", pid, "one")
    host.cli("snapshot", "lock", pid, "one")
    res = host.cli("project", "delete", pid, check=False)
    assert res.returncode == 4 and "locked" in res.stderr
    show = host.json("project", "show", pid)
    assert show["snapshots"] == ["one"] and show["quota_bytes"] == 48 << 20
