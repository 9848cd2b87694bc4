"""Host A (its host-to-host key, its sqlite, every ticket it ever received) attacks host B over real
sshd: ticket tricks, replays, scope changes and command smuggling against B's receiver login
(`move recv --from A`). Each case must leave B exactly as it was."""

from __future__ import annotations

import base64
import subprocess
import time
import uuid

import pytest

from cocalc_ctl import locks
from tests.support.hosts import CLI, REPO
from tests.integration.move.test_move_authority import host_key_of, refused, state_of
from tests.support.move import make_project, ssh_to

pytestmark = pytest.mark.integration

SNAP_UUID = "5d8e2c1a-1111-4a2b-8c3d-9e8f7a6b5c4d"


def _malleate(sig: str) -> str:
    """The same 64 signature bytes spelled differently: flip the base64 padding bits of the last char."""
    raw = base64.urlsafe_b64decode(sig + "==")
    for ch in "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_":
        alt = sig[:-1] + ch
        if alt != sig and base64.urlsafe_b64decode(alt + "==") == raw:
            return alt
    raise AssertionError("no alternative spelling")


def test_an_abort_before_anything_arrived_still_spends_the_moves_tickets(pair):
    """The worker gave A the send ticket, A reported a failure before pushing anything and the hub
    aborted the move on B. A's send ticket must be dead on B from then on, not for its whole lifetime."""
    a, b, rb, ra = pair
    hub = a.hub
    p = str(uuid.uuid4())
    make_project(a, p, {"f.txt": b"p\n"})
    send_p = hub.ticket(p, a, b)
    abort_p = hub.ticket(p, a, b, verbs=("abort",))
    assert not (b.pool / "_incoming" / p).exists()
    b.cli("move", "abort", p, "--ticket", abort_p)
    b.cli("move", "abort", p, "--ticket", abort_p)  # the worker's rerun of its abort step stays fine
    refused(ssh_to(a, rb, f"list {p}", ticket=send_p), b"already finished")
    res = a.cli("move", "send", p, "--to", rb.spec(), "--ticket", send_p, check=False)
    assert res.returncode != 0, res.stdout
    assert not (b.pool / "_incoming" / p).exists()
    assert not (b.pool / "_streams" / p).exists()
    # a no-op abort still checks its ticket: nothing is recorded for a forged one
    q = str(uuid.uuid4())
    res = b.cli("move", "abort", q, "--ticket", hub.ticket(q, a, b, verbs=("abort",), key=host_key_of(a)),
                check=False)
    assert res.returncode == 2 and "not signed" in res.stderr, res.stderr


def test_ticket_tricks_scope_and_smuggling_leave_b_untouched(pair):
    a, b, rb, ra = pair
    hub = a.hub
    live = str(uuid.uuid4())           # lives on B
    make_project(b, live, {"secret.txt": b"B's data\n"})
    b.cli("snapshot", "create", live, "s1")
    p = str(uuid.uuid4())              # the hub moves P from A to B (staged, snapshot move-p)
    q = str(uuid.uuid4())              # nobody moves Q to B
    send_p = hub.ticket(p, a, b, mode="staged", snapshot="move-p")
    body, sig = send_p.split(".")
    before = state_of(b, live)
    b_to_a = hub.ticket(p, b, a, mode="staged", snapshot="move-p")   # "B sends P to A": A is destination
    attempts = [
        # role confusion: A as destination, verbs of other roles, a ticket naming B as both ends is unmakeable
        (f"list {p}", b_to_a), (f"receive {p} s1 snapshot none {SNAP_UUID}", b_to_a),
        (f"list {p}", hub.ticket(p, a, b, verbs=("finalize",), mode="staged", snapshot="move-p")),
        (f"abort {live}", hub.ticket(live, a, b, verbs=("abort",))),
        (f"list {p}", hub.ticket(p, a, b, verbs=("cleanup", "finalize"), mode="staged", snapshot="move-p")),
        (f"list {q}", hub.ticket(q, a, b, mode="backup")),   # a backup-mode move pushes no streams
        (f"receive {q} s1 snapshot none {SNAP_UUID}", hub.ticket(q, a, b, mode="backup")),
        # the ticket text: a second bogus signature, body from another ticket, a re-padded body
        (f"list {q}", f"{body}.{sig}.{sig}"[:-1] + "A"),
        (f"list {q}", hub.ticket(q, a, b).split(".")[0] + "." + sig),
        (f"list {p}", body + "=." + sig), (f"list {p}", body + "." + sig + "="),
        (f"list {p}", body + "." + base64.b64encode(base64.urlsafe_b64decode(sig + "==")).decode()),
        # scope: P's ticket for Q anywhere in the command, for another stream dir, for the live project
        (f"receive {q} s1 snapshot none {SNAP_UUID}", send_p),
        (f"rsync --server -tre.iLsfxCIvu --partial . _streams/{q}/move-p/", send_p),
        (f"rsync --server -tre.iLsfxCIvu --partial . _streams/{p}/move-other/", send_p),
        (f"receive-file {p} move-other 0001-s1.btrfs", send_p),
        (f"receive-file {q} move-p 0001-s1.btrfs", send_p),
        (f"receive {live} s9 snapshot none {SNAP_UUID}", hub.ticket(live, a, b)),
        (f"persist {live}", hub.ticket(live, a, b)),
        (f"rsync --server -tre.iLsfxCIvu --partial . _streams/{live}/move-rig/", hub.ticket(live, a, b)),
        # smuggling: the ticket somewhere else, twice, quoted, with metacharacters, rsync as a reader
        (f"list {p} ticket {send_p}", None), (f"ticket {send_p} list {q}", send_p),
        (f"'list' {p}", send_p), (f"list {p} && rm -rf {b.pool}", send_p), (f"list {p}|id", send_p),
        (f'list "{p}"', send_p), (f"list {p} {q}", send_p), (f"list\t{p}", send_p),
        (f"rsync --server --sender -tre.iLsfxCIvu --partial . _streams/{p}/move-p/", send_p),
        (f"rsync --server -tre.iLsfxCIvu --rsync-path=sh --partial . _streams/{p}/move-p/", send_p),
        (f"rsync --server -tre.iLsfxCIvu -e sh . _streams/{p}/move-p/", send_p),
        (f"rsync --server -ltrDe.iLsfxCIvu --partial . _streams/{p}/move-p/", send_p),
        (f"list {p} " + "x" * 3000, send_p),
        ("move cleanup " + live + " --force --ticket " + send_p, None),
        (f"move send {live} --to root@127.0.0.2:{ra.port} --snapshot move-p --ticket {b_to_a}", None),
    ]
    for command, ticket in attempts:
        refused(ssh_to(a, rb, command, ticket=ticket, input=b"not a stream" * 10))
        assert state_of(b, live) == before, command
    # without a ticket B tells nothing, not even which projects live there or whose incoming is whose
    for command in (f"receive {live} s9 snapshot none {SNAP_UUID}", f"persist {live}", f"list {live}"):
        res = ssh_to(a, rb, command)
        refused(res, b"needs `ticket")
        assert live.encode() not in res.stderr and b"exists" not in res.stderr, res.stderr
    # a different spelling of the same signature is no new ticket: spent like the original
    malleated = body + "." + _malleate(sig)
    b.cli("move", "abort", p, "--ticket", hub.ticket(p, a, b, verbs=("abort",), mode="staged", snapshot="move-p"))
    for t in (send_p, malleated):
        refused(ssh_to(a, rb, f"list {p}", ticket=t))
    assert state_of(b, live) == before


