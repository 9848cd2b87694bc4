"""Move tickets: encode, sign, verify (tampering, wrong key, expiry, clock skew, roles)."""

from __future__ import annotations

import base64
import json
import uuid

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from cocalc_ctl import tickets
from cocalc_ctl.tickets import TicketRefused

NOW = 1_800_000_000
MID, P, Q, SRC, DST, OTHER = (str(uuid.UUID(int=i)) for i in (1, 2, 3, 4, 5, 6))


def pub_line(key) -> str:
    return key.public_key().public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH).decode()


@pytest.fixture
def hub():
    return Ed25519PrivateKey.generate()


def make(verbs=("send",), minutes=60, now=NOW, **kw):
    args = dict(move_id=MID, attempt=2, project_id=P, source=SRC, dest=DST, mode="pipe", snapshot="move-x")
    args.update(kw)
    return tickets.make(verbs=verbs, minutes=minutes, now=now, **args)


def test_round_trip_is_compact_and_command_line_safe(hub):
    text = tickets.sign(make(), [hub])
    assert len(text) < 600
    assert all(c.isalnum() or c in "-_." for c in text)
    t = tickets.verify(text, [pub_line(hub)], now=NOW + 10)
    assert (t.move_id, t.attempt, t.project_id, t.source, t.dest, t.verbs) == (MID, 2, P, SRC, DST, ("send",))
    assert t.expires_at == NOW + 3600


def test_payload_is_canonical_json_without_secrets(hub):
    body = tickets.sign(make(), [hub]).split(".")[0]
    raw = base64.urlsafe_b64decode(body + "=" * (-len(body) % 4))
    assert raw == json.dumps(json.loads(raw), sort_keys=True, separators=(",", ":")).encode()
    assert set(json.loads(raw)) == {"v", "mid", "att", "p", "src", "dst", "mode", "snap", "verbs", "iat", "exp"}


def _retamper(text: str, **changes) -> str:
    body, *sigs = text.split(".")
    doc = json.loads(base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)))
    doc.update(changes)
    new = base64.urlsafe_b64encode(json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()).rstrip(b"=")
    return ".".join([new.decode(), *sigs])


@pytest.mark.parametrize("change", [{"p": Q}, {"dst": OTHER}, {"verbs": ["cleanup"]}, {"exp": NOW + 10 ** 6},
                                    {"att": 9}])
def test_tampered_payload_is_refused(hub, change):
    text = _retamper(tickets.sign(make(), [hub]), **change)
    with pytest.raises(TicketRefused, match="not signed"):
        tickets.verify(text, [pub_line(hub)], now=NOW)


def test_flipped_signature_and_garbage_are_refused(hub):
    text = tickets.sign(make(), [hub])
    body, sig = text.split(".")
    bad = body + "." + ("A" if sig[0] != "A" else "B") + sig[1:]
    for t in (bad, "", "x" * 2000, body, text + ".", text.replace(".", ". "), None, 42):
        with pytest.raises(TicketRefused):
            tickets.verify(t, [pub_line(hub)], now=NOW)


def test_a_non_hub_key_is_refused(hub):
    other = Ed25519PrivateKey.generate()
    text = tickets.sign(make(), [other])
    with pytest.raises(TicketRefused, match="not signed by a hub key"):
        tickets.verify(text, [pub_line(hub)], now=NOW)
    with pytest.raises(TicketRefused, match="pinned no hub key"):
        tickets.verify(tickets.sign(make(), [hub]), [], now=NOW)


def test_expiry_with_clock_skew_allowance(hub):
    text = tickets.sign(make(minutes=10), [hub])
    keys = [pub_line(hub)]
    tickets.verify(text, keys, now=NOW + 600 + tickets.SKEW_SECONDS - 1)  # inside the allowance
    with pytest.raises(TicketRefused, match="expired"):
        tickets.verify(text, keys, now=NOW + 600 + tickets.SKEW_SECONDS + 1)
    # a hub clock ahead of the host's: accepted within the allowance, refused beyond it
    tickets.verify(text, keys, now=NOW - tickets.SKEW_SECONDS + 1)
    with pytest.raises(TicketRefused, match="future"):
        tickets.verify(text, keys, now=NOW - tickets.SKEW_SECONDS - 1)


