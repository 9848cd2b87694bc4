"""A moved project's sshd presents the same host key on the new host (users' known_hosts keep working)."""

from __future__ import annotations

import uuid

import pytest

from tests.support.rootfs import busybox_tree, podman_store  # noqa: F401 (fixture)
from tests.support.poll import wait_for_path as wait_for

pytestmark = pytest.mark.integration

COMMAND = "/bin/sh -c 'echo w > /home/user/written; exec /bin/sleep 100000'"


def test_move_carries_the_project_sshd_host_key(pair, workdir, podman_store):  # noqa: F811
    a, b, rb, _ = pair
    common = {**podman_store.config, "podman.command": COMMAND, "podman.ulimits": "nofile=1024:1024,nproc=1024:1024"}
    a.write_config(**common)
    b.write_config(**common, **{"isolation.uid_base": (1 << 20) + 5 * 65536})
    for h in (a, b):
        h.cli("keys", "ensure")
    tree = busybox_tree(workdir / "tree")
    pid = str(uuid.uuid4())
    a.cli("project", "create", pid)
    assert a.json("project", "start", pid, "--image", f"dir:{tree}")["sshd"] == "running"
    wait_for(a.project_path(pid) / "written")
    on_a = a.json("project", "status", pid)["ssh_host_key"]
    assert on_a.startswith("ssh-ed25519 ")
    assert a.cli("project", "ssh", pid, "--", "echo", "on-a").stdout == "on-a\n"
    a.cli("project", "stop", pid)

    a.cli("--json", "move", "send", pid, "--to", rb.spec(), "--mode", "pipe", "--snapshot", "move-ssh")
    b.cli("--json", "move", "finalize", pid)
    key = b.data / "sync" / "projects" / pid / "ssh" / "ssh_host_ed25519_key"
    assert key.stat().st_uid == 0 and key.stat().st_mode & 0o777 == 0o600
    assert b.json("project", "start", pid, "--image", f"dir:{tree}")["sshd"] == "running"
    assert b.json("project", "status", pid)["ssh_host_key"] == on_a
    # `project ssh` pins that key (StrictHostKeyChecking=yes): the login works only if B presents it
    assert b.cli("project", "ssh", pid, "--", "cat", "written").stdout == "w\n"
    b.cli("project", "stop", pid)
