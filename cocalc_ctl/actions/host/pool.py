"""Checks shared by every action that needs the btrfs pool."""

from __future__ import annotations

from cocalc_ctl.config import Config
from cocalc_ctl.errors import PreconditionFailed
from cocalc_ctl.tools import mounts


def require_pool(cfg: Config) -> None:
    root = cfg.btrfs_root
    if not root.is_dir():
        raise PreconditionFailed(f"btrfs pool {root} does not exist",
                                 hint="run `cocalc-ctl host init` (add --loopback SIZE for a test pool)")
    fstype = mounts.fstype_of(str(root))
    if fstype != "btrfs":
        raise PreconditionFailed(f"{root} is not on btrfs (it is {fstype or 'unknown'})",
                                 hint="mount the btrfs pool there or run `cocalc-ctl host init --loopback SIZE`")