def test_rotation_two_signatures_either_key_verifies(hub):
    new = Ed25519PrivateKey.generate()
    text = tickets.sign(make(), [new, hub])
    assert text.count(".") == 2
    tickets.verify(text, [pub_line(hub)], now=NOW)
    tickets.verify(text, [pub_line(new)], now=NOW)
    with pytest.raises(TicketRefused):
        tickets.verify(text, [pub_line(Ed25519PrivateKey.generate())], now=NOW)


def test_roles_project_and_peer():
    t = make(verbs=("send",))
    tickets.require(t, verb="send", me=SRC, project_id=P, mode="pipe", snapshot="move-x")
    tickets.require(t, verb="send", me=DST, project_id=P, peer=SRC)  # the receiver's view
    refusals = [dict(verb="send", me=DST, project_id=P),             # source verb on the destination
                dict(verb="send", me=SRC, project_id=Q),             # P's ticket for Q
                dict(verb="cleanup", me=SRC, project_id=P),          # verb not in the ticket
                dict(verb="send", me=DST, project_id=P, peer=OTHER),  # another peer logged in
                dict(verb="send", me=OTHER, project_id=P, peer=SRC),  # a third host
                dict(verb="send", me=SRC, project_id=P, mode="staged"),
                dict(verb="send", me=SRC, project_id=P, snapshot="move-y")]
    for kw in refusals:
        with pytest.raises(TicketRefused):
            tickets.require(t, **kw)
    fin = make(verbs=("finalize",))
    tickets.require(fin, verb="finalize", me=DST, project_id=P)
    # release (a failed move's snapshot on the source) is the source's verb, and only in its own ticket
    rel = make(verbs=("release",))
    tickets.require(rel, verb="release", me=SRC, project_id=P)
    for kw in (dict(verb="release", me=DST, project_id=P), dict(verb="release", me=SRC, project_id=Q),
               dict(verb="release", me=OTHER, project_id=P)):
        with pytest.raises(TicketRefused):
            tickets.require(rel, **kw)
    with pytest.raises(TicketRefused, match="does not authorise"):
        tickets.require(t, verb="release", me=SRC, project_id=P)  # a send ticket releases nothing
    with pytest.raises(TicketRefused, match="another host"):
        tickets.require(fin, verb="finalize", me=SRC, project_id=P)


def test_make_refuses_bad_fields():
    with pytest.raises(Exception):
        make(verbs=("delete-everything",))
    with pytest.raises(Exception):
        make(dest=SRC)
    with pytest.raises(Exception):
        make(minutes=tickets.MAX_LIFETIME_MINUTES + 1)


def test_ledger_refuses_superseded_attempts_finished_moves_and_foreign_projects(tmp_path):
    from contextlib import closing

    from cocalc_ctl.state import host_db, hub_keys

    with closing(host_db.connect(tmp_path)) as db:
        assert hub_keys.admit(db, MID, P, 2, "send", "t") is None
        assert hub_keys.admit(db, MID, P, 2, "send", "t") is None          # the same step again: a resend
        assert "superseded" in hub_keys.admit(db, MID, P, 1, "send", "t")  # an older attempt's ticket
        assert "another project" in hub_keys.admit(db, MID, Q, 3, "send", "t")
        assert hub_keys.admit(db, MID, P, 3, "finalize", "t") is None
        hub_keys.finish(db, MID, "finalize", "t")
        assert hub_keys.admit(db, MID, P, 3, "finalize", "t") is None      # finalize is idempotent
        for verb in ("send", "abort", "cleanup"):
            assert "already finished" in hub_keys.admit(db, MID, P, 4, verb, "t")
        other = str(uuid.UUID(int=99))
        assert hub_keys.admit(db, other, P, 1, "cleanup", "t") is None
        hub_keys.finish(db, other, "cleanup", "t")
        assert "already finished" in hub_keys.admit(db, other, P, 1, "cleanup", "t")  # no replayed delete


def test_pinned_key_set_is_replaced_exactly(tmp_path):
    from contextlib import closing

    from cocalc_ctl.state import host_db, hub_keys

    k1, k2 = (pub_line(Ed25519PrivateKey.generate()) for _ in range(2))
    with closing(host_db.connect(tmp_path)) as db:
        assert hub_keys.replace_keys(db, [hub_keys.HubKey(MID, k1)], "t") == ([k1], [])
        assert hub_keys.replace_keys(db, [hub_keys.HubKey(MID, k2), hub_keys.HubKey(MID, k1)], "t") == ([k2], [])
        assert hub_keys.replace_keys(db, [hub_keys.HubKey(MID, k2)], "t") == ([], [k1])
        assert [k.line for k in hub_keys.list_keys(db)] == [k2]
