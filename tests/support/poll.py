"""Waiting in tests: poll a condition until it holds or a deadline passes (then fail, naming it)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Callable


def wait_until(what: str, pred: Callable[[], object], timeout: float = 60, interval: float = 0.1) -> None:
    """Poll `pred` every `interval` s until it is true; after `timeout` s fail with "timed out waiting for WHAT"."""
    deadline = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(interval)


def wait_for_path(path: Path, timeout: float = 60) -> None:
    """Wait until `path` exists (a file a container or server writes once it is up)."""
    deadline = time.monotonic() + timeout
    while not path.exists():
        if time.monotonic() > deadline:
            raise AssertionError(f"{path} never appeared")
        time.sleep(0.1)
