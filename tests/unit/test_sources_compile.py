"""Every Python file in the repository compiles under the interpreter that runs the tests (the oldest
supported one in CI): benchmarks and scripts are not imported by the suite, so a syntax that only a newer
Python accepts (e.g. the same quote inside an f-string expression, 3.12+) would otherwise go unnoticed."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def _tracked_python_files() -> list[str]:
    out = subprocess.run(["git", "-C", str(REPO), "ls-files", "*.py"], capture_output=True, text=True)
    if out.returncode != 0:
        pytest.skip("not a git checkout")
    return [p for p in out.stdout.splitlines() if (REPO / p).is_file()]


def test_every_tracked_python_file_compiles():
    bad = []
    for rel in _tracked_python_files():
        src = (REPO / rel).read_text(encoding="utf-8")
        try:
            compile(src, rel, "exec", dont_inherit=True)
        except SyntaxError as exc:
            bad.append(f"{rel}:{exc.lineno}: {exc.msg}")
    assert not bad, "files that do not compile on this Python:\n" + "\n".join(bad)


def test_the_check_sees_the_benchmarks_and_scripts():
    files = _tracked_python_files()
    assert any(p.startswith("benchmarks/") for p in files) and any(p.startswith("scripts/") for p in files)
