"""The end-to-end demo (`make demo`): it completes, prints its summary, and leaves nothing behind —
also with `--keep` + `--teardown`, and when it is killed half-way."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.support.hosts import REPO
from tests.support.leftovers import leftovers

pytestmark = pytest.mark.integration

DEMO = [sys.executable, str(REPO / "scripts" / "demo.py")]
STEP_ROW = re.compile(r"^(?P<title>.+?)\s+(?P<secs>\d+\.\d)\s+(?P<result>ok|skipped|FAILED)$")


@pytest.fixture(autouse=True)
def _root():
    if os.geteuid() != 0:
        pytest.skip("the demo needs root")


def _has(*words: str) -> bool:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run([sys.executable, "-m", "cocalc_ctl", *words, "--help"], capture_output=True,
                          env=env, cwd=str(REPO)).returncode == 0


def _demo_dir(out: str) -> Path:
    m = re.search(r"^demo directory (/\S+); project ([0-9a-f-]{36})$", out, re.M)
    assert m, out[:2000]
    return Path(m.group(1))


def _summary(out: str) -> list[tuple[str, str]]:
    assert "\n== summary\n" in out, out[-3000:]
    rows = []
    for line in out.split("\n== summary\n", 1)[1].splitlines()[1:]:
        m = STEP_ROW.match(line.strip())
        if m:
            rows.append((m.group("title"), m.group("result")))
    return rows


UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


def _receiver_lines(out: str) -> set[str]:
    """The demo's receiver users in /etc/passwd: those naming a host id its output printed (other
    tests running on the same machine may add their own)."""
    ours = set(UUID.findall(out))
    return {ln for ln in Path("/etc/passwd").read_text().splitlines()
            if "cocalc-ctl move receiver" in ln and set(UUID.findall(ln.split(":", 1)[0])) & ours}


def _assert_gone(base: Path, out: str) -> None:
    left = leftovers(base)  # directory, mounts, loop devices, processes (command line or environment)
    assert not left, left
    assert not _receiver_lines(out), "receiver users were left in /etc/passwd"


def test_demo_completes_prints_summary_and_cleans_up():
    t0 = time.monotonic()
    r = subprocess.run(DEMO, capture_output=True, text=True, timeout=600)
    out = r.stdout + r.stderr
    assert r.returncode == 0, out[-4000:]
    rows = _summary(r.stdout)
    titles = " | ".join(t for t, _ in rows)
    for word in ("PostgreSQL", "loopback btrfs hosts", "keys", "receiver sshd", "busybox image", "project start",
                 "backup", "move A -> B", "proxy", "doctor"):
        assert word in titles, titles
    for title, result in rows:
        if result == "skipped":  # only for a capability this build does not have yet
            assert ("backup" in title and not _has("backup")) or ("proxy" in title and not _has("proxy")), title
        else:
            assert result == "ok", (title, result)
    assert r.stdout.rstrip().splitlines()[-1].startswith("cleaned up in")
    assert "demo: ok" in r.stdout
    # every cocalc-ctl command is shown with the host it ran on
    assert re.search(r"^\[A\] \$ cocalc-ctl project create [0-9a-f-]{36}", r.stdout, re.M)
    assert "ok: all 23 files arrived on B with their checksums" in r.stdout
    _assert_gone(_demo_dir(r.stdout), r.stdout)
    print(f"demo took {time.monotonic() - t0:.1f}s")


def test_demo_keep_leaves_it_running_then_teardown_removes_everything():
    r = subprocess.run([*DEMO, "--keep"], capture_output=True, text=True, timeout=600)
    base = _demo_dir(r.stdout)
    try:
        assert r.returncode == 0, (r.stdout + r.stderr)[-4000:]
        assert "== left running (--keep)" in r.stdout
        # the project still serves through the hub proxy, and the receiver users are there
        m = re.search(r"curl -L -c \S+ '(http://127\.0\.0\.1:\d+/[0-9a-f-]{36}/\?token=cct_[A-Za-z0-9_-]{43})'"
                      r"\s+# hub proxy \(login link\)", r.stdout)
        assert m or not _has("proxy", "serve"), r.stdout[-3000:]
        if m:
            import urllib.request

            # the login link: 303 to the URL without the token, with the session cookie the jar keeps
            opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor())
            with opener.open(m.group(1), timeout=10) as resp:
                assert resp.status == 200 and b"on host-b" in resp.read()
                assert "token=" not in resp.url
        assert len(_receiver_lines(r.stdout)) == 2  # btrfs-<peer> on each host
        assert "--teardown " + str(base) in r.stdout
    finally:
        t = subprocess.run([*DEMO, "--teardown", str(base)], capture_output=True, text=True, timeout=300)
    assert t.returncode == 0, t.stdout + t.stderr
    _assert_gone(base, r.stdout)


def test_demo_killed_half_way_still_cleans_up():
    p = subprocess.Popen(DEMO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines = []
    try:
        for line in p.stdout:
            lines.append(line)
            if line.startswith("== project start on A"):
                time.sleep(0.5)  # somewhere inside `project start` or the request
                p.send_signal(signal.SIGTERM)
                break
        rest, _ = p.communicate(timeout=300)
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
    out = "".join(lines) + rest
    assert p.returncode == 1, out[-3000:]
    assert "demo: interrupted" in out and "demo: FAILED" in out
    assert any(result == "FAILED" for _, result in _summary(out))
    _assert_gone(_demo_dir(out), out)