def test_a_superseded_attempts_ticket_is_refused_on_the_receiver(pair):
    a, b, rb, ra = pair
    hub = a.hub
    p = str(uuid.uuid4())
    mid = str(uuid.uuid4())
    old = hub.ticket(p, a, b, move_id=mid, attempt=1)
    new = hub.ticket(p, a, b, move_id=mid, attempt=2)
    res = ssh_to(a, rb, f"list {p}", ticket=new)
    assert res.returncode == 0, res.stderr
    refused(ssh_to(a, rb, f"list {p}", ticket=old), b"superseded")
    # and the current attempt's ticket still names only its own project
    refused(ssh_to(a, rb, f"list {uuid.uuid4()}", ticket=new), b"the ticket is for project")


def _ledger(host, move_id: str):
    from contextlib import closing

    from cocalc_ctl.state import host_db, hub_keys

    with closing(host_db.connect(host.data)) as db:
        return hub_keys.ledger(db, move_id)


def _wait(cond, what: str, timeout: float = 60.0) -> None:
    end = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < end, what
        time.sleep(0.2)


@pytest.mark.parametrize("command", ["receive {p} s1 snapshot none " + SNAP_UUID, "persist {p}",
                                     "rsync --server -tre.iLsfxCIvu --partial . _streams/{p}/move-rig/"])
def test_a_push_admitted_before_an_abort_does_not_start_after_it(pair, command):
    """A's command passed the ticket check and waits for B's receive lock; meanwhile the hub aborts the
    move on B. Once the lock is free, A's command must not create anything under B's pool."""
    a, b, rb, ra = pair
    hub = a.hub
    p = str(uuid.uuid4())
    send_p = hub.ticket(p, a, b)
    mid = str(uuid.uuid5(uuid.NAMESPACE_URL, f"{p}/{a.host_id}/{b.host_id}/move-rig"))  # RigHub's move id
    procs = []
    try:
        with locks.hold(b.data, f"move-recv-{p}"):  # as a receive of this project in progress would
            key = a.data / "secrets" / "host-to-host" / "id_ed25519"
            push = subprocess.Popen(["ssh", "-p", str(rb.port), "-i", str(key), "-o", "IdentitiesOnly=yes",
                                     "-o", "StrictHostKeyChecking=yes", "-o", "BatchMode=yes",
                                     "-o", f"UserKnownHostsFile={a.data / 'ssh' / 'known_hosts'}",
                                     "-o", "GlobalKnownHostsFile=/dev/null", "-T", f"root@{rb.addr}",
                                     f"ticket {send_p} " + command.format(p=p)],
                                    stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
            procs.append(push)
            _wait(lambda: _ledger(b, mid) is not None, "A's push was never admitted")
            abort = subprocess.Popen([*CLI, "move", "abort", p, "--ticket", hub.ticket(p, a, b, verbs=("abort",))],
                                     env=b.env, cwd=str(REPO), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
            procs.append(abort)
            _wait(lambda: (_ledger(b, mid) or None) and _ledger(b, mid).finished_by == "abort",
                  "the abort never recorded the move as finished")
        out, err = push.communicate(timeout=120)
        assert push.returncode != 0 and b"ended here" in err, (push.returncode, err)
        out, err = abort.communicate(timeout=120)
        assert abort.returncode == 0, err
    finally:
        for pr in procs:
            if pr.poll() is None:
                pr.kill()
                pr.wait()
    assert not (b.pool / "_incoming" / p).exists()
    assert not (b.pool / "_streams" / p).exists()
