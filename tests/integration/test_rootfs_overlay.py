"""Per-project overlay roots on real overlayfs over a btrfs project; list/rm/gc around mounts."""

from __future__ import annotations

import json
import os
import uuid

import pytest

from tests.support.rootfs import busybox_tree, podman_store  # noqa: F401 (fixture)

pytestmark = pytest.mark.integration


@pytest.fixture
def rhost(make_host, podman_store):  # noqa: F811
    return make_host("a", **podman_store.config)


def is_mounted(path) -> bool:
    with open("/proc/self/mountinfo") as fh:
        return any(line.split()[4] == str(path) for line in fh)


def test_writes_land_in_the_project_upper_survive_remount_and_images_keep_separate_uppers(rhost, workdir):
    one = busybox_tree(workdir / "one", marker="one")
    two = busybox_tree(workdir / "two", marker="two")
    pid = str(uuid.uuid4())
    rhost.cli("project", "create", pid)
    out = rhost.json("rootfs", "mount", pid, "--image", f"dir:{one}")
    merged = rhost.data / "project-roots" / pid
    assert out["merged"] == str(merged) and is_mounted(merged)
    assert (merged / "etc" / "image").read_text() == "one\n"

    (merged / "etc" / "hello").write_text("from the merged root\n")
    overlay_dir = rhost.project_path(pid) / ".local" / "share" / "overlay"
    upper = overlay_dir / f"dir{one}" / "upper"
    assert (upper / "etc" / "hello").read_text() == "from the merged root\n"
    assert not (one / "etc" / "hello").exists(), "the image source is never written"
    assert not (rhost.data / "rootfs" / f"dir{one}" / "etc" / "hello").exists(), "nor the cache entry"
    assert (overlay_dir / "current-image").read_text().strip() == f"dir:{one}"

    rhost.cli("snapshot", "create", pid, "s1")
    snap = rhost.project_path(pid) / ".snapshots" / "s1"
    assert (snap / ".local" / "share" / "overlay" / f"dir{one}" / "upper" / "etc" / "hello").exists()

    # idempotent: same image again is a no-op
    assert rhost.json("rootfs", "mount", pid)["already_mounted"] is True
    rhost.cli("rootfs", "umount", pid)
    assert not is_mounted(merged)
    assert rhost.json("rootfs", "umount", pid)["was_mounted"] is False
    rhost.cli("rootfs", "mount", pid)  # image recorded in host sqlite by the first mount
    assert (merged / "etc" / "hello").read_text() == "from the merged root\n"

    # another image: refused without --remount, then a separate upper, the old one intact
    res = rhost.cli("rootfs", "mount", pid, "--image", f"dir:{two}", check=False)
    assert res.returncode == 4 and "--remount" in res.stderr
    rhost.cli("rootfs", "mount", pid, "--image", f"dir:{two}", "--remount")
    assert (merged / "etc" / "image").read_text() == "two\n"
    assert not (merged / "etc" / "hello").exists()
    (merged / "etc" / "second").write_text("2\n")
    assert (overlay_dir / f"dir{two}" / "upper" / "etc" / "second").exists()
    assert (upper / "etc" / "hello").exists() and not (upper / "etc" / "second").exists()
    assert (overlay_dir / "current-image").read_text().strip() == f"dir:{two}"
    assert json.loads(rhost.cli("--json", "project", "show", pid).stdout)["image"] == f"dir:{two}"
    rhost.cli("rootfs", "umount", pid)


def test_workdir_is_emptied_before_mount(rhost, workdir):
    tree = busybox_tree(workdir / "tree")
    pid = str(uuid.uuid4())
    rhost.cli("project", "create", pid)
    work = rhost.project_path(pid) / ".local" / "share" / "overlay" / f"dir{tree}" / "work"
    work.mkdir(parents=True)
    (work / "stale").write_text("left by a crash")
    rhost.cli("rootfs", "mount", pid, "--image", f"dir:{tree}")
    assert not (work / "stale").exists()
    rhost.cli("rootfs", "umount", pid)


