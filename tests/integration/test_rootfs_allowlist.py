"""Image sources are allow-listed (rootfs.local_roots, rootfs.registries): a reference the host's config
does not allow is refused before anything runs, wherever it enters (pull, resolve, mount, start, the hub)."""

from __future__ import annotations

import os
import socket
import threading
import uuid

import pytest

from tests.support.rootfs import busybox_tree, podman_store  # noqa: F401 (fixture)

pytestmark = pytest.mark.integration


class Canary:
    """A TCP listener on loopback that counts connections and closes each at once."""

    def __init__(self):
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.port = self.sock.getsockname()[1]
        self.connections = 0
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self):
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.connections += 1
            conn.close()

    def close(self):
        self.sock.shutdown(socket.SHUT_RDWR)
        self.sock.close()


@pytest.fixture
def canary():
    c = Canary()
    try:
        yield c
    finally:
        c.close()


def assert_refused(host, argv, setting):
    res = host.cli(*argv, check=False)
    assert res.returncode == 5, (argv, res.stdout, res.stderr)
    assert res.stderr.startswith("cocalc-ctl: error: image ") and setting in res.stderr, res.stderr
    assert len(res.stderr.strip().splitlines()) == 1


def test_disallowed_sources_are_refused_before_anything_runs(make_host, workdir, podman_store, canary):  # noqa: F811
    allowed_root = workdir / "images"
    allowed_root.mkdir()
    h = make_host("a", **{**podman_store.config, "rootfs.local_roots": str(allowed_root),
                          "podman.command": "/bin/sh -c 'exec sleep 100'"})
    outside = busybox_tree(workdir / "outside")
    (allowed_root / "escape").symlink_to(outside)  # a link in an allowed root that leads out of it
    (h.data / "secrets").mkdir(parents=True, exist_ok=True)
    (h.data / "secrets" / "key").write_text("secret\n")
    pid = str(uuid.uuid4())
    h.cli("project", "create", pid)
    port = canary.port
    local = {f"dir:{outside}": "rootfs.local_roots", f"dir:{allowed_root}/escape": "rootfs.local_roots",
             f"dir:{h.data}/secrets": "secrets_dir", f"dir:{h.data}": "data_dir", f"dir:{h.pool}": "btrfs_root",
             f"oci-archive:{outside}/etc/image": "rootfs.local_roots", "dir:/etc": "rootfs.local_roots"}
    remote = {f"127.0.0.1:{port}/x/y:1": "rootfs.registries", f"localhost:{port}/x:1": "rootfs.registries",
              "quay.io/team/img:1": "rootfs.registries"}
    for ref, setting in {**local, **remote}.items():
        for argv in (["rootfs", "pull", ref], ["rootfs", "resolve", pid, "--image", ref],
                     ["rootfs", "mount", pid, "--image", ref], ["project", "start", pid, "--image", ref]):
            assert_refused(h, argv, setting)
    assert canary.connections == 0, "a refused registry reference must not be connected to"
    assert not (h.data / "rootfs").exists() or not any((h.data / "rootfs").iterdir())
    assert not (h.data / "project-roots" / pid).exists() or not os.listdir(h.data / "project-roots" / pid)
    assert podman_store.run("ps", "-a", "-q").stdout.strip() == ""
    assert podman_store.images() == []
    # cocalc-ctl's own directories stay refused when an allowed root contains them
    h.write_config(**{"rootfs.local_roots": f"{allowed_root},{workdir}"})
    for ref, setting in ((f"dir:{h.data}/secrets", "secrets_dir"), (f"dir:{h.data}/rootfs", "data_dir"),
                         (f"dir:{h.pool}/project-{pid}", "btrfs_root"), (f"dir:{h.base}", "contains")):
        assert_refused(h, ["rootfs", "pull", ref], setting)
        assert_refused(h, ["project", "start", pid, "--image", ref], setting)
    assert not (h.data / "rootfs").exists() or not any((h.data / "rootfs").iterdir())

    # the same sources, allowed by the config: they work (the canary sees podman connect)
    inside = busybox_tree(allowed_root / "tree")
    h.write_config(**{"rootfs.registries": f"127.0.0.1:{port}"})
    assert h.json("rootfs", "pull", f"dir:{inside}")["downloaded"] is True
    res = h.cli("rootfs", "pull", f"127.0.0.1:{port}/x/y:1", check=False)
    assert res.returncode == 1  # the canary speaks no registry protocol
    assert canary.connections >= 1, "the allowed registry is contacted (the canary is a working probe)"
    # a listed host:port does not allow another port of that host
    assert_refused(h, ["rootfs", "pull", f"127.0.0.1:{port + 1 if port < 65535 else port - 1}/x/y:1"],
                   "rootfs.registries")


def test_an_image_from_the_hub_cannot_name_a_host_path_or_address(make_host, hub_dsn, canary):
    h = make_host("b", hub_dsn=hub_dsn)
    h.cli("hub", "migrate")
    h.cli("keys", "ensure")
    h.cli("keys", "register")
    pid = str(uuid.uuid4())
    h.cli("project", "create", pid)
    port = canary.port
    # the hub validates the shape only: which sources a host allows is the host's decision
    for ref, setting in ((f"dir:{h.data}/secrets", "rootfs.local_roots"),
                         (f"127.0.0.1:{port}/x/y:1", "rootfs.registries")):
        h.cli("hub", "project", "set", pid, "--image", ref) if h.cli("hub", "project", "show", pid, check=False
                                                                      ).returncode == 0 else \
            h.cli("hub", "project", "add", pid, "--host", h.host_id, "--image", ref)
        assert_refused(h, ["rootfs", "resolve", pid], setting)
        assert_refused(h, ["project", "start", pid], setting)
    assert canary.connections == 0
    assert not (h.data / "rootfs").exists() or not any((h.data / "rootfs").iterdir())
