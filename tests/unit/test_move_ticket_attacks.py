"""A host holding tickets tries to stretch them: other spellings of the same ticket, payloads the hub's
encoder never makes, signature tricks, a second signature slot, role and scope confusion."""

from __future__ import annotations

import base64
import json
import uuid

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from cocalc_ctl import tickets
from cocalc_ctl.tickets import TicketRefused

NOW = 1_800_000_000
MID, P, Q, A, B, C = (str(uuid.uuid4()) for _ in range(6))
L = 2 ** 252 + 27742317777372353535851937790883648493  # the Ed25519 group order


@pytest.fixture
def hub():
    return Ed25519PrivateKey.generate()


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def payload(**kw) -> dict:
    p = {"v": 1, "mid": MID, "att": 1, "p": P, "src": A, "dst": B, "mode": "pipe", "snap": "move-x",
         "verbs": ["send"], "iat": NOW, "exp": NOW + 3600}
    p.update(kw)
    return p


def signed_raw(key, raw: bytes) -> str:
    """What a hub would produce if its encoder let `raw` through: a valid signature over it."""
    body = b64(raw)
    return f"{body}.{b64(key.sign(body.encode()))}"


def good(key, **kw) -> str:
    return signed_raw(key, tickets.canonical(payload(**kw)))


def test_the_baseline_verifies(hub):
    assert tickets.verify(good(hub), [hub.public_key()], now=NOW).project_id == P


@pytest.mark.parametrize("raw", [
    # duplicate keys: a JSON parser takes the last one, a signer might have looked at the first
    ('{"att":1,"dst":"%s","exp":%d,"iat":%d,"mid":"%s","mode":"pipe","p":"%s","p":"%s","snap":"move-x",'
     '"src":"%s","v":1,"verbs":["send"]}' % (B, NOW + 3600, NOW, MID, P, Q, A)).encode(),
    # whitespace, key order, unicode escapes of ASCII letters: not the canonical spelling
    json.dumps(payload(), sort_keys=True).encode(),
    json.dumps(payload(), separators=(",", ":")).encode(),
    tickets.canonical(payload()).replace(b'"pipe"', b'"\\u0070ipe"'),
    tickets.canonical(payload()) + b" ",
    b"\xef\xbb\xbf" + tickets.canonical(payload()),
])
def test_only_the_canonical_payload_spelling_is_accepted(hub, raw):
    with pytest.raises(TicketRefused):
        tickets.verify(signed_raw(hub, raw), [hub.public_key()], now=NOW)


@pytest.mark.parametrize("change", [
    {"v": True}, {"v": 1.0}, {"att": True}, {"att": 1.0}, {"att": -1}, {"verbs": []}, {"verbs": ["send", "send"]},
    {"verbs": ["delete"]}, {"verbs": ["abort", "send"][::-1]}, {"verbs": "send"}, {"dst": A}, {"p": P.upper()},
    {"src": A.upper()}, {"snap": "../move-x"}, {"snap": "move-x/../../etc"}, {"snap": ".snapshots"},
    {"mode": "PIPE"}, {"exp": NOW}, {"exp": NOW + 25 * 3600}, {"extra": 1},
])
def test_payloads_the_encoder_never_makes_are_refused(hub, change):
    with pytest.raises(TicketRefused):
        tickets.verify(good(hub, **change), [hub.public_key()], now=NOW)


def test_other_spellings_of_body_and_signature_are_refused(hub):
    t = good(hub)
    body, sig = t.split(".")
    raw_sig = base64.urlsafe_b64decode(sig + "==")
    # the same signature bytes with other padding bits in the last character
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    alt = [sig[:-1] + ch for ch in alphabet if sig[:-1] + ch != sig
           and base64.urlsafe_b64decode(sig[:-1] + ch + "==") == raw_sig]
    assert alt
    for s in alt:
        with pytest.raises(TicketRefused):
            tickets.verify(f"{body}.{s}", [hub.public_key()], now=NOW)
    # a body spelled with other padding bits decodes to the same JSON but was not what the hub signed
    raw = base64.urlsafe_b64decode(body + "=" * (-len(body) % 4))
    for ch in "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_":
        other = body[:-1] + ch
        if other != body and base64.urlsafe_b64decode(other + "=" * (-len(other) % 4)) == raw:
            with pytest.raises(TicketRefused):
                tickets.verify(f"{other}.{sig}", [hub.public_key()], now=NOW)
    # S + L: the other classic Ed25519 malleability
    r, s_int = raw_sig[:32], int.from_bytes(raw_sig[32:], "little")
    bumped = r + (s_int + L).to_bytes(32, "little")
    with pytest.raises(TicketRefused):
        tickets.verify(f"{body}.{b64(bumped)}", [hub.public_key()], now=NOW)
    for bad in (f"{body}={'.'}{sig}", f"{body}.{sig}=", f"{body}.{sig}.{sig}.{sig}", f"{body}..{sig}",
                f"{body}.{base64.b64encode(raw_sig).decode()}", f".{sig}", f"{body}.", f"{body} .{sig}",
                f"{body}.{sig}\n", "\u0430" + f"{body[1:]}.{sig}"):
        with pytest.raises(TicketRefused):
            tickets.verify(bad, [hub.public_key()], now=NOW)


