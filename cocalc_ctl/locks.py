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
         what: str | None = None, doing: str | None = None) -> Iterator[Path]:
    """Hold lock `name`; raise Busy at once (or after `timeout` when waiting).

    The holder writes its pid and what it is doing (`doing`, default `what`) into the lock file, so
    a refused run can say who holds it and why (`held by pid 431: restore of project …`)."""
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
                    raise Busy(f"{what or name} is busy{_holder_text(fd)}",
                               hint="wait for the other run to finish, or retry later") from None
                time.sleep(0.1)
        _write_holder(fd, doing or what or name)
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
        _write_holder(fd, name)
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


def _write_holder(fd: int, doing: str) -> None:
    text = " ".join(str(doing).split())[:200]
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n{text}\n".encode("utf-8", "replace"), 0)


def _read_holder(fd: int) -> tuple[str, str] | None:
    """(pid, what it is doing) from the lock file; an older holder wrote only its pid."""
    try:
        lines = os.pread(fd, 512, 0).decode("utf-8", "replace").splitlines()
    except OSError:
        return None
    if not lines or not lines[0].strip().isdigit():
        return None
    doing = " ".join(lines[1].split()) if len(lines) > 1 else ""
    return lines[0].strip(), "".join(c for c in doing if c.isprintable())


def _holder_text(fd: int) -> str:
    holder = _read_holder(fd)
    if holder is None:
        return ""
    pid, doing = holder
    return f" (held by pid {pid}: {doing})" if doing else f" (held by pid {pid})"
