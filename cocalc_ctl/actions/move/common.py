"""Pieces shared by the host-side move steps: the received-subvolume inventory and the move log."""

from __future__ import annotations

import datetime as dt
import os
from dataclasses import dataclass, field
from pathlib import Path

from cocalc_ctl import locks, proc
from cocalc_ctl.config import Config
from cocalc_ctl.state import host_db
from cocalc_ctl.tools import btrfs

MOVE_MARKER = ".move-snapshot"      # in _incoming/<uuid>/: name of the received move snapshot
SOURCE_MARKER = ".source"           # in _incoming/<uuid>/: the source host that owns this incoming dir
FINALIZING_MARKER = ".finalizing"   # in _incoming/<uuid>/: finalize has begun creating the project
PERSIST_DIR = ".persist"            # in _incoming/<uuid>/: the received persist store


@dataclass
class Received:
    name: str
    uuid: str | None
    received_uuid: str | None
    parent_uuid: str | None
    readonly: bool
    generation: int

    @property
    def complete(self) -> bool:
        return self.readonly and bool(self.received_uuid)


def is_subvolume(path: Path) -> bool:
    try:
        st = os.lstat(path)
    except OSError:
        return False
    return st.st_ino == 256 and (st.st_mode & 0o170000) == 0o040000


def inventory(incoming: Path) -> list[Received]:
    """Every subvolume directly in `incoming`, complete or not, in receive order (creation generation)."""
    out = []
    try:
        entries = sorted(os.scandir(incoming), key=lambda e: e.name)
    except FileNotFoundError:
        return []
    for e in entries:
        if e.name.startswith(".") or not is_subvolume(Path(e.path)):
            continue
        info = btrfs.show(e.path)
        out.append(Received(e.name, info.uuid, info.received_uuid, info.parent_uuid, info.readonly,
                            info.gen_at_creation))
    out.sort(key=lambda r: (r.generation, r.name))
    return out


def now_name(prefix: str = "move-") -> str:
    return prefix + dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ")


def log(cfg: Config, project_id: str, role: str, step: str, status: str, *, move_id: str | None = None,
        snapshot: str | None = None, parent: str | None = None, nbytes: int | None = None,
        detail: str | None = None) -> None:
    """Append one row to host sqlite `move_log` (audit and resume); never fails the move itself."""
    if proc.DRY_RUN:
        return
    try:
        with host_db.connect(cfg.data_dir) as conn:
            conn.execute("INSERT INTO move_log(project_id, move_id, role, step, snapshot, parent, bytes, status, "
                         "detail, at) VALUES (?,?,?,?,?,?,?,?,?,?)",
                         (project_id, move_id, role, step, snapshot, parent, nbytes, status,
                          (detail or "")[:500] or None, host_db.now_iso()))
    except Exception:  # the log is best effort: a locked or full database must not break a transfer
        pass


def receive_lock(cfg: Config, project_id: str):
    """The per-project lock every receiving step and finalize hold (waits up to 10 minutes)."""
    return locks.hold(cfg.data_dir, f"move-recv-{project_id}", wait=True, timeout=600,
                      what=f"receive of {project_id}")


@dataclass
class FinalizeResult:
    project_id: str
    path: str
    already_finalized: bool
    move_snapshot: str | None = None
    snapshots: list[str] = field(default_factory=list)
    persist_restored: bool = False
    backup_id: str | None = None  # backup mode: the backup restored here
