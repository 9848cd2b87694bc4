"""The generated units' commands, run by hand on a real host, and the flock guard against overlaps."""

from __future__ import annotations

import os
import subprocess
import time

import pytest

from tests.support.ops import cli_wrapper, exec_argv, parse_unit

pytestmark = pytest.mark.integration

PID = "33333333-3333-4333-8333-333333333333"


def _run(argv, host):
    return subprocess.run(argv, capture_output=True, text=True, env=host.env, timeout=120)


def test_snapshot_auto_unit_runs_by_hand_and_refuses_an_overlap(host, workdir):
    BIN = cli_wrapper(workdir)
    tf = workdir / "textfile"
    tf.mkdir()
    host.write_config(metrics={"textfile_dir": str(tf)})
    host.cli("project", "create", PID)
    (host.project_path(PID) / "file").write_text("data")
    units = workdir / "units"
    host.cli("timers", "install", "--user-unit-dir", str(units), "--bin", BIN)
    svc = parse_unit((units / "cocalc-ctl-snapshot-auto.service").read_text())["Service"]
    start, post = exec_argv(svc["ExecStart"][0]), exec_argv(svc["ExecStopPost"][0])

    res = _run(start, host)
    assert res.returncode == 0, res.stderr
    snaps = [s["name"] for s in host.json("snapshot", "list", PID)]
    assert len(snaps) == 1
    res = _run(post, host)
    assert res.returncode == 0, res.stderr
    assert f'cocalc_ctl_snapshots{{project_id="{PID}"}} 1' in (tf / "cocalc_ctl.prom").read_text()

    # an earlier run still holds the timer lock: the next one is refused at once with exit 4
    lock = start[start.index("--conflict-exit-code") + 2]
    import fcntl

    fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        (host.project_path(PID) / "file").write_text("changed")
        t0 = time.monotonic()
        res = _run(start, host)
        assert res.returncode == 4, (res.returncode, res.stderr)
        assert time.monotonic() - t0 < 30
        assert len(host.json("snapshot", "list", PID)) == 1  # nothing ran
    finally:
        os.close(fd)
    time.sleep(1.1)  # snapshot names have one-second resolution
    subprocess.run(["btrfs", "filesystem", "sync", str(host.pool)], check=True)  # commit: generation advances
    res = _run(start, host)
    assert res.returncode == 0, res.stderr
    # the change is picked up by the next run (retention keeps one snapshot per 15-minute bucket)
    assert [s["name"] for s in host.json("snapshot", "list", PID)] != snaps


def test_cron_line_runs_by_hand(host, workdir):
    BIN = cli_wrapper(workdir)
    host.cli("project", "create", PID)
    cron = host.cli("timers", "cron", "--bin", BIN, "--only", "snapshot-auto").stdout
    line = next(l for l in cron.splitlines() if l.startswith("*/15"))
    command = line.split(" root ", 1)[1].split(";", 1)[0]
    res = subprocess.run(["sh", "-c", command], capture_output=True, text=True, env=host.env, timeout=120)
    assert res.returncode == 0, res.stderr
    assert len(host.json("snapshot", "list", PID)) == 1
