"""Exact podman and overlay command lines (what --dry-run prints and what really runs)."""

from __future__ import annotations

import pytest

from cocalc_ctl.tools import overlay, podman

STORE = podman.Storage(root="/srv/podman", runroot="/run/p", tmpdir="/run/lp", driver="overlay",
                       opts=("overlay.mount_program=/usr/bin/fuse-overlayfs",))


def test_global_storage_options_come_first():
    assert podman.pull(STORE, "docker.io/library/ubuntu:25.10", tls_verify=False, cert_dir="/etc/certs") == [
        "podman", "--root", "/srv/podman", "--runroot", "/run/p", "--tmpdir", "/run/lp",
        "--storage-driver", "overlay", "--storage-opt", "overlay.mount_program=/usr/bin/fuse-overlayfs",
        "pull", "-q", "--tls-verify=false", "--cert-dir", "/etc/certs", "--", "docker.io/library/ubuntu:25.10"]
    assert podman.pull(podman.Storage(), "x") == ["podman", "pull", "-q", "--", "x"]


def test_run_uses_configured_runtime_ulimits_limits_and_rootfs():
    spec = podman.RunSpec(
        name="project-1b4e28ba-2fa1-11d2-883f-0016d3cca427", rootfs="/var/lib/cocalc-ctl/project-roots/p",
        command=["/bin/sh", "-c", "exec sleep 1d"], runtime="runc", ulimits=["nofile=1024:1024", "nproc=512:512"],
        memory="1G", pids_limit=100, labels={"org.cocalc.project_id": "p"}, env={"HOME": "/home/user"},
        volumes=[("/mnt/cocalc/project-p", "/home/user")], publish=[("127.0.0.1", 40001, 8080)],
        readonly_volumes=[("/mnt/cocalc/project-p/.snapshots", "/home/user/.snapshots")],
        workdir="/home/user", hostname="project-p")
    assert podman.run(podman.Storage(), spec) == [
        "podman", "run", "--detach", "--name", "project-1b4e28ba-2fa1-11d2-883f-0016d3cca427",
        "--runtime", "runc", "--ulimit", "nofile=1024:1024", "--ulimit", "nproc=512:512",
        "--memory", "1G", "--pids-limit", "100", "--label", "org.cocalc.project_id=p",
        "--env", "HOME=/home/user", "--volume", "/mnt/cocalc/project-p:/home/user",
        "--volume", "/mnt/cocalc/project-p/.snapshots:/home/user/.snapshots:ro", "--publish", "127.0.0.1:40001:8080", "--workdir", "/home/user", "--hostname", "project-p",
        "--rootfs", "/var/lib/cocalc-ctl/project-roots/p", "/bin/sh", "-c", "exec sleep 1d"]


def test_run_without_runtime_or_limits_leaves_podmans_defaults():
    spec = podman.RunSpec(name="n", rootfs="/r", command=["x"])
    assert podman.run(podman.Storage(), spec) == ["podman", "run", "--detach", "--name", "n", "--rootfs", "/r", "x"]


@pytest.mark.parametrize("text,expected", [
    ("nofile=4096:4096,nproc=2048:2048", ["nofile=4096:4096", "nproc=2048:2048"]),
    (" nofile=10  nproc=5:6 ", ["nofile=10:10", "nproc=5:6"]),
    ("", []),
    (None, []),
    ("core=-1", ["core=-1:-1"]),
])
def test_parse_ulimits(text, expected):
    assert podman.parse_ulimits(text) == expected


@pytest.mark.parametrize("text", ["nofile", "nofile=a:b", "nofile=10:5", "NOFILE=1:1", "nofile=1:1;x"])
def test_parse_ulimits_rejects_garbage(text):
    with pytest.raises(ValueError):
        podman.parse_ulimits(text)


def test_parse_pull_output_takes_the_image_id():
    iid = "8979e191a4200f388ce235b84beccd4813749d0452208174adc14a76df65a5ed"
    assert podman.parse_image_id(f"Trying...\n{iid}\n") == iid
    assert podman.parse_image_id("garbage\n") is None
    assert podman.parse_image_ids(f"{iid}\nsha256:{iid}\nnope\n") == {iid}


def test_overlay_options_escape_colons_and_refuse_commas():
    assert overlay.mount("/c/docker.io/library/ubuntu:25.10", "/p/up", "/p/wk", "/m") == [
        "mount", "-t", "overlay", "overlay", "-o",
        "lowerdir=/c/docker.io/library/ubuntu\\:25.10,upperdir=/p/up,workdir=/p/wk", "/m"]
    with pytest.raises(ValueError):
        overlay.escape_path("/a,b")
    assert overlay.lowerdir_of("rw,lowerdir=/c/x\\:1,upperdir=/u,workdir=/w") == "/c/x\\:1"


def test_run_quota_flags():
    from cocalc_ctl.tools.podman import quota_args

    assert quota_args() == []
    assert quota_args(memory=32 << 20, pids=64, cpu_shares=512, tmp=8 << 20) == [
        "--memory", str(32 << 20), "--memory-swap", str(32 << 20), "--pids-limit", "64", "--cpu-shares", "512",
        "--tmpfs", f"/tmp:rw,nosuid,nodev,mode=1777,size={8 << 20}"]
    assert quota_args(memory=1 << 30, swap=1 << 30)[:4] == ["--memory", str(1 << 30), "--memory-swap", str(2 << 30)]


def test_run_with_a_log_driver_passes_it():
    spec = podman.RunSpec(name="n", rootfs="/r", command=["x"], log_driver="none")
    assert podman.run(podman.Storage(), spec) == ["podman", "run", "--detach", "--name", "n", "--log-driver", "none",
                                                 "--rootfs", "/r", "x"]


def test_exec_runs_as_a_numeric_user_only():
    assert podman.exec_(podman.Storage(), "c", ["/bin/sh", "-c", "true"], detach=True) == [
        "podman", "exec", "--user", "0:0", "--detach", "--", "c", "/bin/sh", "-c", "true"]
    assert podman.exec_(podman.Storage(), "c", ["id"], user="1000:1000")[2:4] == ["--user", "1000:1000"]
    for user in ("root", "0", "0:root", "user:0", ""):
        with pytest.raises(ValueError):
            podman.exec_(podman.Storage(), "c", ["id"], user=user)
