"""After a failed or cancelled move, on its source: delete that move's own snapshot and staged stream
files (`move release`, the worker's clean-up step, and a failed send run by hand)."""

from __future__ import annotations

import os
import shutil
import sqlite3
from dataclasses import dataclass

from cocalc_ctl import ids, layout, locks, proc
from cocalc_ctl.actions.move import common
from cocalc_ctl.actions.project.subvolume import snapshot_names
from cocalc_ctl.config import Config
from cocalc_ctl.state import host_db
from cocalc_ctl.tools import btrfs


@dataclass
class ReleaseResult:
    project_id: str
    snapshot: str
    deleted_snapshot: bool = False
    deleted_streams: bool = False
    reason: str = ""


def release(cfg: Config, project_id: str, snapshot: str, *, locked: bool = False) -> ReleaseResult:
    """After a failed or cancelled move: delete that move's own snapshot `snapshot` (the exact name the
    move recorded, never a pattern) and its staged stream files on this source; the project stays.

    Only a name this host's move log records as a send of this project is deleted (a user's snapshot
    that happens to look like one is never touched), and a locked snapshot is left alone. Holds the
    project's move lock (`locked`: the caller holds it already), so a send still running here (a
    killed worker's) is never cut short: that refuses as busy and the worker tries again later."""
    pid = ids.project_id(project_id)
    name = ids.snapshot_name(snapshot)
    if not layout.project_subvolume(cfg, pid).exists():
        return ReleaseResult(pid, name, reason="project not on this host")
    if locked:
        return _release(cfg, pid, name)
    with locks.hold(cfg.data_dir, f"project-{pid}.move", what=f"move of project {pid}"):
        return _release(cfg, pid, name)


def _release(cfg: Config, pid: str, name: str) -> ReleaseResult:
    result = ReleaseResult(pid, name)
    try:
        with host_db.connect(cfg.data_dir) as conn:
            ours = conn.execute("SELECT 1 FROM move_log WHERE project_id=? AND role='send' AND move_id=? LIMIT 1",
                                (pid, name)).fetchone() is not None
    except sqlite3.Error:
        ours = False
    if not ours:
        result.reason = f"no send of {name} recorded here: nothing of that move to delete"
        return result
    names, locked_names = snapshot_names(cfg, pid)
    path = layout.snapshot_path(cfg, pid, name)
    if name in locked_names:
        result.reason = f"{name} is locked: kept"
    elif name in names and common.is_subvolume(path):
        proc.run(btrfs.subvolume_delete(str(path)))
        result.deleted_snapshot = True
    stale = layout.streams_dir(cfg, pid) / name
    if os.path.isdir(stale) and not os.path.islink(stale) and not proc.plan_only(f"rm -rf {stale}"):
        shutil.rmtree(stale, ignore_errors=True)
        result.deleted_streams = True
        try:
            layout.streams_dir(cfg, pid).rmdir()
        except OSError:
            pass
    if result.deleted_snapshot or result.deleted_streams:
        common.log(cfg, pid, "send", "release", "ok", move_id=name, snapshot=name)
        result.reason = result.reason or "released"
    else:
        result.reason = result.reason or "nothing left of that move here"
    return result
