"""Per-project run quotas, set in the hub and applied by `project start` with real podman + runc.

On these machines cgroups are hybrid (v1 memory and pids controllers): podman's OOMKilled flag stays
false, but the kernel enforces memory.limit_in_bytes and pids.max, and the memory cgroup counts its
OOM kills, which `project status` reports."""

from __future__ import annotations

import json
import os
import subprocess
import time
import uuid

import pytest

from tests.support.hosts import REPO
from tests.support.rootfs import busybox_tree, podman_store  # noqa: F401 (fixture)

pytestmark = pytest.mark.integration

MiB = 1 << 20


@pytest.fixture
def qhost(make_host, podman_store, hub_dsn):  # noqa: F811
    h = make_host("a", hub_dsn=hub_dsn, **{**podman_store.config, "podman.stop_timeout": 1,
                                           "podman.ulimits": "nofile=1024:1024,nproc=1024:1024"})
    h.cli("hub", "migrate")
    h.cli("keys", "ensure")
    h.cli("keys", "register")
    return h


def tree_with(workdir, *applets):
    tree = busybox_tree(workdir / "tree")
    for a in applets:
        if not (tree / "bin" / a).exists():
            os.link(tree / "bin" / "busybox", tree / "bin" / a)
    return tree


def new_project(h, *quota):
    pid = str(uuid.uuid4())
    h.cli("project", "create", pid)
    h.cli("hub", "project", "add", pid, "--host", h.host_id, *quota)
    return pid


