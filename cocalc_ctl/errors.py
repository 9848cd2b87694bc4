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
