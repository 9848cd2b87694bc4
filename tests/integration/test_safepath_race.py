"""Root never follows a project's symlinks: every file root writes, replaces or deletes under a project
tree goes through safepath. A thread swaps a directory of the project for a symlink to an outside
directory and back, as fast as it can, while root writes; nothing outside the project may change."""

from __future__ import annotations

import errno
import os
import shutil
import threading
import time
import uuid
from pathlib import Path

import pytest

from cocalc_ctl import config, safepath
from cocalc_ctl.actions.keys import sshauth
from cocalc_ctl.actions.project import overlay, snapshots
from cocalc_ctl.errors import CocalcError

pytestmark = pytest.mark.integration

ROUNDS = 400
MIN_FLIPS = 20  # a fast machine can finish ROUNDS before the flipper thread has run: keep going until it has
DEADLINE = 60.0


def tree_state(root: Path) -> dict:
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for n in dirnames + filenames:
            p = Path(dirpath) / n
            st = p.lstat()
            out[str(p.relative_to(root))] = (st.st_mode, st.st_size, st.st_mtime_ns,
                                             p.read_bytes() if p.is_file() and not p.is_symlink() else None)
    return out


class Flipper:
    """Swaps parent/name between the real directory and a symlink to `outside`, until stopped."""

    def __init__(self, parent: Path, name: str, outside: Path):
        self.real, self.aside, self.outside = parent / name, parent / f"{name}.aside", outside
        self.stop = threading.Event()
        self.flips = 0
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _clear(self):
        """Remove whatever is at `real` now: our symlink, or a directory root made there meanwhile."""
        if os.path.islink(self.real):
            os.unlink(self.real)
        elif os.path.lexists(self.real):
            shutil.rmtree(self.real, ignore_errors=True)  # root may be adding to it: the caller retries

    def _retry(self, step):
        while True:
            try:
                return step()
            except (FileExistsError, OSError) as exc:
                if exc.errno not in (errno.EEXIST, errno.ENOTEMPTY):
                    raise
                self._clear()

    def _run(self):
        try:
            self._flip()
        except BaseException as exc:  # noqa: BLE001 (reported by __exit__)
            self.error = exc

    def _flip(self):
        while not self.stop.is_set():
            os.rename(self.real, self.aside)  # between flips `real` is always the real directory
            self._retry(lambda: os.symlink(self.outside, self.real))
            self._clear()
            self._retry(lambda: os.rename(self.aside, self.real))
            self.flips += 1

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        self.thread.join()
        assert self.error is None, f"the flipper died: {self.error!r}"
        assert self.real.is_dir() and not self.real.is_symlink()


def hammer(op, flipper: Flipper) -> tuple[int, int]:
    """Run op at least ROUNDS times and until the flipper has swapped MIN_FLIPS times meanwhile; a refusal
    or a vanished component is fine, anything else is not."""
    ok = refused = 0
    start, deadline = flipper.flips, time.monotonic() + DEADLINE
    while ok + refused < ROUNDS or (flipper.flips - start < MIN_FLIPS and time.monotonic() < deadline):
        if (ok + refused) % 16 == 0:
            time.sleep(0)  # let the flipper thread in
        try:
            op()
            ok += 1
        except CocalcError:
            refused += 1
        except OSError as exc:
            assert exc.errno in (errno.ENOENT, errno.ENOTDIR, errno.ELOOP), exc
            refused += 1
    return ok, refused


@pytest.fixture
def project(host, workdir):
    pid = str(uuid.uuid4())
    host.cli("project", "create", pid)
    cfg = config.load(str(host.config_path), env={})
    outside = workdir / "outside"
    for d in ("snap1", ".cocalc", "share/overlay"):
        (outside / d).mkdir(parents=True)
    (outside / ".snap1.lock").write_text("outside lock: must survive\n")
    (outside / ".cocalc" / "authorized_keys").write_text("outside keys\n")
    (outside / "share" / "overlay" / "current-image").write_text("outside image\n")
    return cfg, pid, host.project_path(pid), outside


