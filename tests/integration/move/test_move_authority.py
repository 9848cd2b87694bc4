"""Authority flows from the hub: over real sshd, neither host A's private key nor a stolen, expired,
foreign or replayed ticket lets anyone delete, send, finalize, abort or receive anything on host B.

Host A's key logs in only as A's move receiver login on B (`move recv --from A`); the hub key logs in
only to `move host-step`. Every state-changing step needs a ticket signed by a hub key that B
pinned, naming B in the right role, for exactly that project, not expired and not replayed.
"""

from __future__ import annotations

import os
import time
import uuid

import pytest
from cryptography.hazmat.primitives import serialization

from tests.support.hosts import tree_digest
from tests.support.move import make_project, ssh_to

pytestmark = pytest.mark.integration

SNAP_UUID = "5d8e2c1a-1111-4a2b-8c3d-9e8f7a6b5c4d"


def host_key_of(h):
    """Host A's own private key (what an attacker holding A has)."""
    data = (h.data / "secrets" / "host-to-host" / "id_ed25519").read_bytes()
    return serialization.load_ssh_private_key(data, password=None)


def state_of(b, live: str) -> tuple:
    """What must not change on B: the live project's tree and snapshots, and every move directory."""
    def listing(d):
        return sorted(str(p.relative_to(b.pool)) for p in d.rglob("*")) if d.exists() else None

    snaps = sorted(p.name for p in (b.project_path(live) / ".snapshots").iterdir())
    return (tree_digest(b.project_path(live)), snaps, listing(b.pool / "_incoming"), listing(b.pool / "_streams"),
            sorted(p.name for p in b.pool.iterdir()))


def refused(res, *words: bytes) -> None:
    assert res.returncode != 0, (res.returncode, res.stdout, res.stderr)
    assert b"refused" in res.stderr, res.stderr
    for w in words:
        assert w in res.stderr, (w, res.stderr)


def write_hub_key(hub, data_dir):
    """The rig hub's key as a worker machine holds it (for the `move host-step` login)."""
    d = data_dir / "secrets" / "hub"
    d.mkdir(parents=True, exist_ok=True)
    os.chmod(data_dir / "secrets", 0o700)
    os.chmod(d, 0o700)
    key = d / "hub_key"
    key.write_bytes(hub.key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH,
                                          serialization.NoEncryption()))
    os.chmod(key, 0o600)
    (d / "hub_key.pub").write_text(hub.public + "\n")
    return key


def test_host_a_key_and_bad_tickets_cannot_touch_b(pair):
    a, b, rb, ra = pair
    hub = a.hub
    live = str(uuid.uuid4())           # a project that lives on B
    make_project(b, live, {"secret.txt": b"B's data\n"})
    b.cli("snapshot", "create", live, "s1")
    p = str(uuid.uuid4())              # a project the hub really moves A -> B
    make_project(a, p, {"f.txt": b"p\n"})
    a.cli("snapshot", "create", p, "s1")
    q = str(uuid.uuid4())              # a project of A nobody moves to B
    before = state_of(b, live)
    send_p = hub.ticket(p, a, b)
    forged = hub.ticket(q, a, b, key=host_key_of(a))                 # signed with A's own key
    expired = hub.ticket(q, a, b, minutes=10, now=time.time() - 7200)  # yesterday's, say
    foreign = hub.ticket(q, a, str(uuid.uuid4()))                   # A to some host C
    other_src = hub.ticket(q, b, a)                                  # B -> A: a different direction

    attempts = [
        # A's key reaches only the receiver grammar: no host step, with or without a ticket
        (f"move cleanup {live} --force", None), (f"move cleanup {live} --force", send_p),
        (f"move send {live} --to root@127.0.0.2:{ra.port} --mode pipe --compress none --snapshot m", send_p),
        (f"move finalize {live}", send_p), (f"move abort {live}", send_p), (f"project delete {live}", None),
        # the receiver grammar needs a hub ticket for exactly this project, from A, to B
        (f"abort {live}", None), (f"abort {live}", send_p), (f"abort {live}", forged),
        (f"list {q}", None), (f"receive {q} s1 snapshot none {SNAP_UUID}", send_p),   # P's ticket for Q
        (f"receive {q} s1 snapshot none {SNAP_UUID}", forged),                         # non-hub key
        (f"receive {q} s1 snapshot none {SNAP_UUID}", expired),
        (f"receive {q} s1 snapshot none {SNAP_UUID}", foreign),                        # names another dest
        (f"receive {q} s1 snapshot none {SNAP_UUID}", other_src),                      # A is not its source
        (f"persist {q}", forged), (f"rsync --server -tre.iLsfxCIvu --partial . _streams/{q}/move-rig/", expired),
        (f"receive {live} s9 snapshot none {SNAP_UUID}", hub.ticket(live, a, b)),      # into a live project
    ]
    for command, ticket in attempts:
        refused(ssh_to(a, rb, command, ticket=ticket, input=b"not a stream" * 10))
        assert state_of(b, live) == before, command
    for command, ticket, why in [(f"receive {q} s1 snapshot none {SNAP_UUID}", forged, b"not signed by a hub key"),
                                 (f"receive {q} s1 snapshot none {SNAP_UUID}", expired, b"expired"),
                                 (f"receive {q} s1 snapshot none {SNAP_UUID}", send_p, b"not " + q.encode()),
                                 (f"receive {q} s1 snapshot none {SNAP_UUID}", other_src, b"another host"),
                                 (f"list {q}", None, b"needs `ticket")]:
        refused(ssh_to(a, rb, command, ticket=ticket), why)

    # the legitimate move of P works with its ticket; afterwards its tickets are spent on B
    a.cli("move", "send", p, "--to", rb.spec(), "--ticket", send_p)
    b.cli("move", "finalize", p, "--ticket", hub.ticket(p, a, b, verbs=("finalize",)))
    assert (b.project_path(p) / "f.txt").read_bytes() == b"p\n"
    b.cli("project", "delete", p, "--force")  # as if it moved on; a replay must not bring anything back
    after = state_of(b, live)
    for command in (f"list {p}", f"receive {p} s1 snapshot none {SNAP_UUID}", f"abort {p}"):
        refused(ssh_to(a, rb, command, ticket=send_p), b"already finished")
        assert state_of(b, live) == after


