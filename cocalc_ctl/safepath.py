"""Root's file operations under a tree a project controls: never follow a name the project can change.

A project owns every name below its subvolume (`.snapshots/` entries included) and can swap any
directory for a symlink at any moment, so root never opens such a path by name. Every operation
here starts from a directory root trusts (a project subvolume, a snapshot: names root made), then
walks the given components one by one relative to the previous directory's fd with
`O_NOFOLLOW|O_DIRECTORY`, and acts relative to the last fd: temporaries with `O_EXCL`, fsync, rename
within that directory, unlink or rmtree by fd. A symlink anywhere on the way is refused (ELOOP or
ENOTDIR: `UnsafePath`), never followed. Linux has `openat2(RESOLVE_BENEATH)`, but Python does not
expose it; the component walk gives the same guarantee for the names we use.
"""

from __future__ import annotations

import errno
import os
import shutil
import stat
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator

from cocalc_ctl.errors import PreconditionFailed

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


class UnsafePath(PreconditionFailed):
    """A component below the trusted root is a symlink or not a directory."""


def _check_parts(parts: tuple[str, ...]) -> None:
    for p in parts:
        if not p or p in (".", "..") or "/" in p or "\x00" in p:
            raise ValueError(f"not a single path component: {p!r}")


def _show(root: Path | str, parts: tuple[str, ...]) -> str:
    return "/".join([str(root).rstrip("/"), *parts])


def _unsafe(root, parts, exc: OSError) -> UnsafePath:
    return UnsafePath(f"{_show(root, parts)} is a symlink or not a plain directory "
                      f"({os.strerror(exc.errno or 0)}); refusing to follow it",
                      hint="remove or rename it inside the project (it must be a plain directory)")


@contextmanager
def open_dir(root: Path | str, parts: tuple[str, ...] = (), *, create: bool = False, mode: int = 0o755,
             owner: tuple[int, int] | None = None) -> Iterator[int]:
    """An fd of the directory root/parts…, reached without following a symlink; with `create`, missing
    directories are made (`mode`, chowned to `owner` when given). Closed on exit."""
    parts = tuple(parts)
    _check_parts(parts)
    fds = [os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)]
    try:
        for i, name in enumerate(parts):
            made = False
            if create:
                try:
                    os.mkdir(name, mode, dir_fd=fds[-1])
                    made = True
                except FileExistsError:
                    pass
                except OSError as exc:
                    # e.g. EPERM/EROFS in a read-only subvolume: fine if the entry is there already
                    try:
                        os.stat(name, dir_fd=fds[-1], follow_symlinks=False)
                    except OSError:
                        raise exc from None

            try:
                fds.append(os.open(name, _DIR_FLAGS, dir_fd=fds[-1]))
            except OSError as exc:
                if exc.errno in (errno.ELOOP, errno.ENOTDIR):
                    raise _unsafe(root, parts[:i + 1], exc) from None
                raise
            if made:
                os.fchmod(fds[-1], mode)
                if owner is not None:
                    os.fchown(fds[-1], *owner)
        yield fds[-1]
    finally:
        for fd in reversed(fds):
            os.close(fd)


def _split(parts: tuple[str, ...]) -> tuple[tuple[str, ...], str]:
    parts = tuple(parts)
    if not parts:
        raise ValueError("no file name given")
    _check_parts(parts)
    return parts[:-1], parts[-1]


def write_file(root: Path | str, parts: tuple[str, ...], data: bytes, *, mode: int = 0o644,
               owner: tuple[int, int] | None = None, create_dirs: bool = False, dir_mode: int = 0o755) -> None:
    """Atomically create or replace root/parts… with `data`: an `O_EXCL|O_NOFOLLOW` temporary in the
    same directory fd, fsync, rename relative to that fd, fsync of the directory."""
    dirs, name = _split(parts)
    with open_dir(root, dirs, create=create_dirs, mode=dir_mode, owner=owner) as dfd:
        tmp = f".{name}.{os.getpid()}.{os.urandom(4).hex()}.tmp"
        wfd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, mode, dir_fd=dfd)
        try:
            try:
                os.fchmod(wfd, mode)
                if owner is not None:
                    os.fchown(wfd, *owner)
                view = memoryview(data)
                while view:
                    view = view[os.write(wfd, view):]
                os.fsync(wfd)
            finally:
                os.close(wfd)
            os.rename(tmp, name, src_dir_fd=dfd, dst_dir_fd=dfd)
        except BaseException:
            try:
                os.unlink(tmp, dir_fd=dfd)
            except OSError:
                pass
            raise
        os.fsync(dfd)


def unlink(root: Path | str, parts: tuple[str, ...], *, missing_ok: bool = True) -> bool:
    """Remove the file (or symlink: it is never followed) root/parts…; False if it was not there."""
    dirs, name = _split(parts)
    try:
        with open_dir(root, dirs) as dfd:
            os.unlink(name, dir_fd=dfd)
            return True
    except FileNotFoundError:
        if missing_ok:
            return False
        raise


def rmtree(root: Path | str, parts: tuple[str, ...], *, missing_ok: bool = True) -> bool:
    """Remove root/parts… and everything below it by fd (a symlink is removed, not followed)."""
    dirs, name = _split(parts)
    try:
        with open_dir(root, dirs) as dfd:
            st = os.stat(name, dir_fd=dfd, follow_symlinks=False)
            if stat.S_ISDIR(st.st_mode):
                shutil.rmtree(name, dir_fd=dfd)
            else:
                os.unlink(name, dir_fd=dfd)
            return True
    except FileNotFoundError:
        if missing_ok:
            return False
        raise


def lexists(root: Path | str, parts: tuple[str, ...]) -> bool:
    """Whether root/parts… exists, reached without following a symlink on the way."""
    dirs, name = _split(parts)
    try:
        with open_dir(root, dirs) as dfd:
            os.stat(name, dir_fd=dfd, follow_symlinks=False)
            return True
    except (FileNotFoundError, UnsafePath, NotADirectoryError):
        return False


def read_file(root: Path | str, parts: tuple[str, ...], *, limit: int,
              log: Callable[[str], None] = lambda msg: None) -> bytes | None:
    """Read root/parts… without following any symlink the project owner may have planted; a missing
    file is None silently, an unreadable, special or oversized one is None with a log line."""
    dirs, name = _split(parts)
    rel = "/".join(parts)
    try:
        with open_dir(root, dirs) as dfd:
            fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, dir_fd=dfd)
            try:
                st = os.fstat(fd)
                if not stat.S_ISREG(st.st_mode):
                    log(f"skipping {root}/{rel}: not a regular file")
                    return None
                if st.st_size > limit:
                    log(f"skipping {root}/{rel}: {st.st_size} bytes is more than {limit}")
                    return None
                data = os.read(fd, limit + 1)
                if len(data) > limit:
                    log(f"skipping {root}/{rel}: more than {limit} bytes")
                    return None
                return data
            finally:
                os.close(fd)
    except UnsafePath:
        log(f"skipping {root}/{rel}: a symlink or non-directory on the way")
        return None
    except OSError as exc:
        if exc.errno not in (errno.ENOENT,):
            log(f"skipping {root}/{rel}: {os.strerror(exc.errno or 0)}")
        return None
