"""Typed errors. Each carries the exit code the CLI maps it to (documented in the README).

0 ok, 1 operation failed, 2 usage / invalid input, 3 not found, 4 busy or locked,
5 missing external tool or unmet precondition.
"""

from __future__ import annotations

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_NOT_FOUND = 3
EXIT_BUSY = 4
EXIT_PRECONDITION = 5


class CocalcError(Exception):
    """Base error: a one-line message that says what went wrong and what to do."""

    exit_code = EXIT_FAILED

    def __init__(self, message: str, *, hint: str | None = None):
        super().__init__(message)
        self.message = message
        self.hint = hint

    def one_line(self) -> str:
        text = self.message if not self.hint else f"{self.message} ({self.hint})"
        return " ".join(text.split("\n"))


class OperationFailed(CocalcError):
    exit_code = EXIT_FAILED


class InvalidInput(CocalcError):
    """A bad id, name, path, option value or config value."""

    exit_code = EXIT_USAGE


class ConfigError(InvalidInput):
    pass


class NotFound(CocalcError):
    exit_code = EXIT_NOT_FOUND


class Busy(CocalcError):
    """A lock is held, a concurrency cap is reached, or a protected object is in use."""

    exit_code = EXIT_BUSY


class PreconditionFailed(CocalcError):
    exit_code = EXIT_PRECONDITION


class ToolMissing(PreconditionFailed):
    """An external program is not installed."""


class CommandFailed(OperationFailed):
    """An external command exited non-zero; carries the tail of its stderr."""

    def __init__(self, argv: list[str], returncode: int, stderr_tail: str = "", *, hint: str | None = None):
        prog = argv[0] if argv else "?"
        tail = stderr_tail.strip().splitlines()[-1] if stderr_tail.strip() else ""
        msg = f"{prog} exited {returncode}" + (f": {tail}" if tail else "")
        super().__init__(msg, hint=hint)
        self.argv = argv
        self.returncode = returncode
        self.stderr_tail = stderr_tail


class CommandTimeout(OperationFailed):
    pass


# -- expected failures that are not ours: the one mapping to a typed error -----------------------

_OS_ERRORS: dict[str, tuple[type[CocalcError], str | None]] = {
    # errno name: (error class, hint); the message is the system's own text plus the file name
    "ENOSPC": (OperationFailed, "free space on that filesystem (or raise its quota), then retry"),
    "EDQUOT": (OperationFailed, "raise the quota or free space under it, then retry"),
    "EFBIG": (OperationFailed, "the file is larger than this filesystem allows"),
    "EIO": (OperationFailed, "check the disk and `dmesg`"),
    "EROFS": (PreconditionFailed, "the filesystem is mounted read-only: remount it read-write"),
    "EACCES": (PreconditionFailed, "run as root, or fix the ownership and mode of that path"),
    "EPERM": (PreconditionFailed, "run as root, or fix the ownership and mode of that path"),
    "ENOENT": (NotFound, "check the path (and the config's data_dir / btrfs_root)"),
    "ENOTDIR": (NotFound, "a part of the path is not a directory"),
    "EISDIR": (InvalidInput, "expected a file, found a directory"),
    "EEXIST": (OperationFailed, "it already exists: remove it or choose another name"),
    "ENOTEMPTY": (OperationFailed, "the directory is not empty"),
    "ELOOP": (OperationFailed, "a symbolic link is in the way (links are never followed there)"),
    "EBUSY": (Busy, "something is using it: retry when it is done"),
    "ETXTBSY": (Busy, "something is using it: retry when it is done"),
    "EAGAIN": (Busy, "retry in a moment"),
    "EMFILE": (OperationFailed, "too many open files: raise `ulimit -n`"),
    "ENFILE": (OperationFailed, "the system's open file table is full"),
    "ENOMEM": (OperationFailed, "out of memory"),
    "EADDRINUSE": (Busy, "another process listens there: choose another address or stop it"),
    "EADDRNOTAVAIL": (InvalidInput, "that address is not on this machine"),
    "ECONNREFUSED": (OperationFailed, "check that the server is running and the address in the config"),
    "ECONNRESET": (OperationFailed, "the other side closed the connection: retry"),
    "EHOSTUNREACH": (OperationFailed, "check the network and the address in the config"),
    "ENETUNREACH": (OperationFailed, "check the network and the address in the config"),
    "ETIMEDOUT": (OperationFailed, "check that the server is up and reachable"),
    "EPIPE": (OperationFailed, "the other side went away: retry"),
    "EXDEV": (OperationFailed, "source and target are on different filesystems"),
}


def from_exception(exc: BaseException) -> CocalcError | None:
    """The typed error for an expected failure raised by the system or a library (a full disk, a
    missing file, a refused connection, bytes that are not UTF-8, an unreachable database), or None
    for a real bug. Used where errors become exit codes and where a job records why it failed, so
    both say the same friendly one line."""
    import errno as errno_mod

    if isinstance(exc, CocalcError):
        return exc
    if isinstance(exc, OSError):
        name = errno_mod.errorcode.get(exc.errno or 0, "")
        cls, hint = _OS_ERRORS.get(name, (OperationFailed, None))
        if name == "" and type(exc).__name__ == "gaierror":  # socket.gaierror: a name that does not resolve
            cls, hint = OperationFailed, "check the host name in the config"
        what = exc.strerror or str(exc) or type(exc).__name__
        where = f": {exc.filename}" if exc.filename is not None else ""
        if exc.filename2 is not None:
            where += f" -> {exc.filename2}"
        err = cls(f"{what[:1].lower()}{what[1:]}{where}", hint=hint)
        err.errno = exc.errno  # type: ignore[attr-defined]
        return err
    if isinstance(exc, UnicodeError):
        return InvalidInput(f"text that is not valid UTF-8 ({' '.join(str(exc).split())[:160]})",
                            hint="save it as UTF-8")
    module = type(exc).__module__ or ""
    if module.startswith("psycopg") and type(exc).__name__ in ("OperationalError", "InterfaceError"):
        first = (str(exc).strip().splitlines() or ["connection failed"])[0]
        return OperationFailed(f"hub database: {' '.join(first.split())[:240]}",
                               hint="check hub_dsn and that PostgreSQL is running and reachable")
    if module.startswith("psycopg") and type(exc).__name__ == "InsufficientPrivilege":
        # a host's least-privilege role (`hub host-role`) asked for more than it may: PostgreSQL refused
        first = (str(exc).strip().splitlines() or ["permission denied"])[0]
        return PreconditionFailed(f"the hub refused: {' '.join(first.split())[:240]}",
                                  hint="this hub role may not do that (a host writes only its own row: check "
                                       "host_id and the user in hub_dsn, see `hub host-role`)")
    if module == "sqlite3" and type(exc).__name__ == "OperationalError":
        text = " ".join(str(exc).split())
        if "disk is full" in text or "disk I/O" in text:
            return OperationFailed(f"host database: {text}", hint="free space on the filesystem of data_dir")
        if "locked" in text or "busy" in text:
            return Busy(f"host database: {text}", hint="another cocalc-ctl holds it: retry in a moment")
        if "readonly" in text or "unable to open" in text:
            return PreconditionFailed(f"host database: {text}", hint="check data_dir, its mode and free space")
    return None


def describe(exc: BaseException) -> str:
    """One line for a job's `error` column: the friendly form when the failure is an expected one."""
    err = from_exception(exc)
    if err is not None:
        return err.one_line()
    return f"{type(exc).__name__}: {' '.join(str(exc).split())}"
