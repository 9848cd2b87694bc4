"""Rendering: rich tables on a TTY, aligned plain text when piped, one JSON document with --json.

Logs and warnings go to stderr so stdout stays parseable. `rich` is imported only when a TTY
table is drawn, keeping startup fast for scripts and timers.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import json
import re
import sys
from pathlib import Path
from typing import Any, Iterable, Sequence

JSON = False
QUIET = False
VERBOSE = False
WIDE = False  # --wide: whole ids in terminal tables

_UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
_HEX_ID = re.compile(r"[0-9a-f]{32,64}")
_FINGERPRINT = re.compile(r"(SHA256:)([A-Za-z0-9+/]{43})")


_ISO_UTC = re.compile(r"(\d{4}-\d\d-\d\d)[T ](\d\d:\d\d:\d\d(?:\.\d+)?)(?:\+00:00|\+0000|Z)")


def rfc3339(value: Any) -> Any:
    """The one time format of every output: RFC 3339 in UTC with `Z` (`2026-11-27T10:57:55Z`).

    A datetime (naive ones are UTC) or a whole string that is an ISO time in UTC (`+00:00`, as stored in
    sqlite) is rewritten; anything else is returned unchanged."""
    if isinstance(value, _dt.datetime):
        if value.tzinfo is not None:
            value = value.astimezone(_dt.timezone.utc).replace(tzinfo=None)
        return value.isoformat() + "Z"
    if isinstance(value, str) and len(value) <= 40:
        m = _ISO_UTC.fullmatch(value)
        if m:
            return f"{m.group(1)}T{m.group(2)}Z"
    return value


def to_jsonable(obj: Any) -> Any:
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: to_jsonable(getattr(obj, f.name)) for f in dataclasses.fields(obj)
                if not f.name.startswith("_")}
    if isinstance(obj, dict):
        return {str(k): to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple, set, frozenset)):
        return [to_jsonable(v) for v in obj]
    if isinstance(obj, Path):
        return str(obj)
    if isinstance(obj, _dt.datetime):
        return rfc3339(obj)
    if isinstance(obj, _dt.date):
        return obj.isoformat()
    if isinstance(obj, str):
        return rfc3339(obj)
    return obj


def print_json(obj: Any) -> None:
    sys.stdout.write(json.dumps(to_jsonable(obj), indent=2, sort_keys=False) + "\n")
    sys.stdout.flush()


def json_line(obj: Any) -> None:
    """One JSON object per line (progress events)."""
    sys.stdout.write(json.dumps(to_jsonable(obj), separators=(",", ":")) + "\n")
    sys.stdout.flush()


def is_tty() -> bool:
    return sys.stdout.isatty()


def info(msg: str) -> None:
    if not QUIET and not JSON:
        print(msg, flush=True)


def note(msg: str) -> None:
    """Progress/log chatter: stderr, suppressed by -q."""
    if not QUIET:
        print(msg, file=sys.stderr, flush=True)


def warn(msg: str) -> None:
    print(f"cocalc-ctl: warning: {msg}", file=sys.stderr, flush=True)


def human_bytes(n: int | None) -> str:
    if n is None:
        return "-"
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(value) < 1024 or unit == "TiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{n} B"


def short_ids(text: str) -> str:
    """For a terminal table: a UUID or a hex id becomes its first 8 characters (unique in practice, and
    accepted as a prefix where ids are looked up), a key fingerprint `SHA256:` + 12 characters + `…`."""
    text = _UUID.sub(lambda m: m.group(0)[:8], text)
    text = _HEX_ID.sub(lambda m: m.group(0)[:8], text)
    return _FINGERPRINT.sub(lambda m: m.group(1) + m.group(2)[:12] + "…", text)


def terminal_width() -> int:
    import shutil

    return shutil.get_terminal_size((80, 24)).columns


def _fit(texts: list[list[str]], width: int) -> tuple[list[int], int]:
    """Column widths (and the gap between columns) so that a table fits `width`.

    A column is never narrower than its longest word, and a cell of at most 12 characters never wraps
    (sizes, times, states); wider columns shrink first, one character at a time. The gap is two spaces,
    or one when two do not fit."""
    n = len(texts[0])
    natural = [max(len(r[i]) for r in texts) for i in range(n)]
    minimum = [max(len(w) if len(r[i]) > 12 else len(r[i]) for r in texts for w in (r[i].split() or [""]))
               for i in range(n)]
    for gap in (2, 1):
        widths = list(natural)
        budget = width - gap * (n - 1)
        while sum(widths) > budget:
            shrinkable = [i for i in range(n) if widths[i] > minimum[i]]
            if not shrinkable:
                break
            i = max(shrinkable, key=lambda j: widths[j])
            widths[i] -= 1
        if sum(widths) <= budget:
            return widths, gap
    return widths, 1  # cannot fit without splitting words: the terminal wraps the line instead


def _wrap(text: str, width: int) -> list[str]:
    import textwrap

    if len(text) <= width:
        return [text]
    return textwrap.wrap(text, width, break_long_words=False, break_on_hyphens=False) or [""]


def table(columns: Sequence[str], rows: Iterable[Sequence[Any]], *, title: str | None = None) -> None:
    """Aligned plain text with an upper-case header.

    Piped, every value is whole on one line (scripts parse it; the terminal does not matter). On a
    terminal, the table fits its width: ids are shortened unless --wide, long text wraps at spaces,
    and no word is ever split."""
    rows = [["-" if c is None else str(rfc3339(c)) for c in r] for r in rows]
    header = [c.upper() for c in columns]
    if title and not QUIET:
        print(title)
    if is_tty():
        if not WIDE:
            rows = [[short_ids(c) for c in r] for r in rows]
        widths, gap = _fit([header, *rows], terminal_width())
        sep = " " * gap
        for r in [header, *rows]:
            cells = [_wrap(c, widths[i]) for i, c in enumerate(r)]
            for k in range(max(len(c) for c in cells)):
                print(sep.join((c[k] if k < len(c) else "").ljust(widths[i]) for i, c in enumerate(cells)).rstrip())
        return
    widths = [len(c) for c in columns]
    for r in rows:
        for i, c in enumerate(r):
            widths[i] = max(widths[i], len(c))
    print("  ".join(h.ljust(widths[i]) for i, h in enumerate(header)).rstrip())
    for r in rows:
        print("  ".join(c.ljust(widths[i]) for i, c in enumerate(r)).rstrip())


def kv(pairs: Sequence[tuple[str, Any]]) -> None:
    width = max((len(k) for k, _ in pairs), default=0)
    for k, v in pairs:
        print(f"{k.ljust(width)}  {'-' if v is None else rfc3339(v)}")
