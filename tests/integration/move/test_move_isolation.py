"""A project moved to a host that gives it another uid range comes out owned by the new range."""

from __future__ import annotations

import os
import sqlite3
import uuid

import pytest

from tests.support.rootfs import busybox_tree, podman_store  # noqa: F401 (fixture)
from tests.support.poll import wait_for_path as wait_for

pytestmark = pytest.mark.integration

SIZE = 65536
COMMAND = ("/bin/sh -c 'cat /home/user/doc.txt > /home/user/readback; echo w > /home/user/written; "
           "exec /bin/sleep 1000'")


def base_of(host, pid):
    with sqlite3.connect(host.data / "host.sqlite") as conn:
        return conn.execute("SELECT base FROM project_idmaps WHERE project_id=?", (pid,)).fetchone()[0]


def test_move_to_a_host_with_another_range_shifts_ownership_at_start(pair, workdir, podman_store):  # noqa: F811
    a, b, rb, _ = pair
    common = {**podman_store.config, "podman.command": COMMAND,
              "podman.ulimits": "nofile=1024:1024,nproc=1024:1024"}
    a.write_config(**common)
    b.write_config(**common, **{"isolation.uid_base": (1 << 20) + 3 * SIZE})
    tree = busybox_tree(workdir / "tree")
    pid = str(uuid.uuid4())
    a.cli("project", "create", pid)
    live = a.project_path(pid)
    (live / "doc.txt").write_text("moved notes\n")
    os.chown(live / "doc.txt", 1000, 1000)
    os.chmod(live / "doc.txt", 0o600)
    a.cli("project", "start", pid, "--image", f"dir:{tree}")
    wait_for(live / "written")
    base_a = base_of(a, pid)
    assert (live / "doc.txt").stat().st_uid == base_a + 1000 and (live / "readback").read_text() == "moved notes\n"
    a.cli("project", "stop", pid)

    a.cli("--json", "move", "send", pid, "--to", rb.spec(), "--mode", "pipe", "--snapshot", "move-iso")
    b.cli("--json", "move", "finalize", pid)
    moved = b.project_path(pid)
    assert (moved / "doc.txt").stat().st_uid == base_a + 1000, "a receive keeps the sender's ids"
    for f in ("readback", "written"):
        (moved / f).unlink()
    b.cli("project", "start", pid, "--image", f"dir:{tree}")
    wait_for(moved / "written")
    base_b = base_of(b, pid)
    assert base_b != base_a
    assert (moved / "readback").read_text() == "moved notes\n"
    assert (moved / "doc.txt").stat().st_uid == base_b + 1000 and moved.stat().st_uid == base_b
    assert (moved / "written").stat().st_uid == base_b
    b.cli("project", "stop", pid)
