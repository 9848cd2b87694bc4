"""Helpers for the ops tests: parse systemd units and crontab lines, compare golden files."""

from __future__ import annotations

import os
import shlex
from pathlib import Path

UPDATE_GOLDEN = os.environ.get("UPDATE_GOLDEN") == "1"
GOLDEN = Path(__file__).resolve().parents[1] / "golden"


def parse_unit(text: str) -> dict[str, dict[str, list[str]]]:
    """A systemd unit as {section: {key: [values...]}} (repeated keys keep every value)."""
    out: dict[str, dict[str, list[str]]] = {}
    section = None
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("[") and line.endswith("]"):
            section = line[1:-1]
            out.setdefault(section, {})
            continue
        assert section is not None, f"key outside a section: {line!r}"
        key, sep, value = line.partition("=")
        assert sep, f"not key=value: {line!r}"
        out[section].setdefault(key.strip(), []).append(value.strip())
    return out


def exec_argv(value: str) -> list[str]:
    """argv of an Exec*= value (drops the `-` prefix; units here quote like a POSIX shell)."""
    value = value.lstrip("-@:+!")
    return [a.replace("%%", "%") for a in shlex.split(value)]


def check_golden(name: str, actual: str) -> None:
    """Compare `actual` with tests/golden/<name>; UPDATE_GOLDEN=1 rewrites the file instead."""
    path = GOLDEN / name
    if UPDATE_GOLDEN:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(actual)
        return
    assert path.is_file(), f"golden file {path} is missing: run with UPDATE_GOLDEN=1"
    expected = path.read_text()
    assert actual == expected, f"{name} differs from the golden file (UPDATE_GOLDEN=1 regenerates it)"


def cli_wrapper(directory: Path) -> str:
    """An executable that runs this checkout's CLI with the test's Python (the --bin the tests' units run)."""
    import sys

    from tests.support.hosts import REPO

    path = Path(directory) / "cocalc-ctl"
    path.write_text(f'#!/bin/sh\nPYTHONPATH={shlex.quote(str(REPO))} exec {shlex.quote(sys.executable)} '
                    f'-m cocalc_ctl "$@"\n')
    path.chmod(0o755)
    return str(path)
