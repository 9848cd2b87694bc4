"""A project with files, an overlay upper dir, a persist store and 3 snapshots moves A -> B over sshd."""

from __future__ import annotations

import json
import os
import subprocess
import uuid

import pytest

from tests.support.hosts import tree_digest as _tree_digest
from tests.support.move import make_project, write_files

pytestmark = pytest.mark.integration


def set_quota(h, pid, limit: int) -> None:
    """A per-project qgroup limit other than the host's default (as `project create --quota` sets)."""
    subprocess.run(["btrfs", "qgroup", "limit", str(limit), str(h.project_path(pid))], check=True)


def quota_of(h, pid):
    return h.json("project", "show", pid)["quota_bytes"]


def build_project(a, pid):
    big = os.urandom(6 << 20)
    make_project(a, pid, {"data/big.bin": big, "notes.txt": b"v1\n",
                          ".local/share/overlay/docker.io-ubuntu-25.10/upper/etc/motd": b"hello\n"})
    a.cli("snapshot", "create", pid, "s1")
    write_files(a, pid, {"notes.txt": b"v2\n"})
    a.cli("snapshot", "create", pid, "s2")
    write_files(a, pid, {"notes.txt": b"v3\n", "data/new.txt": b"new\n"})
    a.cli("snapshot", "create", pid, "s3")
    write_files(a, pid, {"after.txt": b"after the last snapshot\n"})
    persist = a.data / "sync" / "projects" / pid
    persist.mkdir(parents=True)
    (persist / "state.db").write_bytes(b"persisted\n")
    digests = {name: tree_digest(a.project_path(pid) / ".snapshots" / name) for name in ("s1", "s2", "s3")}
    digests["live"] = tree_digest(a.project_path(pid))
    return digests


def tree_digest(path) -> dict:
    """Content digest without `.snapshots` (a nested subvolume: an empty placeholder inside snapshots)."""
    return {k: v for k, v in _tree_digest(path).items() if k.split("/", 1)[0] != ".snapshots"}


def events(stdout: str) -> list[dict]:
    return [json.loads(line) for line in stdout.splitlines() if line.strip()]


def assert_moved(b, pid, digests):
    proj = b.project_path(pid)
    assert tree_digest(proj) == digests["live"]
    for name in ("s1", "s2", "s3"):
        snap = proj / ".snapshots" / name
        assert tree_digest(snap) == digests[name], name
    shown = json.loads(b.cli("--json", "project", "show", pid).stdout)
    assert shown["state"] == "stopped"
    names = shown["snapshots"]
    assert {"s1", "s2", "s3"} <= set(names)
    assert (b.data / "sync" / "projects" / pid / "state.db").read_bytes() == b"persisted\n"
    assert not (b.pool / "_incoming" / pid).exists()


def is_readonly(path) -> bool:
    import subprocess

    out = subprocess.run(["btrfs", "property", "get", "-ts", str(path), "ro"], capture_output=True, text=True).stdout
    return out.strip() == "ro=true"


