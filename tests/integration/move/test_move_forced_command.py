"""The receiver's forced command over real sshd refuses everything outside its grammar."""

from __future__ import annotations

import sqlite3
import subprocess
import time
import uuid

import pytest

from cocalc_ctl import locks
from tests.support.move import ensure_host_key, make_project, ssh_to

pytestmark = pytest.mark.integration

PID = "0b1c8a36-7f0e-4d2a-9a57-3c2b1e0f9d11"
SNAP_UUID = "5d8e2c1a-1111-4a2b-8c3d-9e8f7a6b5c4d"

# Over real sshd: one of each kind (the unit tests cover the grammar exhaustively).
REFUSED = [
    "rm -rf /",
    "",
    f"list {PID}; id",
    "list $(id)",
    f"list {PID}\nid",
    "list ../../etc",
    f"receive {PID} ../../etc/passwd snapshot none {SNAP_UUID}",
    f"receive-file {PID} move-1 ../../../etc/shadow",
    f"persist {PID} /etc",
    "rsync --server --sender -vlogDtpre.iLsfxCIvu . /etc/",
    f"rsync --server -tre.iLsfxCIvu --partial . _streams/{PID}/../../../etc/",
    f"rsync --server -tre.iLsfxCIvu --delete --partial . _streams/{PID}/m1/",
]


def test_forced_command_refuses_outside_the_grammar(pair):
    a, b, rb, _ = pair
    tk = a.hub.ticket(PID, a, b)  # a valid ticket does not widen the grammar
    for command in REFUSED:
        for ticket in (None, tk):
            res = ssh_to(a, rb, command, ticket=ticket)
            assert res.returncode != 0, command
            assert b"refused" in res.stderr or b"error" in res.stderr, (command, res.stderr)
    # nothing was created on B
    assert not (b.pool / "_incoming").exists() or not any((b.pool / "_incoming").iterdir())
    assert not (b.pool / "_streams").exists()
    # every refusal is logged
    with sqlite3.connect(b.data / "host.sqlite") as conn:
        n = conn.execute("SELECT count(*) FROM move_log WHERE role='recv' AND status='refused'").fetchone()[0]
    assert n >= 2 * len(REFUSED)
    # and the grammar itself still works, with the hub's ticket only
    res = ssh_to(a, rb, f"list {PID}")
    assert res.returncode != 0 and b"needs `ticket" in res.stderr, res.stderr
    ok = ssh_to(a, rb, f"list {PID}", ticket=tk)
    assert ok.returncode == 0 and b'"received": []' in ok.stdout


def test_forced_command_refuses_another_hosts_incoming_and_existing_projects(pair, make_host):
    a, b, rb, _ = pair
    c = make_host("c", init=False)  # a third host with its own key, also allowed on B
    ensure_host_key(c)
    rb.allow(c)
    pid = str(uuid.uuid4())
    make_project(a, pid, {"f.txt": b"x\n"})
    a.cli("snapshot", "create", pid, "s1")
    # A starts a move of pid to B ...
    a.cli("move", "send", pid, "--to", rb.spec(), "--snapshot", "move-x")
    assert (b.pool / "_incoming" / pid / "s1").is_dir()
    # ... C may neither abort it, nor add to it, nor copy files into it
    for command in (f"abort {pid}", f"receive {pid} s9 snapshot none {SNAP_UUID}",
                    f"rsync --server -tre.iLsfxCIvu --partial . _streams/{pid}/m1/"):
        res = ssh_to(c, rb, command, ticket=a.hub.ticket(pid, c, b, snapshot="m1"))
        assert res.returncode != 0 and b"another source host" in res.stderr, (command, res.stderr)
    assert (b.pool / "_incoming" / pid / "s1").is_dir()
    # once finalized, nobody receives into the existing project
    b.cli("move", "finalize", pid)
    for command in (f"receive {pid} s9 snapshot none {SNAP_UUID}", f"persist {pid}"):
        res = ssh_to(a, rb, command, input=b"garbage", ticket=a.hub.ticket(pid, a, b, snapshot="move-x"))
        assert res.returncode != 0 and b"already exists" in res.stderr, res.stderr
    assert not (b.pool / "_incoming" / pid).exists()
    # a garbled stream is refused by btrfs and leaves nothing behind, not even A's claim on the project
    other = str(uuid.uuid4())
    res = ssh_to(a, rb, f"receive {other} s1 snapshot none {SNAP_UUID}", input=b"not a btrfs stream" * 100,
                 ticket=a.hub.ticket(other, a, b))
    assert res.returncode != 0
    assert not (b.pool / "_incoming" / other).exists()


