"""Keyset paging of lists that grow with the fleet (`--limit N`, `--after KEY`).

A page is read with `LIMIT n + 1`: the extra row only says that more exist, and the key of the
page's last row is what `--after` takes to continue (`next_after`; None on the last page). Keys are
validated here, where they enter.
"""

from __future__ import annotations

import datetime as dt
import sys

from cocalc_ctl import ids
from cocalc_ctl.errors import InvalidInput

DEFAULT_LIMIT = 100
MAX_LIMIT = 10000


class Page(list):
    """The rows of one page (a list, so its JSON is unchanged), and the key to continue from."""

    next_after: str | None = None


def page(rows: list, limit: int, key) -> Page:
    """rows were read with LIMIT limit+1; key(row) -> the --after of the next page."""
    p = Page(rows[:limit])
    if len(rows) > limit and p:
        p.next_after = key(p[-1])
    return p


def check_limit(limit: int) -> int:
    if not 1 <= limit <= MAX_LIMIT:
        raise InvalidInput(f"--limit {limit} is out of range", hint=f"give 1..{MAX_LIMIT}")
    return limit


def project_key(after: str) -> str:
    """--after of a list keyed by project: the last project id of the previous page."""
    try:
        return ids.project_id(after)
    except InvalidInput:
        raise InvalidInput(f"--after {after[:80]!r} is not a project id",
                           hint="give the KEY from the previous page's `more: --after KEY`") from None


def time_project_key(after: str) -> tuple[dt.datetime, str]:
    """--after of a list ordered by time, newest first: `<RFC 3339 time>/<project id>`."""
    when, sep, pid = after.rpartition("/")
    try:
        if not sep:
            raise ValueError
        at = dt.datetime.fromisoformat(when)
        if at.tzinfo is None:
            raise ValueError
        return at, ids.project_id(pid)
    except (ValueError, InvalidInput):
        raise InvalidInput(f"--after {after[:80]!r} is not a paging key",
                           hint="give the KEY from the previous page's `more: --after KEY` (TIME/PROJECT)") from None


def format_time_key(at: dt.datetime, project_id: str) -> str:
    return f"{at.isoformat()}/{project_id}"


def job_key(after: str) -> int:
    """--after of the backup jobs (newest first): the last job id of the previous page."""
    if not after.isdigit() or len(after) > 18 or int(after) < 1:
        raise InvalidInput(f"--after {after[:80]!r} is not a job id",
                           hint="give the KEY from the previous page's `more: --after KEY`")
    return int(after)


def more_line(next_after: str | None, *, json_array: bool = False) -> None:
    """Human output: a last line `… more: --after KEY`. A JSON array keeps its shape: the line goes to
    stderr then (a JSON object carries `next_after` instead)."""
    if next_after is None:
        return
    line = f"… more: --after {next_after}"
    if json_array:
        print(line, file=sys.stderr, flush=True)
    else:
        print(line, flush=True)