def test_pipe_move_sends_incrementals_and_finalizes_identical_project(pair):
    a, b, rb, ra = pair
    pid = str(uuid.uuid4())
    digests = build_project(a, pid)
    res = a.cli("--json", "move", "send", pid, "--to", rb.spec(), "--mode", "pipe", "--snapshot", "move-test")
    evs = events(res.stdout)
    sent = {e["snapshot"]: e for e in evs if e["event"] == "sent"}
    assert list(sent) == ["s1", "s2", "s3", "move-test"]
    assert sent["s1"]["parent"] is None
    assert sent["s2"]["parent"] == "s1" and sent["s3"]["parent"] == "s2" and sent["move-test"]["parent"] == "s3"
    # incrementals are real: a few KiB against a multi-MiB full stream
    assert sent["s1"]["bytes"] > 6 << 20
    for name in ("s2", "s3", "move-test"):
        assert sent[name]["bytes"] < sent["s1"]["bytes"] / 50, (name, sent[name]["bytes"])
    assert evs[-1]["event"] == "result" and evs[-1]["bytes_total"] == sum(e["bytes"] for e in sent.values())

    # a rerun resumes: everything is already there, nothing is sent again
    again = events(a.cli("--json", "move", "send", pid, "--to", rb.spec(), "--snapshot", "move-test").stdout)
    assert [e for e in again if e["event"] == "sent"] == []
    # the project changed after that attempt (it ran meanwhile): the stale move snapshot is replaced
    write_files(a, pid, {"late.txt": b"written after the first attempt\n"})
    digests["live"] = tree_digest(a.project_path(pid))
    third = events(a.cli("--json", "move", "send", pid, "--to", rb.spec(), "--snapshot", "move-test").stdout)
    assert [(e["snapshot"], e["parent"]) for e in third if e["event"] == "sent"] == [("move-test", "s3")]

    fin = json.loads(b.cli("--json", "move", "finalize", pid).stdout)
    assert fin["already_finalized"] is False and sorted(fin["snapshots"]) == ["s1", "s2", "s3"]
    assert_moved(b, pid, digests)
    for name in ("s1", "s2", "s3"):
        assert is_readonly(b.project_path(pid) / ".snapshots" / name)
    assert not is_readonly(b.project_path(pid))
    (b.project_path(pid) / "writable.txt").write_text("yes")  # the project is writable on B
    # finalize again: idempotent
    assert json.loads(b.cli("--json", "move", "finalize", pid).stdout)["already_finalized"] is True

    # A is untouched until cleanup, which needs the hub's word or --force
    assert tree_digest(a.project_path(pid) / ".snapshots" / "s3") == digests["s3"]
    refused = a.cli("move", "cleanup", pid, check=False)
    assert refused.returncode != 0 and a.project_path(pid).exists()
    a.cli("move", "cleanup", pid, "--force")
    assert not a.project_path(pid).exists()
    assert not (a.data / "sync" / "projects" / pid).exists()

    # and back again: B's snapshots arrived by a move (they carry received_uuids), the chain still works
    back = events(b.cli("--json", "move", "send", pid, "--to", ra.spec(), "--snapshot", "move-back").stdout)
    sent = {e["snapshot"]: e for e in back if e["event"] == "sent"}
    assert [sent[n]["parent"] for n in ("s1", "s2", "s3", "move-back")] == [None, "s1", "s2", "s3"]
    a.cli("move", "finalize", pid)
    assert tree_digest(a.project_path(pid) / ".snapshots" / "s2") == digests["s2"]
    assert (a.project_path(pid) / "writable.txt").read_text() == "yes"


def test_send_dry_run_prints_the_pipelines_and_a_running_project_is_not_sent(pair):
    import sqlite3

    a, b, rb, _ = pair
    pid = str(uuid.uuid4())
    make_project(a, pid, {"f.txt": b"x\n"})
    a.cli("snapshot", "create", pid, "s1")
    res = a.cli("--dry-run", "move", "send", pid, "--to", rb.spec(), "--compress", "zstd", "--snapshot", "move-dry")
    lines = res.stdout.splitlines()
    assert any(line.startswith("btrfs subvolume snapshot -r ") and line.endswith("/.snapshots/move-dry") for line in lines)
    sends = [line for line in lines if line.startswith("btrfs send")]
    assert len(sends) == 2 and "| zstd -q -c -T0 -3 | ssh " in sends[0] and "-p " in sends[1]
    assert not (a.project_path(pid) / ".snapshots" / "move-dry").exists()
    assert not (b.pool / "_incoming" / pid).exists()
    # a running project is stopped first; without a runtime to stop it, the move is refused
    import importlib.util

    if importlib.util.find_spec("cocalc_ctl.actions.project.containers") is not None:
        return  # the runtime is installed: stopping is its business (covered by its own tests)
    with sqlite3.connect(a.data / "host.sqlite") as conn:
        conn.execute("UPDATE projects SET state='running' WHERE project_id=?", (pid,))
    busy = a.cli("move", "send", pid, "--to", rb.spec(), check=False)
    assert busy.returncode == 4 and "running" in busy.stderr
    assert not (b.pool / "_incoming" / pid).exists()