def test_snapshot_lock_and_unlock_never_follow_a_swapped_snapshots_dir(host, project):
    cfg, pid, root, outside = project
    host.cli("snapshot", "create", pid, "snap1")
    before = tree_state(outside)
    with Flipper(root, ".snapshots", outside) as f:
        locked = hammer(lambda: snapshots.lock(cfg, pid, "snap1", reason="race"), f)
        unlocked = hammer(lambda: snapshots.unlock(cfg, pid, "snap1"), f)
    assert tree_state(outside) == before, "root wrote or deleted outside the project"
    assert f.flips >= 2 * MIN_FLIPS, f.flips
    snapshots.lock(cfg, pid, "snap1")  # without the race it works
    assert snapshots.is_locked(cfg, pid, "snap1") and (root / ".snapshots" / ".snap1.lock").is_file()
    snapshots.unlock(cfg, pid, "snap1")
    assert not snapshots.is_locked(cfg, pid, "snap1")
    assert not list((root / ".snapshots").glob("*.tmp")) and not list(outside.glob("*.tmp"))


def test_managed_keys_refresh_never_follows_a_swapped_ssh_dir(host, project):
    cfg, pid, root, outside = project
    (root / ".ssh" / ".cocalc").mkdir(parents=True)
    before = tree_state(outside)
    with Flipper(root, ".ssh", outside) as f:
        hammer(lambda: sshauth.refresh_managed_keys(cfg, pid), f)
    assert tree_state(outside) == before
    assert f.flips >= MIN_FLIPS, f.flips
    sshauth.refresh_managed_keys(cfg, pid)
    assert (root / ".ssh" / ".cocalc" / "authorized_keys").read_bytes() == b""


def test_current_image_write_never_follows_a_swapped_local_dir(host, project):
    cfg, pid, root, outside = project
    (root / ".local" / "share" / "overlay").mkdir(parents=True)
    before = tree_state(outside)
    with Flipper(root, ".local", outside) as f:
        hammer(lambda: overlay._write_current_image(cfg, pid, "dir:/images/x"), f)
    assert tree_state(outside) == before
    assert f.flips >= MIN_FLIPS, f.flips
    overlay._write_current_image(cfg, pid, "dir:/images/x")
    assert overlay.current_image(cfg, pid) == "dir:/images/x"


def test_safepath_write_unlink_rmtree_never_leave_the_tree(host, project):
    _, _, root, outside = project
    (root / "d" / "share" / "overlay").mkdir(parents=True)
    (outside / "share" / "overlay" / "victim").mkdir()
    before = tree_state(outside)
    parts = ("d", "share", "overlay")
    with Flipper(root, "d", outside) as f:
        w = hammer(lambda: safepath.write_file(root, (*parts, "current-image"), b"x\n"), f)
        u = hammer(lambda: safepath.unlink(root, (*parts, "current-image")), f)
        r = hammer(lambda: safepath.rmtree(root, (*parts, "victim")), f)
        c = hammer(lambda: safepath.open_dir(root, (*parts, "made"), create=True).__enter__(), f)
    assert tree_state(outside) == before
    assert f.flips >= 4 * MIN_FLIPS and min(map(sum, (w, u, r, c))) >= ROUNDS, (f.flips, w, u, r, c)
    # and without the race each one does its job
    safepath.write_file(root, (*parts, "current-image"), b"calm\n")
    assert (root / "d" / "share" / "overlay" / "current-image").read_bytes() == b"calm\n"
    assert safepath.unlink(root, (*parts, "current-image")) is True
    (root / "d" / "share" / "overlay" / "victim" / "x").mkdir(parents=True)
    assert safepath.rmtree(root, (*parts, "victim")) is True and not (root / "d" / "share" / "overlay" / "victim").exists()


def test_snapshot_commands_refuse_a_symlinked_snapshots_dir(host, project):
    cfg, pid, root, outside = project
    host.cli("snapshot", "create", pid, "snap1")
    os.rename(root / ".snapshots", root / ".snapshots-real")
    (root / ".snapshots").symlink_to(outside)
    (outside / "snap2").mkdir()
    before = tree_state(outside)
    for argv in (["snapshot", "create", pid, "snap3"], ["snapshot", "delete", pid, "snap1"],
                 ["snapshot", "lock", pid, "snap1"]):
        res = host.cli(*argv, check=False)
        assert res.returncode == 5 and "symlink" in res.stderr, (argv, res.stderr)
    assert tree_state(outside) == before
    os.unlink(root / ".snapshots")
    os.rename(root / ".snapshots-real", root / ".snapshots")
