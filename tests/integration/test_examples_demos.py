"""The demos in examples/ run as written, end to end, and leave nothing behind — also when they are
killed half-way. (Everything else in examples/ is checked by tests/unit/test_examples_sshpiper.py,
tests/unit/test_ops_generated.py and `scripts/regenerate --check`.)"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

import pytest

from tests.support.hosts import REPO
from tests.support.leftovers import DemoRun, force_cleanup, leftovers, processes_left

pytestmark = pytest.mark.integration

MOVE_DEMO = REPO / "examples" / "move-demo.py"
ROOTFS_DEMO = REPO / "examples" / "rootfs-demo.sh"
UUID = r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}"


@pytest.fixture(autouse=True)
def _root():
    if os.geteuid() != 0:
        pytest.skip("the demos need root")


def _python3() -> str:
    # run it as the README says (`python3 examples/move-demo.py`; it switches to the checkout's venv itself)
    # when there is such a venv, else with this interpreter
    if (REPO / ".venv" / "bin" / "python").exists() and shutil.which("python3"):
        return shutil.which("python3")
    return sys.executable


@pytest.fixture
def scratch():
    """TMPDIR for a demo (its throwaway PostgreSQL lands here, so nothing of it can hide in /tmp).
    Traversable by the `nobody` user PostgreSQL runs as."""
    d = Path(tempfile.mkdtemp(prefix="cocalc-exdemo-", dir="/var/tmp"))
    os.chmod(d, 0o755)
    try:
        yield d
    finally:
        force_cleanup(d)


def _run(argv: list[str], prefix: str, scratch: Path) -> DemoRun:
    env = {k: v for k, v in os.environ.items() if not k.startswith("COCALC_CTL_")}
    env["TMPDIR"] = str(scratch)
    return DemoRun(argv, prefix, scratch / "demo.log", env=env)


@contextmanager
def _demo(argv: list[str], prefix: str, scratch: Path):
    """Start a demo; on the way out (after the test looked) end it and remove anything it left."""
    run = _run(argv, prefix, scratch).start()
    t0 = time.monotonic()
    try:
        yield run
    finally:
        _finish(run, scratch)
        print(f"{prefix.strip('-')} took {time.monotonic() - t0:.1f}s")


def _completed(run: DemoRun) -> str:
    """Wait for a full run; it must exit 0 with `demo: ok` as its last line. Returns its output."""
    rc = run.wait(timeout=240)
    out = run.output
    assert rc == 0, out[-4000:]
    assert out.rstrip().splitlines()[-1] == "demo: ok", out[-2000:]
    return out


def _finish(run: DemoRun, scratch: Path) -> None:
    """Always: end the demo's process group and remove anything it left (after the test looked)."""
    run.stop()
    for base in run.bases():
        _podman_rm_all(base)
        force_cleanup(base)


def _podman_rm_all(base: Path) -> None:
    """The rootfs demo's containers (they outlive a killed conmon)."""
    root = base / "podman"
    if (root / "root").exists():
        subprocess.run(["podman", "--root", str(root / "root"), "--runroot", str(root / "run"), "--tmpdir",
                        str(root / "tmp"), "rm", "--all", "--force", "--time", "0"], capture_output=True, timeout=120)


def _assert_clean(run: DemoRun, scratch: Path) -> None:
    bases = run.bases()
    assert bases, run.output[-3000:]
    for base in bases:
        assert base.name.startswith(run.prefix), base
        left = leftovers(base)
        assert not left, left
    # every process the demo started inherited TMPDIR=scratch: none is left (sshd, registry, PostgreSQL...),
    # and its PostgreSQL (which lives under TMPDIR) was removed
    left = processes_left(str(scratch))
    assert not left, left
    assert not [p for p in scratch.iterdir() if p.name.startswith("cocalc-pg-")], list(scratch.iterdir())


def _port_closed(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=2).close()
    except OSError:
        return True
    return False


# ---------------------------------------------------------------------------------------------- move


