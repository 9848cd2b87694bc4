"""project start|stop|status with real podman (runc) on the overlay root; rootfs resolve from the hub."""

from __future__ import annotations

import http.client
import json
import sqlite3
import time
import urllib.request
import uuid

import pytest

from tests.support.rootfs import busybox_tree, podman_store  # noqa: F401 (fixture)

pytestmark = pytest.mark.integration

# The container proves three things at once: it writes into the project (home), into its own /
# (the merged root, so the project's upper dir), and serves HTTP on the published loopback port.
COMMAND = ("/bin/sh -c 'echo started > /home/user/started; echo root > /rootmark; "
           "exec /bin/httpd -f -p 8080 -h /home/user'")


@pytest.fixture
def rhost(make_host, podman_store):  # noqa: F811
    return make_host("a", **podman_store.config, **{
        "podman.command": COMMAND, "podman.ulimits": "nofile=1024:1024,nproc=1024:1024",
        "podman.memory": "256M", "podman.pids_limit": 64})


def host_row(host, pid):
    with sqlite3.connect(host.data / "host.sqlite") as conn:
        conn.row_factory = sqlite3.Row
        return dict(conn.execute("SELECT * FROM projects WHERE project_id=?", (pid,)).fetchone())


def wait_for_file(path, timeout=60):
    deadline = time.monotonic() + timeout
    while not path.exists():
        if time.monotonic() > deadline:
            raise AssertionError(f"{path} never appeared")
        time.sleep(0.1)


