"""Fixtures for rootfs tests: a tiny busybox tree and image, isolated podman storage, a local registry.

Everything is torn down even when a test fails: containers of the test's podman storage are removed,
the registry process is stopped, and the `workdir` fixture unmounts whatever podman left below it.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.support.ports import bind_failed, free_port, wait_listening

BUSYBOX = shutil.which("busybox") or "/bin/busybox"
APPLETS = ["sh", "ls", "cat", "echo", "sleep", "httpd", "id", "touch", "mkdir", "stat", "wc"]


def busybox_tree(dest: Path, marker: str = "one") -> Path:
    """A minimal root: busybox with hard-linked applets, a symlink, a fifo, a setuid file owned by
    1234:5678, a file with a user xattr, and /etc/image naming the tree (`marker`)."""
    for d in ("bin", "etc", "tmp", "home/user", "var/empty"):
        (dest / d).mkdir(parents=True, exist_ok=True)
    os.chmod(dest / "tmp", 0o1777)
    shutil.copy2(BUSYBOX, dest / "bin" / "busybox")
    for applet in APPLETS:
        os.link(dest / "bin" / "busybox", dest / "bin" / applet)
    os.symlink("busybox", dest / "bin" / "true-link")
    os.mkfifo(dest / "var" / "fifo")
    (dest / "etc" / "image").write_text(marker + "\n")
    owned = dest / "etc" / "owned"
    owned.write_text("owned\n")
    os.chown(owned, 1234, 5678)
    os.chmod(owned, 0o4755)
    tagged = dest / "etc" / "tagged"
    tagged.write_text("x\n")
    try:
        os.setxattr(tagged, "user.cocalc", b"kept")
    except OSError:
        pass
    return dest


@dataclass
class PodmanStore:
    root: Path
    runroot: Path
    tmpdir: Path

    @property
    def argv(self) -> list[str]:
        return ["podman", "--root", str(self.root), "--runroot", str(self.runroot), "--tmpdir", str(self.tmpdir)]

    def run(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        return subprocess.run([*self.argv, *args], capture_output=True, text=True, check=check, timeout=120)

    @property
    def config(self) -> dict:
        return {"podman.root": str(self.root), "podman.runroot": str(self.runroot),
                "podman.tmpdir": str(self.tmpdir), "podman.runtime": "runc", "podman.tls_verify": False,
                # image trees and archives of a test live in its workdir (the store's grandparent)
                "rootfs.local_roots": str(self.root.parent.parent)}

    def images(self) -> list[str]:
        return self.run("images", "-q", "--no-trunc").stdout.split()

    def teardown(self) -> None:
        # containers first (their conmon/runc processes would outlive the test), then images' mounts
        self.run("rm", "--all", "--force", "--time", "0", check=False)
        self.run("image", "umount", "--all", "--force", check=False)


@pytest.fixture
def podman_store(workdir):
    store = PodmanStore(workdir / "podman" / "root", workdir / "podman" / "run", workdir / "podman" / "tmp")
    for p in (store.root, store.runroot, store.tmpdir):
        p.mkdir(parents=True, exist_ok=True)
    try:
        yield store
    finally:
        store.teardown()


def import_image(store: PodmanStore, tree: Path, ref: str, workdir: Path) -> str:
    """`podman import` a tree as `ref`; returns the image id."""
    tar = workdir / f"rootfs-{abs(hash(ref))}.tar"
    subprocess.run(["tar", "--numeric-owner", "--xattrs", "--xattrs-include=*", "-C", str(tree), "-cf", str(tar), "."],
                   check=True)
    out = store.run("import", str(tar), ref).stdout.split()
    tar.unlink()
    return out[-1]


class Registry:
    """Debian's docker-registry on 127.0.0.1, plain HTTP, storage in a temp dir."""

    def __init__(self, base: Path):
        self.base = base
        self.port = free_port()
        self.proc: subprocess.Popen | None = None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> "Registry":
        self.base.mkdir(parents=True, exist_ok=True)
        conf = self.base / "config.yml"
        for attempt in range(5):
            if attempt:
                self.port = free_port()  # the one picked before was taken meanwhile
            conf.write_text(f"""version: 0.1
log:
  level: info
storage:
  filesystem:
    rootdirectory: {self.base / 'data'}
  delete:
    enabled: true
http:
  addr: {self.address}
""")
            self.log = open(self.base / "registry.log", "wb")
            self.proc = subprocess.Popen(["docker-registry", "serve", str(conf)], stdout=self.log,
                                         stderr=subprocess.STDOUT)
            try:
                wait_listening(self.proc, self.port, timeout=60, what="docker-registry")
                return self
            except RuntimeError:
                self.log.close()
                text = (self.base / "registry.log").read_text(errors="replace")
                if attempt == 4 or not bind_failed(text):
                    raise RuntimeError("docker-registry exited: " + text[-500:]) from None
            except TimeoutError:
                self.stop()
                raise
        raise AssertionError("unreachable")

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if getattr(self, "log", None):
            self.log.close()

    def blob_fetches(self) -> int:
        """GETs of layer/config blobs the registry served (from its access log)."""
        text = (self.base / "registry.log").read_text(errors="replace")
        return sum(1 for line in text.splitlines() if '"GET /v2/' in line and "/blobs/sha256:" in line)


@pytest.fixture
def registry(tmp_path_factory):
    reg = Registry(tmp_path_factory.mktemp("registry")).start()
    try:
        yield reg
    finally:
        reg.stop()
