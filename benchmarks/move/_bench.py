"""What the move benchmarks share: running a command, random data, waiting for btrfs's cleaner, the
environment report, and round-robin timing in a rotating order."""

from __future__ import annotations

import os
import statistics
import subprocess
import time
from pathlib import Path
from typing import Callable


def sh(*argv, **kw):
    return subprocess.run(argv, check=True, capture_output=True, **kw)


def write_random(path: Path, mb: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as fh:
        for _ in range(mb):
            fh.write(os.urandom(1 << 20))


def wait_for_cleaner(*pools: Path) -> None:
    """Deleted subvolumes are freed by btrfs's cleaner thread in the background: wait for it (and flush)
    so that work is not charged to whichever method runs next."""
    for pool in pools:
        sh("btrfs", "subvolume", "sync", str(pool))
        sh("btrfs", "filesystem", "sync", str(pool))


def print_environment() -> None:
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from benchenv import print_environment as show

    show(sys.executable)


def round_robin(methods: dict[str, Callable[[], object]], rounds: int,
                reset: Callable[[], object]) -> tuple[dict[str, list[float]], dict[str, float]]:
    """Run every method once per round (reset before each, and once at the end) so machine noise
    hits all alike, rotating which method goes first each round (none always follows the same one);
    return the times per method and their medians."""
    times: dict[str, list[float]] = {m: [] for m in methods}
    names = list(methods)
    for r in range(rounds):
        for m in names[r % len(names):] + names[:r % len(names)]:
            fn = methods[m]
            reset()
            t0 = time.monotonic()
            fn()
            times[m].append(time.monotonic() - t0)
            print(f"round {r + 1} {m}: {times[m][-1]:.2f}s", flush=True)
    reset()
    return times, {m: statistics.median(v) for m, v in times.items()}
