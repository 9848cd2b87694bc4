"""The cocalc-ctl executable this process runs as: what units and sshd configs should start."""

from __future__ import annotations

import os
import sys

DEFAULT_INSTALLED = "/usr/local/bin/cocalc-ctl"


def running_program() -> str | None:
    """Absolute path of the executable this process was started as (a console script, bin/cocalc-ctl or
    a symlink to either; for `python -m cocalc_ctl` the console script beside that python), or None when
    it cannot be told (no such script, an embedded call)."""
    argv0 = sys.argv[0] if sys.argv else ""
    if argv0.endswith(os.path.join("cocalc_ctl", "__main__.py")):
        # `python -m cocalc_ctl`: the console script installed beside that interpreter runs the same code
        beside = os.path.join(os.path.dirname(sys.executable), "cocalc-ctl")
        return beside if is_executable(beside) else None
    if not argv0 or argv0 in ("-c", "-m") or argv0.endswith(".py"):
        return None
    path = os.path.abspath(argv0)
    if os.path.isfile(path) and os.access(path, os.X_OK):
        return path
    return None


def is_executable(path: str) -> bool:
    return os.path.isabs(path) and os.path.isfile(path) and os.access(path, os.X_OK)
