"""Root's file operations under a tree a project controls: never follow a name the project can change.

A project owns every name below its subvolume (`.snapshots/` entries included) and can swap any
directory for a symlink at any moment, so root never opens such a path by name. Every operation
here starts from a directory root trusts (a project subvolume, a snapshot: names root made), then
walks the given components one by one relative to the previous directory's fd with
`O_NOFOLLOW|O_DIRECTORY`, and acts relative to the last fd: temporaries with `O_EXCL`, fsync, rename
within that directory, unlink or rmtree by fd. A symlink anywhere on the way is refused (ELOOP or
ENOTDIR: `UnsafePath`), never followed. Linux has `openat2(RESOLVE_BENEATH)`, but Python does not
expose it; the component walk gives the same guarantee for the names we use.

`write_atomic` (and `staged_write`) write root's own files the same careful way; together with
`write_file` they are the only way cocalc-ctl replaces a file atomically (tests/unit/test_atomic_writes.py).
"""

from __future__ import annotations

import errno
import os
import re
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
    same directory fd, fsync, rename relative to that fd, fsync of the directory. A symlink planted at
    the final name is replaced itself, never followed (the project owns these names)."""
    dirs, name = _split(parts)
    with open_dir(root, dirs, create=create_dirs, mode=dir_mode, owner=owner) as dfd:
        StagedWrite(dfd, name, data, mode, owner).commit()


# -- atomic writes of root's own files -------------------------------------------------------------
#
# Every file cocalc-ctl creates or replaces atomically goes through one of two doors: `write_file` above
# for a file under a tree a project can change, `write_atomic` below for a path only root can change
# (secrets, markers, units, metrics, profiles). Both write the same way (`StagedWrite`): a unique temporary in the target's
# directory (`.<name>.<pid>.<random>.tmp`, a name the directory's cleaners may remove), created
# O_CREAT|O_EXCL|O_NOFOLLOW with the final mode from the start (a secret is never readable by others,
# not even for a moment), written, fsynced, renamed over the target, then the directory fsynced; the
# temporary is removed on any error.

_TMP_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC


def temp_name(name: str) -> str:
    """The temporary `write_file`/`write_atomic` write `name` under (hidden, ends in `.tmp`)."""
    return f".{name}.{os.getpid()}.{os.urandom(4).hex()}.tmp"


_TEMP_RE = re.compile(r"\.(.+)\.[0-9]+\.[0-9a-f]{8}\.tmp", re.S)


def temp_target(tmp: str) -> str | None:
    """The name a leftover temporary of `temp_name` was for (a crash between write and rename), or None."""
    m = _TEMP_RE.fullmatch(tmp)
    return m.group(1) if m else None


class StagedWrite:
    """A whole file written and fsynced under a temporary name in directory `dfd`, not yet in place."""

    def __init__(self, dfd: int, name: str, data: bytes | str, mode: int, owner: tuple[int, int] | None):
        self.dfd, self.name, self.tmp = dfd, name, temp_name(name)
        if isinstance(data, str):
            data = data.encode()
        created = False

        def opener(path: str, _flags: int) -> int:
            nonlocal created
            fd = os.open(path, _TMP_FLAGS, mode, dir_fd=dfd)
            created = True
            return fd

        try:
            with open(self.tmp, "wb", opener=opener) as fh:
                os.fchmod(fh.fileno(), mode)  # the umask only narrowed it until now
                if owner is not None:
                    os.fchown(fh.fileno(), *owner)
                fh.write(data)
                fh.flush()
                os.fsync(fh.fileno())
        except BaseException:
            if created:
                self.discard()
            raise

    def commit(self) -> None:
        """Rename the temporary over the target and fsync the directory."""
        try:
            os.rename(self.tmp, self.name, src_dir_fd=self.dfd, dst_dir_fd=self.dfd)
        except BaseException:
            self.discard()
            raise
        self.tmp = None
        os.fsync(self.dfd)

    def discard(self) -> None:
        if self.tmp is not None:
            try:
                os.unlink(self.tmp, dir_fd=self.dfd)
            except OSError:
                pass
            self.tmp = None


@contextmanager
def staged_write(path: Path | str, data: bytes | str, *, mode: int, owner: tuple[int, int] | None = None,
                 dir_fd: int | None = None) -> Iterator[StagedWrite]:
    """`write_atomic` in two steps: the file is written and fsynced under its temporary name on entry;
    `.commit()` puts it in place; leaving the block without a commit (or by an exception) removes it.
    For a file that must take its name only once something else succeeded (a password PostgreSQL holds)."""
    with _target_dir(path, dir_fd) as (dfd, name):
        staged = StagedWrite(dfd, name, data, mode, owner)
        try:
            yield staged
        finally:
            staged.discard()


def write_atomic(path: Path | str, data: bytes | str, *, mode: int, owner: tuple[int, int] | None = None,
                 dir_fd: int | None = None) -> None:
    """Atomically create or replace `path` (a root-owned location; under a project tree use `write_file`)
    with `data`, `mode` (and `owner` (uid, gid)) from the first byte on: readers see the old file or the
    new one, never a part, and a crash leaves one of them. A symlink at `path` is refused (`UnsafePath`),
    never followed or replaced. With `dir_fd`, `path` is a single name in that open directory."""
    with staged_write(path, data, mode=mode, owner=owner, dir_fd=dir_fd) as staged:
        staged.commit()


@contextmanager
def _target_dir(path: Path | str, dir_fd: int | None) -> Iterator[tuple[int, str]]:
    if dir_fd is not None:
        dfd, name, own = dir_fd, os.fspath(path), False
        _check_parts((name,))
    else:
        path = os.path.abspath(os.fspath(path))
        name = os.path.basename(path)
        _check_parts((name,))
        dfd, own = os.open(os.path.dirname(path), os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC), True
    try:
        try:
            st = os.stat(name, dir_fd=dfd, follow_symlinks=False)
        except FileNotFoundError:
            st = None
        if st is not None and stat.S_ISLNK(st.st_mode):
            where = name if dir_fd is not None else path
            raise UnsafePath(f"{where} is a symlink; refusing to write through or over it",
                             hint="remove the link (a plain file or nothing belongs there)")
        yield dfd, name
    finally:
        if own:
            os.close(dfd)


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