def wait_for(predicate, timeout=60, what="condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.5)
    raise AssertionError(f"timed out waiting for {what}")


def test_memory_quota_from_the_hub_oom_kills_and_status_says_so(qhost, workdir):
    tree = tree_with(workdir, "dd")
    pid = new_project(qhost, "--memory", "32M", "--pids", "64", "--cpu-shares", "512", "--tmp", "8M",
                      "--disk", "256M")
    shown = json.loads(qhost.cli("--json", "hub", "project", "show", pid).stdout)
    assert shown["run_quota"] == {"memory": 32 * MiB, "pids": 64, "cpu_shares": 512, "tmp": 8 * MiB,
                                  "disk": 256 * MiB}
    assert "memory 32.0 MiB" in qhost.cli("hub", "project", "show", pid).stdout
    # a child allocates 100 MiB under a 32 MiB limit; the container's shell stays up
    qhost.write_config(**{"podman.command": "/bin/sh -c 'dd if=/dev/zero of=/dev/null bs=100M count=1; "
                                            "exec sleep 1000'"})
    qhost.cli("project", "start", pid, "--image", f"dir:{tree}")
    try:
        st = wait_for(lambda: (s := qhost.json("project", "status", pid)) and s["out_of_memory"] and s,
                      what="the OOM kill")
        assert st["oom_kills"] >= 1 and st["state"] == "running"
        assert st["limits"] == {"memory": 32 * MiB, "swap": 0, "pids": 64, "cpu_shares": 512, "tmp": 8 * MiB,
                                "disk": 256 * MiB}
        human = qhost.cli("project", "status", pid).stdout
        assert "out of memory" in human and "memory 32.0 MiB" in human
    finally:
        qhost.cli("project", "stop", pid)
    # the main process itself over the limit: the container dies and status says why
    qhost.write_config(**{"podman.command": "/bin/sh -c 'exec dd if=/dev/zero of=/dev/null bs=100M count=1'"})
    qhost.cli("project", "start", pid, "--image", f"dir:{tree}")
    try:
        st = wait_for(lambda: (s := qhost.json("project", "status", pid)) and s["state"].startswith("crashed") and s,
                      what="the container's death")
        assert st["state"] == "crashed (out of memory)" and st["exit_code"] == 137 and st["out_of_memory"]
    finally:
        qhost.cli("project", "stop", pid)
    # podman's monitor writes an `oom` file into its working directory: never the caller's
    assert not (REPO / "oom").exists()


def test_fork_bomb_stops_at_the_pids_limit_and_the_host_stays_responsive(qhost, workdir):
    tree = tree_with(workdir)
    pid = new_project(qhost, "--pids", "48", "--memory", "256M")
    # every shell starts another one each second, forever: the number of processes doubles each second
    # until forks fail (read -t on a fifo waits without forking; a shell whose fork fails exits, and
    # the others take its place); the container's main process only sleeps
    qhost.write_config(**{"podman.command": "/bin/sh -c 'exec 3<>/var/fifo; "
                                            "b() { while :; do b & read -t 1 x <&3; done; }; b & exec sleep 1000'"})
    qhost.cli("project", "start", pid, "--image", f"dir:{tree}")
    try:
        main = qhost.json("project", "status", pid)
        assert main["limits"]["pids"] == 48
        cpid = int(subprocess.run(["podman", *podman_args(qhost), "inspect", "--format", "{{.State.Pid}}",
                                   f"project-{pid}"], capture_output=True, text=True, check=True).stdout)
        cg = [ln.split(":", 2)[2].strip() for ln in open(f"/proc/{cpid}/cgroup") if ":pids:" in ln][0]
        current = f"/sys/fs/cgroup/pids{cg}/pids.current"
        seen = []
        for _ in range(20):
            seen.append(int(open(current).read()))
            # the host answers meanwhile: a full cocalc-ctl command runs to completion
            assert qhost.json("project", "status", pid)["state"] == "running"
            time.sleep(0.5)
        assert max(seen) <= 48, seen
        refused = int(open(f"/sys/fs/cgroup/pids{cg}/pids.events").read().split()[-1])
        assert refused > 0, f"the bomb never reached the limit: {seen}"  # forks refused by pids.max
    finally:
        qhost.cli("project", "stop", pid)
    assert qhost.json("project", "status", pid)["container_state"] is None


def podman_args(h):
    c = h.extra_config
    return ["--root", c["podman.root"], "--runroot", c["podman.runroot"], "--tmpdir", c["podman.tmpdir"]]


def test_disk_quota_stops_writes_at_the_limit(qhost, workdir):
    tree = tree_with(workdir, "dd")
    pid = new_project(qhost, "--disk", "40M")
    qhost.write_config(**{"podman.command": "/bin/sh -c 'dd if=/dev/zero of=/home/user/big bs=1M count=200; "
                                            "exec sleep 1000'"})
    qhost.cli("project", "start", pid, "--image", f"dir:{tree}")
    try:
        big = qhost.project_path(pid) / "big"
        wait_for(lambda: big.exists(), what="the write")
        time.sleep(3)
        subprocess.run(["sync"], check=True)
        size = big.stat().st_size
        assert 8 * MiB < size <= 40 * MiB, size
        assert qhost.json("project", "status", pid)["limits"]["disk"] == 40 * MiB
        res = subprocess.run(["dd", "if=/dev/zero", f"of={qhost.project_path(pid)}/more", "bs=1M", "count=64",
                              "conv=fsync"], capture_output=True, text=True)
        assert res.returncode != 0 and "quota" in res.stderr.lower()
    finally:
        qhost.cli("project", "stop", pid)
    # the quota stays the project's: a host record keeps it for starts while the hub is away
    import sqlite3

    with sqlite3.connect(qhost.data / "host.sqlite") as conn:
        assert json.loads(conn.execute("SELECT run_quota FROM projects WHERE project_id=?",
                                       (pid,)).fetchone()[0]) == {"disk": 40 * MiB}


def test_the_quota_follows_the_project_to_another_host_and_survives_the_hub_being_away(
        qhost, make_host, podman_store, hub_dsn, workdir):  # noqa: F811
    tree = tree_with(workdir)
    qhost.write_config(**{"podman.command": "/bin/sh -c 'exec sleep 1000'"})
    pid = new_project(qhost, "--memory", "48M", "--pids", "100", "--tmp", "4M")
    # the project's data lands on host b (as a move or a restore leaves it) and the hub records it there
    b = make_host("b", hub_dsn=hub_dsn, **{**podman_store.config, "podman.stop_timeout": 1,
                                           "podman.ulimits": "nofile=1024:1024,nproc=1024:1024",
                                           "podman.command": "/bin/sh -c 'exec sleep 1000'",
                                           "podman.memory": "1G", "podman.pids_limit": 500})
    b.cli("keys", "ensure")
    b.cli("keys", "register")
    b.cli("project", "create", pid)
    qhost.cli("hub", "project", "set", pid, "--host", b.host_id, "--pids", "90")
    b.cli("project", "start", pid, "--image", f"dir:{tree}")
    try:
        assert b.json("project", "status", pid)["limits"] == {"memory": 48 * MiB, "swap": 0, "pids": 90,
                                                             "tmp": 4 * MiB}
    finally:
        b.cli("project", "stop", pid)
    # hub unreachable: b starts the project with the quota it recorded (and says so), not its defaults
    b.write_config(hub_dsn="host=/nonexistent-socket-dir dbname=none connect_timeout=2")
    res = b.cli("project", "start", pid, "--image", f"dir:{tree}")
    try:
        assert "using the run quota recorded on this host" in res.stderr
        assert b.json("project", "status", pid)["limits"]["pids"] == 90
    finally:
        b.cli("project", "stop", pid)
