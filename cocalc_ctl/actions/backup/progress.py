"""Progress of a long operation, for whoever asked for it (the CLI's bar on a TTY, JSON lines with --json).

The CLI sets `SINK` for the duration of a command; actions that can report progress call it with a
`backup_engine.Progress`. `watch_tree` reports the bytes written below a directory while another
process fills it (a restore: restic 0.14 prints no restore progress of its own). It only lstat()s
entries, never opens or follows them.
"""

from __future__ import annotations

import contextlib
import contextvars
import os
import threading
from typing import Callable, Iterator

from cocalc_ctl.tools.backup_engine import Progress

SINK: contextvars.ContextVar[Callable[[Progress], None] | None] = contextvars.ContextVar("progress_sink",
                                                                                       default=None)


def tree_size(path: str) -> tuple[int, int]:
    """(bytes, files) of the regular files below `path` (not following symlinks; vanishing entries skipped)."""
    total = files = 0
    for root, dirs, names in os.walk(path, followlinks=False):
        for n in names:
            try:
                st = os.lstat(os.path.join(root, n))
            except OSError:
                continue
            if (st.st_mode & 0o170000) == 0o100000:
                total += st.st_size
                files += 1
    return total, files


def snapshot(done: int, files: int, total: int | None, total_files: int | None) -> Progress:
    """A Progress whose total is given only when known, and never below what is already done."""
    if total is not None:
        total = max(total, done)
    percent = (done / total) if total else None
    return Progress(percent, done, total, files, total_files)


@contextlib.contextmanager
def watch_tree(path: str, sink: Callable[[Progress], None], *, total_bytes: int | None = None,
               total_files: int | None = None, interval: float = 0.5) -> Iterator[None]:
    stop = threading.Event()

    def poll() -> None:
        while not stop.wait(interval):
            done, files = tree_size(path)
            sink(snapshot(done, files, total_bytes, total_files))

    t = threading.Thread(target=poll, name="progress", daemon=True)
    sink(snapshot(0, 0, total_bytes, total_files))
    t.start()
    try:
        yield
    finally:
        stop.set()
        t.join()
    done, files = tree_size(path)
    sink(snapshot(done, files, total_bytes, total_files))
