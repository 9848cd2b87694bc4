"""flock-based locks under `<data_dir>/locks/`.

A lock file is named after what it protects (`project-<uuid>.backup`, `snapshot-auto`…). Locks are
advisory and released by the kernel when the holder dies, so a crashed run never blocks the next.
"""

from __future__ import annotations

import errno
import fcntl
import os
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from cocalc_ctl.errors import Busy


def lock_dir(data_dir: Path) -> Path:
    d = Path(data_dir) / "locks"
    d.mkdir(mode=0o700, parents=True, exist_ok=True)
    return d


@contextmanager
def hold(data_dir: Path, name: str, *, wait: bool = False, timeout: float | None = None,
         what: str | None = None) -> Iterator[Path]:
    """Hold lock `name`; raise Busy at once (or after `timeout` when waiting)."""
    if "/" in name or name.startswith("."):
        raise ValueError(f"bad lock name {name!r}")
    path = lock_dir(data_dir) / f"{name}.lock"
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except OSError as exc:
                if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN):
                    raise
                if not wait or (deadline is not None and time.monotonic() >= deadline):
                    holder = _read_holder(fd)
                    raise Busy(f"{what or name} is busy" + (f" (held by pid {holder})" if holder else ""),
                               hint="wait for the other run to finish, or retry later") from None
                time.sleep(0.1)
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        yield path
    finally:
        os.close(fd)


def try_hold_any(data_dir: Path, names: list[str]) -> tuple[int, str] | None:
    """Take the first free lock of `names` without waiting; return (fd, name) or None."""
    for name in names:
        path = lock_dir(data_dir) / f"{name}.lock"
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            continue
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        return fd, name
    return None


def is_held(data_dir: Path, name: str) -> bool:
    path = lock_dir(data_dir) / f"{name}.lock"
    if not path.exists():
        return False
    fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        fcntl.flock(fd, fcntl.LOCK_UN)
        return False
    except OSError:
        return True
    finally:
        os.close(fd)


def _read_holder(fd: int) -> str | None:
    try:
        data = os.pread(fd, 32, 0).decode().strip()
        return data if data.isdigit() else None
    except OSError:
        return None