def test_rm_and_gc_never_touch_a_mounted_image(rhost, workdir):
    used = busybox_tree(workdir / "used", marker="used")
    old = busybox_tree(workdir / "old", marker="old")
    newer = busybox_tree(workdir / "newer", marker="newer")
    rhost.cli("rootfs", "pull", f"dir:{old}")
    rhost.cli("rootfs", "pull", f"dir:{newer}")
    pid = str(uuid.uuid4())
    rhost.cli("project", "create", pid)
    rhost.cli("rootfs", "mount", pid, "--image", f"dir:{used}")
    listed = {e["image"]: e for e in rhost.json("rootfs", "list")}
    assert listed[f"dir:{used}"]["mounted_by"] == [pid] and listed[f"dir:{used}"]["projects"] == [pid]
    assert listed[f"dir:{old}"]["mounted_by"] == []

    res = rhost.cli("rootfs", "rm", f"dir:{used}", check=False)
    assert res.returncode == 4 and "mounted" in res.stderr
    size = listed[f"dir:{newer}"]["size_bytes"]
    # a budget that fits two entries: only the oldest unused one goes
    out = rhost.json("rootfs", "gc", "--max-size", str(2 * size + 1000))
    assert out["removed"] == [f"dir:{old}"]
    out = rhost.json("rootfs", "gc")
    assert out["removed"] == [f"dir:{newer}"]
    assert [e["image"] for e in rhost.json("rootfs", "list")] == [f"dir:{used}"]
    assert (rhost.data / "project-roots" / pid / "etc" / "image").read_text() == "used\n"

    rhost.cli("rootfs", "umount", pid)
    # still named by the project (host sqlite): plain gc keeps it, a zero budget removes it
    assert rhost.json("rootfs", "gc")["removed"] == []
    assert rhost.json("rootfs", "gc", "--max-size", "0")["removed"] == [f"dir:{used}"]
    assert rhost.json("rootfs", "list") == []
    assert not os.path.exists(rhost.data / "rootfs" / f"dir{used}")


def test_bind_mode_dir_source_uses_the_directory_in_place(make_host, workdir, podman_store):  # noqa: F811
    h = make_host("b", **podman_store.config, **{"rootfs.dir_source": "bind"})
    tree = busybox_tree(workdir / "tree")
    out = h.json("rootfs", "pull", f"dir:{tree}")
    assert os.path.islink(out["path"]) and os.path.realpath(out["path"]) == str(tree)
    pid = str(uuid.uuid4())
    h.cli("project", "create", pid)
    h.cli("rootfs", "mount", pid, "--image", f"dir:{tree}")
    assert h.json("rootfs", "list")[0]["mounted_by"] == [pid]
    h.cli("rootfs", "umount", pid)
    h.cli("rootfs", "rm", f"dir:{tree}")
    assert (tree / "bin" / "busybox").exists(), "rm drops the cache link, never the source"


def test_symlinks_planted_in_the_project_are_refused(rhost, workdir):
    tree = busybox_tree(workdir / "tree")
    outside = workdir / "outside"
    outside.mkdir()
    pid = str(uuid.uuid4())
    rhost.cli("project", "create", pid)
    project = rhost.project_path(pid)
    os.symlink(outside, project / ".local")
    res = rhost.cli("rootfs", "mount", pid, "--image", f"dir:{tree}", check=False)
    assert res.returncode == 5 and "symlink" in res.stderr
    assert list(outside.iterdir()) == [], "nothing is created through the link"
    assert not is_mounted(rhost.data / "project-roots" / pid)

    # a planted work -> / link is dropped as a link, never followed
    os.unlink(project / ".local")
    image_dir = project / ".local" / "share" / "overlay" / f"dir{tree}"
    image_dir.mkdir(parents=True)
    os.symlink(outside, image_dir / "work")
    (outside / "precious").write_text("keep me")
    os.symlink(outside / "precious", project / ".local" / "share" / "overlay" / "current-image.tmp")
    rhost.cli("rootfs", "mount", pid, "--image", f"dir:{tree}")
    assert (outside / "precious").read_text() == "keep me"
    assert not os.path.islink(image_dir / "work")
    rhost.cli("rootfs", "umount", pid)