def test_second_signature_slot_adds_no_power(hub):
    """During a rotation a ticket carries two signatures; one by a pinned key is enough, and the other
    slot cannot carry anything: the body is the same for both."""
    other = Ed25519PrivateKey.generate()
    body, sig = good(hub).split(".")
    junk = b64(other.sign(body.encode()))
    for t in (f"{body}.{sig}.{junk}", f"{body}.{junk}.{sig}"):
        assert tickets.verify(t, [hub.public_key()], now=NOW).project_id == P
    with pytest.raises(TicketRefused):
        tickets.verify(f"{body}.{junk}.{junk}", [hub.public_key()], now=NOW)
    # the body of another ticket with this ticket's signature
    q_body = good(hub, p=Q).split(".")[0]
    with pytest.raises(TicketRefused):
        tickets.verify(f"{q_body}.{sig}.{sig}", [hub.public_key()], now=NOW)


def test_roles_and_scope_cannot_be_confused(hub):
    t = tickets.verify(good(hub, src=B, dst=A), [hub.public_key()], now=NOW)  # "B sends P to A"
    tickets.require(t, verb="send", me=B, project_id=P)                        # B may send
    with pytest.raises(TicketRefused):
        tickets.require(t, verb="send", me=A, project_id=P)                    # A may not send with it
    with pytest.raises(TicketRefused):
        tickets.require(t, verb="send", me=B, project_id=P, peer=A)            # nor push it to B
    with pytest.raises(TicketRefused):
        tickets.require(t, verb="send", me=B, project_id=Q)                    # nor send Q
    with pytest.raises(TicketRefused):
        tickets.require(t, verb="cleanup", me=B, project_id=P)                 # nor delete P on B
    with pytest.raises(TicketRefused):
        tickets.require(t, verb="send", me=B, project_id=P, snapshot="move-y")
    with pytest.raises(TicketRefused):
        tickets.require(t, verb="send", me=B, project_id=P, mode="staged")
    # as the receiver: the logged-in peer must be the source, this host the destination
    r = tickets.verify(good(hub), [hub.public_key()], now=NOW)                 # A -> B
    tickets.require(r, verb="send", me=B, project_id=P, peer=A)
    for me, peer in ((B, C), (C, A), (A, A), (A, B)):
        with pytest.raises(TicketRefused):
            tickets.require(r, verb="send", me=me, project_id=P, peer=peer)
    with pytest.raises(TicketRefused):
        tickets.make(move_id=MID, attempt=1, project_id=P, source=A, dest=A, mode="pipe", snapshot="s",
                     verbs=["send"], minutes=5)


def test_clock_skew_window(hub):
    keys = [hub.public_key()]
    t = good(hub)
    assert tickets.verify(t, keys, now=NOW - tickets.SKEW_SECONDS)
    with pytest.raises(TicketRefused):
        tickets.verify(t, keys, now=NOW - tickets.SKEW_SECONDS - 1)
    assert tickets.verify(t, keys, now=NOW + 3600 + tickets.SKEW_SECONDS)
    with pytest.raises(TicketRefused):
        tickets.verify(t, keys, now=NOW + 3600 + tickets.SKEW_SECONDS + 1)


def test_ledger_close_records_a_move_never_seen_and_refuses_its_other_tickets(tmp_path):
    from contextlib import closing

    from cocalc_ctl.state import host_db, hub_keys

    with closing(host_db.connect(tmp_path)) as db:
        assert hub_keys.close(db, MID, P, 1, "abort", "t0") is None
        assert hub_keys.close(db, MID, P, 1, "abort", "t1") is None        # a rerun
        assert "another project" in hub_keys.close(db, MID, Q, 1, "abort", "t1")
        assert "already finished" in hub_keys.admit(db, MID, P, 1, "send", "t2")
        assert "already finished" in hub_keys.admit(db, MID, P, 9, "send", "t2")  # a later attempt too
        assert hub_keys.admit(db, MID, P, 1, "abort", "t2") is None          # the abort itself may rerun
        assert "already finished" in hub_keys.admit(db, MID, P, 1, "finalize", "t2")
