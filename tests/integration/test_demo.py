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


@pytest.fixture(scope="module")
def kept_demo():
    """One full run of the demo serves both the completion and the --keep/--teardown tests: it runs with
    --keep, the fleet it leaves is probed while it runs (the login link, the receiver users, then what the
    run without --keep checks last: the project stopped on B answers 502 through the hub proxy), and
    `--teardown` removes it. Returns what each step showed; the tests assert on it."""
    t0 = time.monotonic()
    r = subprocess.run([*DEMO, "--keep"], capture_output=True, text=True, timeout=600)
    seen: dict = {"run": r, "out": r.stdout + r.stderr, "link": None}
    m = re.search(r"^demo directory (/\S+); project ([0-9a-f-]{36})$", r.stdout, re.M)
    base = Path(m.group(1)) if m else None
    try:
        if base is not None and r.returncode == 0:
            _probe_kept_fleet(r.stdout, seen)
    finally:
        if base is not None:
            seen["teardown"] = subprocess.run([*DEMO, "--teardown", str(base)], capture_output=True, text=True,
                                              timeout=300)
            seen["left"] = leftovers(base)  # directory, mounts, loop devices, processes
            seen["receivers_left"] = _receiver_lines(r.stdout)
        print(f"demo (--keep, probes, --teardown) took {time.monotonic() - t0:.1f}s")
    yield seen


def _probe_kept_fleet(stdout: str, seen: dict) -> None:
    import urllib.error
    import urllib.request

    link = re.search(r"curl -L -c \S+ '(http://127\.0\.0\.1:(\d+)/([0-9a-f-]{36})/\?token=(cct_[A-Za-z0-9_-]{43}))'"
                     r"\s+# hub proxy \(login link\)", stdout)
    seen["link"] = link
    if link:
        # the login link: 303 to the URL without the token, with the session cookie the jar keeps
        opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor())
        with opener.open(link.group(1), timeout=10) as resp:
            seen["login"] = (resp.status, resp.read(), resp.url)
    seen["receiver_lines"] = _receiver_lines(stdout)
    ctl_b = re.search(r"^  alias ctl-b='(\S+) --config (\S+)'$", stdout, re.M)
    seen["ctl_b"] = ctl_b
    if link and ctl_b:
        # what the demo without --keep does last in its proxy step: stop the project on B; the next request
        # through the hub proxy is 502 at once
        port, pid, token = link.group(2), link.group(3), link.group(4)
        seen["stop"] = subprocess.run([ctl_b.group(1), "--config", ctl_b.group(2), "project", "stop", pid],
                                      capture_output=True, text=True, timeout=120)
        req = urllib.request.Request(f"http://127.0.0.1:{port}/{pid}/", headers={"Authorization": f"Bearer {token}"})
        try:
            with urllib.request.urlopen(req, timeout=10) as resp:
                seen["stopped"] = resp.status
        except urllib.error.HTTPError as e:
            seen["stopped"] = e.code


def _assert_torn_down(seen: dict) -> None:
    t = seen["teardown"]
    assert t.returncode == 0, t.stdout + t.stderr
    assert not seen["left"], seen["left"]
    assert not seen["receivers_left"], "receiver users were left in /etc/passwd"


def test_demo_completes_prints_summary_and_cleans_up(kept_demo):
    r, out = kept_demo["run"], kept_demo["out"]
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
    assert "demo: ok" in r.stdout
    # every cocalc-ctl command is shown with the host it ran on
    assert re.search(r"^\[A\] \$ cocalc-ctl project create [0-9a-f-]{36}", r.stdout, re.M)
    assert "ok: all 23 files arrived on B with their checksums" in r.stdout
    if kept_demo["link"] or _has("proxy", "serve"):  # what a run without --keep checks itself, last:
        assert kept_demo["ctl_b"], r.stdout[-3000:]       # a project stopped on B is 502 at once
        assert kept_demo["stop"].returncode == 0, kept_demo["stop"].stderr
        assert kept_demo["stopped"] == 502
    # the clean-up a run without --keep does at its end is the same `teardown()` as `--teardown`; that the
    # run itself calls it (and says so last) is checked on the interrupted run below
    _assert_torn_down(kept_demo)


def test_demo_keep_leaves_it_running_then_teardown_removes_everything(kept_demo):
    r = kept_demo["run"]
    assert r.returncode == 0, kept_demo["out"][-4000:]
    assert "== left running (--keep)" in r.stdout
    # the project still serves through the hub proxy, and the receiver users are there
    assert kept_demo["link"] or not _has("proxy", "serve"), r.stdout[-3000:]
    if kept_demo["link"]:
        status, body, url = kept_demo["login"]
        assert status == 200 and b"on host-b" in body
        assert "token=" not in url
    assert len(kept_demo["receiver_lines"]) == 2  # btrfs-<peer> on each host
    assert "--teardown " + str(_demo_dir(r.stdout)) in r.stdout
    _assert_torn_down(kept_demo)


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
    # the run's own clean-up (the same for a run that completes) reports itself after the summary
    assert re.search(r"^cleaned up in \d", out.split("\n== summary\n", 1)[1], re.M), out[-2000:]
    _assert_gone(_demo_dir(out), out)