def test_hub_login_steps_need_a_ticket_for_this_host_role_and_project(pair, workdir):
    a, b, rb, ra = pair
    hub = a.hub
    hub_data = workdir / "worker"
    key = write_hub_key(hub, hub_data)
    rb.allow_worker(hub_data)

    class Worker:  # ssh_to takes known_hosts from .data
        data = hub_data

    def step(command, ticket=None):
        return ssh_to(Worker, rb, command + (f" --ticket {ticket}" if ticket else ""), key=key)

    live = str(uuid.uuid4())
    make_project(b, live, {"secret.txt": b"B's data\n"})
    b.cli("snapshot", "create", live, "s1")
    incoming = str(uuid.uuid4())  # A is really sending this one to B (not yet finalized)
    make_project(a, incoming, {"g.txt": b"g\n"})
    a.cli("move", "send", incoming, "--to", rb.spec(), "--snapshot", "move-rig")
    assert (b.pool / "_incoming" / incoming).is_dir()
    before = state_of(b, live)

    cleanup_live_from_a = hub.ticket(live, a, b, verbs=("cleanup",))   # names A as the source
    cleanup_other = hub.ticket(incoming, b, a, verbs=("cleanup",))    # for another project
    forged = hub.ticket(live, b, a, verbs=("cleanup",), key=host_key_of(a))
    expired = hub.ticket(live, b, a, verbs=("cleanup",), minutes=5, now=time.time() - 3600)
    send_other = hub.ticket(incoming, b, a, verbs=("send",), snapshot="move-x")
    abort_other = hub.ticket(live, a, b, verbs=("abort",))             # abort ticket for the live project
    for command, ticket, why in [
            (f"move cleanup {live} --force", None, b"needs --ticket"),
            (f"move cleanup {live} --force", cleanup_live_from_a, b"another host"),
            (f"move cleanup {live} --force", cleanup_other, b"not " + live.encode()),
            (f"move cleanup {live} --force", forged, b"not signed by a hub key"),
            (f"move cleanup {live} --force", expired, b"expired"),
            (f"move send {live} --to root@127.0.0.2:{ra.port} --mode pipe --compress none --snapshot move-x",
             send_other, b"not " + live.encode()),
            (f"move send {live} --to root@127.0.0.2:{ra.port} --mode pipe --compress none --snapshot move-x",
             None, b"needs --ticket"),
            (f"move send {live} --mode backup --snapshot move-rig", hub.ticket(live, b, a), b"not backup"),
            (f"move send {live} --mode backup --snapshot move-rig", expired, b"expired"),
            (f"move send {live} --mode backup --snapshot move-rig", None, b"needs --ticket"),
            (f"move finalize {incoming}", hub.ticket(incoming, a, b, verbs=("send",)), b"does not authorise"),
            (f"move finalize {incoming} --from-backup {'ab' * 32}", hub.ticket(incoming, a, b, verbs=("finalize",)),
             b"do not agree"),
            (f"move finalize {incoming}", forged, b"not signed"),
            (f"move abort {incoming}", abort_other, b"not " + incoming.encode()),
            (f"move abort {incoming}", hub.ticket(incoming, a, b, verbs=("abort",), key=host_key_of(a)),
             b"not signed"),
            (f"move abort {incoming}", None, b"needs --ticket")]:
        res = step(command, ticket)
        assert res.returncode == 2, (command, res.stderr)
        assert why in res.stderr, (command, why, res.stderr)
        assert state_of(b, live) == before, command
    assert sorted(p.name for p in (b.project_path(live) / ".snapshots").iterdir()) == ["s1"]  # no move snapshot

    # the right ticket works exactly once: a replay after the step finished is refused
    res = step(f"move abort {incoming}", hub.ticket(incoming, a, b, verbs=("abort",)))
    assert res.returncode == 0, res.stderr
    assert not (b.pool / "_incoming" / incoming).exists()
    cleanup = hub.ticket(live, b, a, verbs=("cleanup",))
    res = step(f"move cleanup {live} --force", cleanup)
    assert res.returncode == 0, res.stderr
    assert not b.project_path(live).exists()
    make_project(b, live, {"secret.txt": b"back on B\n"})  # the project comes back to B later
    res = step(f"move cleanup {live} --force", cleanup)
    assert res.returncode == 2 and b"already finished" in res.stderr, res.stderr
    assert (b.project_path(live) / "secret.txt").read_bytes() == b"back on B\n"
    # and the root operator at B's own shell still has the manual verbs, without a ticket
    b.cli("move", "cleanup", live, "--force")
    assert not b.project_path(live).exists()
