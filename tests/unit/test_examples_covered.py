"""Every file in examples/ is used by some test, so none of them can rot unnoticed."""

from __future__ import annotations

import re
from pathlib import Path

from tests.support.hosts import REPO

# `examples/sshd/receiver_sshd_config` or `REPO / "examples" / "systemd"` (a directory covers its files)
REFS = [re.compile(r"examples/([\w.-]+(?:/[\w.-]+)*)"), re.compile(r'"examples"\s*/\s*"([\w.-]+)"')]


def _references() -> set[str]:
    refs = set()
    for path in (REPO / "tests").rglob("*.py"):
        if path.resolve() == Path(__file__).resolve():
            continue
        text = path.read_text()
        for rx in REFS:
            refs.update(m.group(1).rstrip(".") for m in rx.finditer(text))
    return refs


def _covered(rel: str, refs: set[str]) -> bool:
    return any(rel == r or rel.startswith(r + "/") for r in refs)


def test_every_example_file_is_used_by_a_test():
    refs = _references()
    files = sorted(str(p.relative_to(REPO / "examples")) for p in (REPO / "examples").rglob("*") if p.is_file())
    assert "move-demo.py" in files and "rootfs-demo.sh" in files
    unused = [f for f in files if not _covered(f, refs)]
    assert not unused, f"examples/ files no test uses: {unused}"


def test_the_check_notices_an_unused_file():
    refs = {"config.yaml", "systemd"}
    assert _covered("systemd/x.timer", refs) and _covered("config.yaml", refs)
    assert not _covered("crontab", refs) and not _covered("config.yaml.orig", refs)
