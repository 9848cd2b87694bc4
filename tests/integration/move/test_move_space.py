"""A destination that is too small: the move fails, B keeps no partial data, A is unchanged."""

from __future__ import annotations

import os
import uuid

import pytest

from tests.integration.move.test_move_pipe import tree_digest
from tests.support.move import make_project

pytestmark = pytest.mark.integration


def test_destination_too_small_fails_cleanly(small_pair):
    a, b, rb, _ = small_pair
    # 1. the project alone is bigger than B's free space: refused before anything is sent
    big = str(uuid.uuid4())
    make_project(a, big, {"big.bin": os.urandom(80 << 20)})
    a.cli("snapshot", "create", big, "s1")
    before = tree_digest(a.project_path(big))
    res = a.cli("move", "send", big, "--to", rb.spec(), check=False)
    assert res.returncode == 5 and "free" in res.stderr, res.stderr
    assert not (b.pool / "_incoming" / big).exists()
    assert tree_digest(a.project_path(big)) == before

    # 2. the live project fits but its snapshots together do not: the receive runs out of space
    #    half way, the partial receive is deleted and the sender rolls the destination back
    pid = str(uuid.uuid4())
    make_project(a, pid, {"x.bin": os.urandom(30 << 20)})
    a.cli("snapshot", "create", pid, "s1")
    (a.project_path(pid) / "x.bin").unlink()
    (a.project_path(pid) / "y.bin").write_bytes(os.urandom(30 << 20))
    a.cli("snapshot", "create", pid, "s2")
    digests = {n: tree_digest(a.project_path(pid) / ".snapshots" / n) for n in ("s1", "s2")}
    live = tree_digest(a.project_path(pid))
    res = a.cli("move", "send", pid, "--to", rb.spec(), check=False)
    assert res.returncode == 1 and "No space left" in res.stderr, res.stderr
    assert not (b.pool / "_incoming" / pid).exists()
    assert not b.project_path(pid).exists()
    assert tree_digest(a.project_path(pid)) == live
    for n, d in digests.items():
        assert tree_digest(a.project_path(pid) / ".snapshots" / n) == d