def test_move_demo_moves_there_back_and_via_the_hub_with_checksums_and_cleans_up(scratch):
    with _demo([_python3(), str(MOVE_DEMO)], "cocalc-move-demo-", scratch) as run:
        out = _completed(run)
        pid = re.search(rf"^# project ({UUID}) on A: (\d+) files", out, re.M)
        assert pid and pid.group(2) == "4", out[:2000]
        pid = pid.group(1)
        # pipe A -> B, staged + zstd B -> A, hub worker A -> B: each ends with the files checked on arrival
        pipe = out.index(f"$ cocalc-ctl move send {pid} --to root@127.0.0.3:")
        staged = out.index(f"$ cocalc-ctl move send {pid} --to root@127.0.0.2:")
        worker = out.index("$ cocalc-ctl move worker --once")
        assert pipe < staged < worker
        assert re.search(rf"moved {pid} to root@127\.0\.0\.3:\d+: 4 streams, .*\(pipe, none\)", out)
        assert re.search(rf"moved {pid} to root@127\.0\.0\.2:\d+: 4 streams, .*\(staged, zstd\); final snapshot "
                         r"move-back", out)
        assert f"{pid}: done" in out
        assert re.search(rf"^{pid}\s+done\s+\w+\s+\w+\s+pipe/none\s+1\s+20\.0 MiB", out, re.M), out[-1500:]
        oks = re.findall(r"^# ok: all 4 files arrived on ([AB]) with their checksums$", out, re.M)
        assert oks == ["B", "A", "B"], out
        for s in ("s1", "s2", "s3"):
            assert re.search(rf"^{s}\s+\S+\s+\d+\s+20\.0 MiB", out, re.M), s
        # the receiver's forced command refuses what is outside its grammar
        assert "refused command 'list ../../etc; id'" in out and "(exit 2)" in out
        assert "FAILED" not in out and "Traceback" not in out
        _assert_clean(run, scratch)


def test_move_demo_killed_half_way_still_cleans_up(scratch):
    with _demo([_python3(), str(MOVE_DEMO)], "cocalc-move-demo-", scratch) as run:
        # after the first move, while both sshd receivers run and the project sits on B
        run.wait_for_line(r"^# ok: all 4 files arrived on B", timeout=180)
        os.kill(run.proc.pid, signal.SIGTERM)
        rc = run.wait(timeout=120)
        out = run.output
        assert rc == 1, out[-3000:]
        assert "demo: interrupted by signal 15" in out and "demo: ok" not in out
        _assert_clean(run, scratch)


# -------------------------------------------------------------------------------------------- rootfs


def test_rootfs_demo_pulls_serves_an_overlay_project_and_cleans_up(scratch):
    with _demo(["bash", str(ROOTFS_DEMO)], "cocalc-rootfs-demo-", scratch) as run:
        out = _completed(run)
        base = run.bases()[0]
        pid = re.search(rf"^\$ cocalc-ctl rootfs resolve ({UUID}) --image (127\.0\.0\.1:\d+/demo/busybox:1)$", out,
                        re.M)
        assert pid, out[:2000]
        pid, image = pid.groups()
        cache = f"{base}/data/rootfs/{image}"
        # pulled from the registry once, then served from the cache
        assert re.search(rf"^pulled {re.escape(image)} at {re.escape(cache)} \(\d", out, re.M), out
        assert re.search(rf"^cached {re.escape(image)} at {re.escape(cache)} \(\d", out, re.M), out
        assert re.search(rf"^{re.escape(image)}\s+[\d.]+ [KM]iB\s+\S+\s+1\s*$", out, re.M), out  # rootfs list
        started = re.search(rf"^project {pid} started \({re.escape(image)}\); http 127\.0\.0\.1:(\d+), ssh", out, re.M)
        assert started, out
        http = int(started.group(1))
        # the container answered over HTTP with its project id, from the project's home
        assert re.search(rf"^\$ curl http://127\.0\.0\.1:{http}/index\.html\nhello from {pid}$", out, re.M), out
        # the write in the merged root landed in the upper dir inside the project's subvolume
        upper = out.split("/upper/etc\n", 1)[1].split("\n\n", 1)[0].split()
        assert "motd" in upper, upper
        status = out.split(f"$ cocalc-ctl project status {pid}\n")
        assert len(status) == 3, out
        assert re.search(r"^state\s+running$", status[1], re.M) and "(mounted)" in status[1]
        assert re.search(r"^state\s+stopped$", status[2], re.M) and "(not mounted)" in status[2]
        assert f"project {pid} stopped" in out
        assert "removed 0 image(s)" in out  # gc keeps the image the project names
        _assert_clean(run, scratch)
        # the container and its published port are gone
        assert not processes_left(f"COCALC_PROJECT_ID={pid}")
        assert _port_closed(http)


def test_rootfs_demo_killed_while_the_project_runs_still_cleans_up(scratch):
    with _demo(["bash", str(ROOTFS_DEMO)], "cocalc-rootfs-demo-", scratch) as run:
        m = run.wait_for_line(rf"^project ({UUID}) started .*; http 127\.0\.0\.1:(\d+),", timeout=180)
        pid, http = m.group(1), int(m.group(2))
        os.kill(run.proc.pid, signal.SIGTERM)
        rc = run.wait(timeout=120)
        out = run.output
        assert rc != 0, out[-3000:]
        assert "demo: ok" not in out
        _assert_clean(run, scratch)
        assert not processes_left(f"COCALC_PROJECT_ID={pid}")
        assert _port_closed(http)
