"""A project's subvolume as the other project actions find it: does it exist, which snapshots it has."""

from __future__ import annotations

import os

from cocalc_ctl import ids, layout
from cocalc_ctl.actions.host.pool import require_pool
from cocalc_ctl.config import Config
from cocalc_ctl.errors import NotFound


def existing_project(cfg: Config, project_id: str) -> str:
    """The validated id of a project that exists on this host, else NotFound (checks the pool first)."""
    pid = ids.project_id(project_id)
    require_pool(cfg)
    if not layout.project_subvolume(cfg, pid).is_dir():
        raise NotFound(f"project {pid} does not exist on this host", hint="see `cocalc-ctl project list`")
    return pid


def snapshot_names(cfg: Config, pid: str) -> tuple[list[str], list[str]]:
    """(snapshot names, locked names) of a project, from its `.snapshots` directory."""
    d = layout.snapshots_dir(cfg, pid)
    names, locked = [], []
    try:
        entries = list(os.scandir(d))
    except FileNotFoundError:
        return [], []
    present = {e.name for e in entries}
    for e in entries:
        if not e.name.startswith(".") and e.is_dir(follow_symlinks=False):
            names.append(e.name)
            if f".{e.name}.lock" in present:
                locked.append(e.name)
    return sorted(names), sorted(locked)