def test_a_failed_receive_releases_its_claim(pair, make_host):
    """A receive that fails must not leave the sending host's claim on `_incoming/<uuid>` behind: another
    host's move of that project would be refused ("belongs to another source host") until an abort."""
    a, b, rb, _ = pair
    c = make_host("c", init=False)
    ensure_host_key(c)
    rb.allow(c)
    pid = str(uuid.uuid4())
    for command in (f"receive {pid} s1 snapshot none {SNAP_UUID}",  # garbled stream
                    f"receive {pid} s2 snapshot none {SNAP_UUID} {str(uuid.uuid4())}",  # unknown parent
                    f"persist {pid}"):  # not a tar
        res = ssh_to(a, rb, command, input=b"not a btrfs stream" * 100, ticket=a.hub.ticket(pid, a, b))
        assert res.returncode != 0 and b"ticket" not in res.stderr, (command, res.stderr)  # the receive failed
        assert not (b.pool / "_incoming" / pid).exists(), (command, res.stderr)
        res = ssh_to(c, rb, f"receive {pid} s1 snapshot none {SNAP_UUID}", input=b"garbage" * 100,
                     ticket=a.hub.ticket(pid, c, b))
        assert res.returncode != 0 and b"another source host" not in res.stderr, res.stderr
        assert b"ticket" not in res.stderr, res.stderr
    # a claim that holds received data is kept: A's real move of a project is not disturbed by its failures
    make_project(a, pid, {"f.txt": b"x\n"})
    a.cli("snapshot", "create", pid, "s1")
    a.cli("move", "send", pid, "--to", rb.spec(), "--snapshot", "move-x")
    res = ssh_to(a, rb, f"receive {pid} s9 snapshot none {SNAP_UUID}", input=b"garbage" * 100,
                 ticket=a.hub.ticket(pid, a, b, snapshot="move-x"))
    assert res.returncode != 0
    assert (b.pool / "_incoming" / pid / "s1").is_dir() and (b.pool / "_incoming" / pid / ".source").exists()
    res = ssh_to(c, rb, f"abort {pid}", ticket=a.hub.ticket(pid, c, b))
    assert res.returncode != 0 and b"another source host" in res.stderr


def test_abort_of_a_live_project_is_an_error_not_a_success(pair):
    """`move abort` (host verb and the receiver's grammar) of a project that lives on this host is refused
    with exit 3 and a one-line hint, and the project is untouched."""
    a, b, rb, _ = pair
    pid = str(uuid.uuid4())
    make_project(b, pid, {"keep.txt": b"precious\n"})
    res = b.cli("move", "abort", pid, check=False)
    assert res.returncode == 3, (res.stdout, res.stderr)
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("cocalc-ctl: error: ") and "live project" in lines[0]
    assert "Traceback" not in res.stderr
    res = ssh_to(a, rb, f"abort {pid}", ticket=a.hub.ticket(pid, a, b))
    assert res.returncode == 3 and b"live project" in res.stderr
    assert (b.pool / f"project-{pid}" / "keep.txt").read_bytes() == b"precious\n"
    # an id with nothing here at all is still a quiet no-op (the worker's roll-back may run twice)
    assert b.cli("move", "abort", str(uuid.uuid4())).returncode == 0


def test_rsync_waits_for_a_receive_in_progress(pair):
    """A copy server left over from a killed send must not write the files a rerun's copy writes:
    `rsync` takes the same per-project receive lock as every other receiving step."""
    a, b, rb, _ = pair
    pid = str(uuid.uuid4())
    streams = b.pool / "_streams" / pid
    with locks.hold(b.data, f"move-recv-{pid}"):  # as a receive of this project would
        key = a.data / "secrets" / "host-to-host" / "id_ed25519"
        p = subprocess.Popen(["ssh", "-p", str(rb.port), "-i", str(key), "-o", "IdentitiesOnly=yes",
                              "-o", "StrictHostKeyChecking=yes", "-o", "BatchMode=yes",
                              "-o", f"UserKnownHostsFile={a.data / 'ssh' / 'known_hosts'}",
                              "-o", "GlobalKnownHostsFile=/dev/null", "-T", f"root@{rb.addr}",
                              f"ticket {a.hub.ticket(pid, a, b, snapshot='m1')} "
                              f"rsync --server -tre.iLsfxCIvu --partial . _streams/{pid}/m1/"],
                             stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        try:
            time.sleep(3)  # time enough to log in and reach the lock
            assert p.poll() is None, p.communicate()
            assert not streams.exists()
        except BaseException:
            p.kill()
            p.wait()
            raise
    p.communicate(timeout=60)  # it goes on once the lock is free (and ends: no rsync client talks to it)
    assert (streams / "m1").is_dir()