def get_when_listening(url: str, timeout: float = 60) -> bytes:
    """GET `url`, retrying while nothing answers yet (the container writes its marker files just
    before it execs the server, which may take a moment to listen)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(url, timeout=10) as resp:
                return resp.read()
        except (OSError, http.client.HTTPException) as exc:  # refused, reset, closed early, timed out
            if time.monotonic() > deadline:
                raise AssertionError(f"{url} did not answer within {timeout:.0f}s: {exc}") from None
            time.sleep(0.1)


def test_start_runs_a_container_on_the_merged_root_and_stop_clears_ports(rhost, workdir, podman_store):  # noqa: F811
    tree = busybox_tree(workdir / "tree")
    pid = str(uuid.uuid4())
    rhost.cli("project", "create", pid)
    out = rhost.json("project", "start", pid, "--image", f"dir:{tree}")
    assert out["already_running"] is False
    http_port, ssh_port = out["http_port"], out["ssh_port"]
    assert http_port and ssh_port and http_port != ssh_port
    row = host_row(rhost, pid)
    assert (row["state"], row["http_port"], row["ssh_port"]) == ("running", http_port, ssh_port)

    project = rhost.project_path(pid)
    wait_for_file(project / "started")
    upper = project / ".local" / "share" / "overlay" / f"dir{tree}" / "upper"
    wait_for_file(upper / "rootmark")
    assert (rhost.data / "project-roots" / pid / "rootmark").read_text() == "root\n"
    body = get_when_listening(f"http://127.0.0.1:{http_port}/started")
    assert body == b"started\n"

    info = json.loads(podman_store.run("container", "inspect", f"project-{pid}").stdout)[0]
    assert info["OCIRuntime"] == "runc"
    assert info["HostConfig"]["Memory"] == 256 << 20 and info["HostConfig"]["PidsLimit"] == 64
    assert {u["Name"]: (u["Soft"], u["Hard"]) for u in info["HostConfig"]["Ulimits"]}.items() >= {
        "RLIMIT_NOFILE": (1024, 1024), "RLIMIT_NPROC": (1024, 1024)}.items()
    assert info["Config"]["Labels"]["org.cocalc.project_id"] == pid
    st = rhost.json("project", "status", pid)
    assert (st["state"], st["container_state"], st["root_mounted"]) == ("running", "running", True)
    assert rhost.json("project", "start", pid)["already_running"] is True
    res = rhost.cli("rootfs", "umount", pid, check=False)
    assert res.returncode == 4, "the root of a running project stays mounted"

    stop = rhost.json("project", "stop", pid)
    assert stop["removed_container"] is True and stop["unmounted"] is True
    row = host_row(rhost, pid)
    assert (row["state"], row["http_port"], row["ssh_port"]) == ("stopped", None, None)
    assert podman_store.run("container", "exists", f"project-{pid}", check=False).returncode == 1
    with open("/proc/self/mountinfo") as fh:
        assert str(rhost.data / "project-roots" / pid) not in fh.read()
    st = rhost.json("project", "status", pid)
    assert (st["state"], st["container_state"], st["http_port"], st["ssh_port"]) == ("stopped", None, None, None)
    assert (upper / "rootmark").exists(), "what the container wrote to / stays in the project"
    assert rhost.json("project", "stop", pid)["removed_container"] is False  # idempotent

    # start again: same upper, the earlier write is still in /
    out = rhost.json("project", "start", pid)
    assert (rhost.data / "project-roots" / pid / "rootmark").exists()
    rhost.cli("project", "stop", pid)


def test_failed_start_leaves_nothing_running_or_mounted(make_host, workdir, podman_store):  # noqa: F811
    h = make_host("b", **{**podman_store.config, "podman.runtime": "no-such-runtime", "podman.command": "/bin/sh"})
    tree = busybox_tree(workdir / "tree")
    pid = str(uuid.uuid4())
    h.cli("project", "create", pid)
    res = h.cli("project", "start", pid, "--image", f"dir:{tree}", check=False)
    assert res.returncode == 1 and res.stderr.startswith("cocalc-ctl: error:")
    row = host_row(h, pid)
    assert (row["state"], row["http_port"], row["ssh_port"]) == ("stopped", None, None)
    with open("/proc/self/mountinfo") as fh:
        assert str(h.data / "project-roots" / pid) not in fh.read()


def test_resolve_reads_the_hub_and_records_the_normalised_image(make_host, hub_dsn):
    import psycopg

    h = make_host("c", hub_dsn=hub_dsn, **{"rootfs.registries": "registry.example:5000"})
    h.cli("hub", "migrate")
    a, b, c = (str(uuid.uuid4()) for _ in range(3))
    for pid in (a, b, c):
        h.cli("project", "create", pid)
    with psycopg.connect(hub_dsn, autocommit=True) as conn:
        conn.execute("INSERT INTO projects(project_id, rootfs_image, compute_image) VALUES (%s, NULL, 'ubuntu2404')",
                     (a,))
        conn.execute("INSERT INTO projects(project_id, rootfs_image, compute_image) VALUES (%s, %s, 'default')",
                     (b, " registry.example:5000/team/img:7 "))
        conn.execute("INSERT INTO projects(project_id, rootfs_image, compute_image) VALUES (%s, 'x;reboot', NULL)",
                     (c,))
    assert h.cli("rootfs", "resolve", a).stdout.strip() == "docker.io/library/ubuntu:25.10"
    out = h.json("rootfs", "resolve", b)
    assert (out["image"], out["source"]) == ("registry.example:5000/team/img:7", "hub")
    assert host_row(h, b)["image"] == "registry.example:5000/team/img:7"
    res = h.cli("rootfs", "resolve", c, check=False)
    assert res.returncode == 2 and "invalid image reference" in res.stderr
    assert host_row(h, c)["image"] is None
    assert h.json("rootfs", "resolve", c, "--image", "user/img")["image"] == "docker.io/user/img:latest"
    missing = str(uuid.uuid4())
    h.cli("project", "create", missing)
    res = h.cli("rootfs", "resolve", missing, check=False)
    assert res.returncode == 3 and "hub" in res.stderr


def test_start_uses_the_recorded_image_when_the_hub_is_down(make_host, workdir, podman_store):  # noqa: F811
    tree = busybox_tree(workdir / "tree")
    h = make_host("d", **{**podman_store.config, "podman.command": "/bin/sh -c 'exec /bin/sleep 1000'",
                          "hub_dsn": f"host={workdir}/no-such-socket-dir user=postgres dbname=x"})
    pid = str(uuid.uuid4())
    h.cli("project", "create", pid)
    res = h.cli("rootfs", "resolve", pid, check=False)
    assert res.returncode == 1 and "cannot connect to the hub" in res.stderr
    h.cli("rootfs", "resolve", pid, "--image", f"dir:{tree}")
    res = h.cli("project", "start", pid)
    assert "using the image recorded on this host" in res.stderr
    assert host_row(h, pid)["state"] == "running"
    h.cli("project", "stop", pid)


def test_delete_of_a_running_project_is_refused_and_force_stops_it_first(rhost, workdir, podman_store):  # noqa: F811
    tree = busybox_tree(workdir / "tree")
    pid = str(uuid.uuid4())
    rhost.cli("project", "create", pid)
    rhost.json("project", "start", pid, "--image", f"dir:{tree}")
    res = rhost.cli("project", "delete", pid, check=False)
    assert res.returncode == 4 and "running" in res.stderr
    rhost.cli("project", "delete", pid, "--force")
    assert not rhost.project_path(pid).exists()
    with open("/proc/self/mountinfo") as fh:
        assert str(rhost.data / "project-roots" / pid) not in fh.read()
    assert pid not in podman_store.run("ps", "-a", "--format", "{{.Names}}").stdout
