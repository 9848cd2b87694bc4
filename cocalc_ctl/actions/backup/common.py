"""What backup jobs, restores and backup-mode moves share: the per-project lock and removing a tree."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from cocalc_ctl import proc
from cocalc_ctl.tools import btrfs

PERSIST_IN_BACKUP = ".cocalc-ctl-persist"  # reserved top-level names inside a backup
MANIFEST_IN_BACKUP = ".cocalc-ctl-backup.json"


def project_lock(pid: str) -> str:
    """One lock per project for backup and restore: they must never overlap."""
    return f"project-{pid}.backup"


def is_subvolume(path: Path) -> bool:
    """A btrfs subvolume's root directory is inode 256 (callers have checked the pool is btrfs)."""
    try:
        st = os.lstat(path)
    except OSError:
        return False
    return st.st_ino == 256 and os.path.isdir(path)


def remove_tree(path: Path) -> None:
    """Delete a subvolume (with any nested ones) or a plain directory."""
    if not os.path.lexists(path):
        return
    if is_subvolume(path):
        for sub in sorted(btrfs.list_below(str(path)), key=lambda s: -len(s.path)):
            rel = sub.path.split(f"{path.name}/", 1)[-1]
            nested = path / rel
            if nested.is_dir():
                proc.run(btrfs.subvolume_delete(str(nested)))
        proc.run(btrfs.subvolume_delete(str(path)))
    elif not proc.plan_only(f"rm -rf {path}"):
        shutil.rmtree(path)
