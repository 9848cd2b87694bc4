"""The fleet soak's end check for move snapshots (benchmarks/soak/soak.py `move_subvolumes`) must be able
to fail: a move snapshot left anywhere in a real btrfs pool is found, and a listing that cannot be made
is a finding too, never "none"."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
import uuid

import pytest

from tests.support.hosts import REPO
from tests.support.move import make_project

pytestmark = pytest.mark.integration


def _soak():
    spec = importlib.util.spec_from_file_location("cocalc_soak_under_test", REPO / "benchmarks" / "soak" / "soak.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod
    spec.loader.exec_module(mod)
    return mod


def _ends(found: list[str], tails: list[str]) -> bool:
    """`btrfs subvolume list` names paths from the filesystem's top level: compare their ends."""
    return len(found) == len(tails) and all(f.endswith(t) for f, t in zip(sorted(found), sorted(tails)))


def test_soak_finds_a_leftover_move_snapshot_anywhere_in_a_pool(host, tmp_path):
    soak = _soak()
    pid = str(uuid.uuid4())
    make_project(host, pid, {"a.txt": b"a\n"})
    host.cli("snapshot", "create", pid, "s1")
    assert soak.move_subvolumes(host.pool) == []
    # a move snapshot left on the source by a failed move, and a received one on a destination
    left = host.project_path(pid) / ".snapshots" / "move-20261202T000000Z"
    subprocess.run(["btrfs", "subvolume", "snapshot", "-r", str(host.project_path(pid)), str(left)], check=True,
                   capture_output=True)
    found = soak.move_subvolumes(host.pool)
    assert _ends(found, [f"project-{pid}/.snapshots/move-20261202T000000Z"]), found
    (host.pool / "_incoming" / pid).mkdir(parents=True)
    got = host.pool / "_incoming" / pid / "move-20261201T000000Z"
    subprocess.run(["btrfs", "subvolume", "create", str(got)], check=True, capture_output=True)
    found = soak.move_subvolumes(host.pool)
    assert _ends(found, [f"_incoming/{pid}/move-20261201T000000Z",
                         f"project-{pid}/.snapshots/move-20261202T000000Z"]), found
    for sub in (got, left):
        subprocess.run(["btrfs", "subvolume", "delete", str(sub)], check=True, capture_output=True)
    assert soak.move_subvolumes(host.pool) == []
    # not a btrfs filesystem: the listing fails, and that is a finding
    found = soak.move_subvolumes(tmp_path)
    assert found and "failed" in found[0], found
