"""Staged mode: compressed stream files + manifest, rsync --partial (resumable), receive from files."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
import uuid

import pytest

from tests.integration.move.test_move_pipe import assert_moved, build_project, events, tree_digest
from tests.support.hosts import CLI, REPO
from tests.support.leftovers import processes_left

pytestmark = pytest.mark.integration


@pytest.mark.parametrize("codec,suffix", [("zstd", ".zst"), ("lz4", ".lz4")])
def test_staged_move_with_compression(pair, codec, suffix):
    a, b, rb, _ = pair
    pid = str(uuid.uuid4())
    digests = build_project(a, pid)
    # compressible content, so compression visibly works
    (a.project_path(pid) / "text.txt").write_bytes(b"all work and no play\n" * 200_000)
    digests["live"] = tree_digest(a.project_path(pid))
    res = a.cli("--json", "move", "send", pid, "--to", rb.spec(), "--mode", "staged", "--compress", codec,
                "--snapshot", "move-st")
    evs = events(res.stdout)
    staged = {e["snapshot"]: e for e in evs if e["event"] == "staged"}
    assert [e["file"] for e in staged.values()] == [f"0001-s1.btrfs{suffix}", f"0002-s2.btrfs{suffix}",
                                                   f"0003-s3.btrfs{suffix}", f"0004-move-st.btrfs{suffix}"]
    # the move snapshot holds 4 MB of repetitive text on top of s3: compressed it is tiny
    assert staged["move-st"]["bytes"] < 1 << 20
    assert not (a.pool / "_streams" / pid).exists()  # the sender's staging is gone after success
    b.cli("move", "finalize", pid)
    assert_moved(b, pid, digests)
    assert not (b.pool / "_streams" / pid).exists()


def test_staged_copy_resumes_after_the_send_is_killed(pair):
    a, b, rb, _ = pair
    pid = str(uuid.uuid4())
    digests = build_project(a, pid)
    env = dict(a.env)
    p = subprocess.Popen([*CLI, "--json", "move", "send", pid, "--to", rb.spec(), "--mode", "staged",
                          "--compress", "lz4", "--bwlimit", "1M", "--snapshot", "move-kill",
                          "--ticket", a.hub.ticket(pid, a, b, mode="staged", snapshot="move-kill")],
                         env=env, cwd=str(REPO), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         start_new_session=True)
    dest = b.pool / "_streams" / pid / "move-kill"

    def receiving() -> bool:
        """rsync has written stream data on B (its temporary files are renamed as they complete)."""
        try:
            entries = list(os.scandir(dest))
        except OSError:
            return False
        for e in entries:
            try:
                if e.stat().st_size > 0:
                    return True
            except OSError:
                pass
        return False

    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if receiving():
                break
            assert p.poll() is None, p.stderr.read().decode()
            time.sleep(0.1)
        else:
            pytest.fail("rsync never started writing on B")
        os.killpg(p.pid, signal.SIGKILL)  # the sender and its rsync die mid-copy
    finally:
        if p.poll() is None:
            os.killpg(p.pid, signal.SIGKILL)
        p.wait()
    # B's side of the killed connection (its forced command and `rsync --server`) ends when it sees
    # the connection drop; a rerun racing it could have the old rsync put its partial file over the
    # new one's, so wait for it to be gone rather than a fixed time
    left = processes_left(pid, settle=60)
    assert not left, left
    manifest = json.loads((a.pool / "_streams" / pid / "move-kill" / "manifest.json").read_text())
    assert manifest["complete"] is True and all(f["complete"] for f in manifest["files"])
    # nothing has been received yet, and B does not have the project
    assert not b.project_path(pid).exists()
    res = events(a.cli("--json", "move", "send", pid, "--to", rb.spec(), "--mode", "staged", "--compress", "lz4",
                       "--snapshot", "move-kill").stdout)
    # the rerun reuses the stream files made before the kill instead of regenerating them
    assert [e for e in res if e["event"] == "staged"] == []
    assert [e["snapshot"] for e in res if e["event"] == "sent"] == ["s1", "s2", "s3", "move-kill"]
    b.cli("move", "finalize", pid)
    assert_moved(b, pid, digests)


def test_a_failed_moves_snapshot_is_dropped_by_the_next_move_and_never_sent(small_pair):
    """A staged move that fails after taking its move snapshot leaves it behind; a new move (another
    name) deletes it instead of shipping it as an ordinary snapshot. A retry under the same name
    reuses its snapshot (test_staged_copy_resumes_after_the_send_is_killed)."""
    from tests.support.move import make_project

    a, b, rb, _ = small_pair
    pid = str(uuid.uuid4())
    make_project(a, pid, {"notes.txt": b"v1\n"})
    a.cli("snapshot", "create", pid, "s1")
    (a.project_path(pid) / "big.bin").write_bytes(os.urandom(80 << 20))  # more than B has free
    subprocess.run(["btrfs", "filesystem", "sync", str(a.pool)], check=True)
    res = a.cli("move", "send", pid, "--to", rb.spec(), "--mode", "staged", "--snapshot", "move-one", check=False)
    assert res.returncode == 5 and "free" in res.stderr, res.stderr
    assert (a.project_path(pid) / ".snapshots" / "move-one").is_dir()  # what the failed move left
    (a.project_path(pid) / "big.bin").unlink()
    subprocess.run(["btrfs", "filesystem", "sync", str(a.pool)], check=True)
    evs = events(a.cli("--json", "move", "send", pid, "--to", rb.spec(), "--mode", "staged",
                       "--snapshot", "move-two").stdout)
    assert [e["snapshot"] for e in evs if e["event"] == "sent"] == ["s1", "move-two"]
    assert sorted(os.listdir(a.project_path(pid) / ".snapshots")) == ["move-two", "s1"]
    b.cli("move", "finalize", pid)
    assert sorted(json.loads(b.cli("--json", "project", "show", pid).stdout)["snapshots"]) == ["s1"]
