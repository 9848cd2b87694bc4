"""Runs the bats suite (tests/bats) so one pytest run covers the shell contract too."""

import shutil
import subprocess
from pathlib import Path

import pytest


@pytest.mark.skipif(shutil.which("bats") is None, reason="bats not installed (apt-get install bats)")
def test_bats_shell_contract():
    suite = Path(__file__).parent / "bats"
    res = subprocess.run(["bats", "--tap", str(suite)], capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "not ok" not in res.stdout
