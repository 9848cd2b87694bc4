"""The source's first steps in every move mode: stop the project, take (or reuse) the move snapshot."""

from __future__ import annotations

from cocalc_ctl import layout, proc
from cocalc_ctl.actions.project import snapshots as snapshot_actions
from cocalc_ctl.config import Config
from cocalc_ctl.errors import Busy
from cocalc_ctl.state import host_db
from cocalc_ctl.tools import btrfs, mounts


def stop_if_running(cfg: Config, pid: str) -> None:
    """A project moves stopped: its container is stopped and its overlay root unmounted first."""
    state = None
    if host_db.db_path(cfg.data_dir).exists():
        with host_db.connect(cfg.data_dir) as conn:
            row = host_db.get_project(conn, pid)
        state = row["state"] if row else None
    mounted = mounts.mount_at(str(layout.project_root_mount(cfg, pid))) is not None
    if state not in ("running", "starting", "stopping") and not mounted:
        return
    try:
        from cocalc_ctl.actions.project import containers  # the project runtime (podman), when installed
    except ImportError:
        raise Busy(f"project {pid} is running", hint="stop it first with `cocalc-ctl project stop`") from None
    containers.stop(cfg, pid)


def take_move_snapshot(cfg: Config, pid: str, name: str) -> None:
    """The final snapshot; one left by an earlier attempt is reused only if the project has not
    changed since (else it is replaced, so a retried move never ships stale data)."""
    path = layout.snapshot_path(cfg, pid, name)
    if path.exists() and not proc.DRY_RUN:
        # commit pending writes first: a subvolume's generation only moves at transaction commit
        proc.run(["btrfs", "filesystem", "sync", str(layout.project_subvolume(cfg, pid))], mutates=False)
        snap = btrfs.show(str(path))
        current = btrfs.show(str(layout.project_subvolume(cfg, pid))).generation
        if current <= snap.gen_at_creation:
            return
        proc.run(btrfs.subvolume_delete(str(path)))
    if not path.exists() or proc.DRY_RUN:
        snapshot_actions.create(cfg, pid, name)
