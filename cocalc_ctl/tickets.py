"""Move tickets: the hub's signed, offline-verifiable authority for one step of one move.

A ticket is `<payload>.<sig>[.<sig>]`: base64url (no padding) of the canonical JSON payload
(`sort_keys`, no spaces) and one or two Ed25519 signatures over the payload's base64url text, made
with the hub key (two while a hub key rotation is in progress: current and previous key, so hosts
that pinned either one accept it). Only `[A-Za-z0-9_.-]` characters: it travels as one word of an
ssh forced-command line. It holds no secret: holding a ticket lets nobody log in anywhere, and
every host checks that it is named in the right role.

Payload fields: `v` (1), `mid` move id, `att` attempt, `p` project, `src`/`dst` host ids, `mode`,
`snap` snapshot name, `verbs` (sorted subset of VERBS), `iat`/`exp` (unix seconds).

Roles: `send`, `cleanup` and `release` (after a failed or cancelled move: drop that move's own
snapshot and stream files, the project stays) are run by the source (`src` = this host); `finalize` and `abort` by
the destination (`dst` = this host); the receiver grammar (list/receive/persist/abort/rsync of the
btrfs-<peer> login) needs a `send` ticket naming this host as `dst` and the logged-in peer as `src`.
This module is import-light (stdlib + cryptography) for the receiver's forced command.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
import time
from dataclasses import dataclass

from cocalc_ctl import ids
from cocalc_ctl.errors import InvalidInput

VERSION = 1
VERBS = ("send", "finalize", "cleanup", "abort", "release")
MODES = ("pipe", "staged", "backup")
SKEW_SECONDS = 300          # clocks of hub and hosts may differ this much
MAX_TICKET = 1024           # characters; a real one is about 480 (570 with two signatures)
MAX_LIFETIME_MINUTES = 24 * 60
_TICKET_RE = re.compile(r"[A-Za-z0-9_-]{16,900}(\.[A-Za-z0-9_-]{86}){1,2}", re.ASCII)


class TicketRefused(InvalidInput):
    """A ticket that is malformed, not signed by a pinned hub key, expired, or not for this use."""

    def __init__(self, message: str, hint: str | None = "the hub's move worker issues tickets; start a move with "
                                                         "`move start` on the hub"):
        super().__init__(f"move ticket refused: {message}", hint=hint)


@dataclass(frozen=True)
class Ticket:
    move_id: str
    attempt: int
    project_id: str
    source: str
    dest: str
    mode: str
    snapshot: str
    verbs: tuple[str, ...]
    issued_at: int
    expires_at: int

    def payload(self) -> dict:
        return {"v": VERSION, "mid": self.move_id, "att": self.attempt, "p": self.project_id, "src": self.source,
                "dst": self.dest, "mode": self.mode, "snap": self.snapshot, "verbs": sorted(self.verbs),
                "iat": self.issued_at, "exp": self.expires_at}


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64(text: str) -> bytes:
    """Strict: the one spelling `_b64` makes (no other padding bits), so a ticket has one text."""
    try:
        raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (binascii.Error, ValueError):
        raise TicketRefused("not base64url") from None
    if _b64(raw) != text:
        raise TicketRefused("not canonical base64url")
    return raw


def canonical(payload: dict) -> bytes:
    return json.dumps(payload, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode("ascii")


def make(*, move_id: str, attempt: int, project_id: str, source: str, dest: str, mode: str, snapshot: str,
         verbs, minutes: int, now: float | None = None) -> Ticket:
    """A validated ticket valid from now for `minutes`."""
    t = int(now if now is not None else time.time())
    ticket = Ticket(ids.host_id(move_id), int(attempt), ids.project_id(project_id), ids.host_id(source),
                    ids.host_id(dest), mode, ids.snapshot_name(snapshot), tuple(sorted(set(verbs))), t,
                    t + int(minutes) * 60)
    _check_fields(ticket.payload())
    return ticket


def sign(ticket: Ticket, private_keys: list) -> str:
    """Encode and sign with each of `private_keys` (cryptography Ed25519PrivateKey; current first)."""
    if not private_keys:
        raise InvalidInput("no hub key to sign the ticket with", hint="run `cocalc-ctl hub keys ensure`")
    body = _b64(canonical(ticket.payload()))
    return ".".join([body, *(_b64(k.sign(body.encode("ascii"))) for k in private_keys[:2])])


def _check_fields(p: object) -> Ticket:
    if not isinstance(p, dict) or set(p) != {"v", "mid", "att", "p", "src", "dst", "mode", "snap", "verbs", "iat",
                                             "exp"}:
        raise TicketRefused("unexpected fields")
    if type(p["v"]) is not int or p["v"] != VERSION:
        raise TicketRefused(f"unsupported version {ids.quoted(p['v'])}")
    try:
        for k in ("mid", "src", "dst"):
            if not isinstance(p[k], str) or not ids.is_uuid(p[k]):
                raise TicketRefused(f"invalid {k}")
        ids.project_id(p["p"] if isinstance(p["p"], str) else "")
        ids.snapshot_name(p["snap"] if isinstance(p["snap"], str) else "")
    except InvalidInput as exc:
        if isinstance(exc, TicketRefused):
            raise
        raise TicketRefused(exc.message) from None
    for k in ("att", "iat", "exp"):
        if type(p[k]) is not int or not 0 <= p[k] < 2 ** 40:
            raise TicketRefused(f"invalid {k}")
    if p["mode"] not in MODES:
        raise TicketRefused("invalid mode")
    verbs = p["verbs"]
    if not isinstance(verbs, list) or not verbs or any(v not in VERBS for v in verbs) or verbs != sorted(set(verbs)):
        raise TicketRefused("invalid verbs")
    if p["src"] == p["dst"]:
        raise TicketRefused("source and destination are the same host")
    if not p["iat"] < p["exp"] <= p["iat"] + MAX_LIFETIME_MINUTES * 60:
        raise TicketRefused("invalid lifetime")
    return Ticket(p["mid"], p["att"], p["p"], p["src"], p["dst"], p["mode"], p["snap"], tuple(verbs), p["iat"],
                  p["exp"])


def load_public_key(line: str):
    """An Ed25519 public key from an OpenSSH line, or None."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    try:
        key = serialization.load_ssh_public_key(" ".join(line.split()[:2]).encode("ascii"))
    except (ValueError, TypeError, UnicodeError):
        return None
    return key if isinstance(key, Ed25519PublicKey) else None


def verify(text: object, public_keys: list, *, now: float | None = None) -> Ticket:
    """Check syntax, a signature by one of `public_keys` (OpenSSH lines or key objects) and the time
    window (with SKEW_SECONDS either way). Raises TicketRefused; never says which key matched."""
    from cryptography.exceptions import InvalidSignature

    if not isinstance(text, str) or len(text) > MAX_TICKET or not _TICKET_RE.fullmatch(text):
        raise TicketRefused("malformed ticket")
    body, *sigs = text.split(".")
    keys = [load_public_key(k) if isinstance(k, str) else k for k in public_keys]
    keys = [k for k in keys if k is not None]
    if not keys:
        raise TicketRefused("this host has pinned no hub key", hint="run `cocalc-ctl keys sync` (the hub publishes "
                                                                   "its keys with `hub keys ensure`)")
    ok = False
    for sig in sigs:
        raw = _unb64(sig)
        for k in keys:
            try:
                k.verify(raw, body.encode("ascii"))
                ok = True
                break
            except InvalidSignature:
                continue
        if ok:
            break
    if not ok:
        raise TicketRefused("not signed by a hub key this host trusts")
    raw = _unb64(body)
    try:
        payload = json.loads(raw.decode("ascii"))
    except (ValueError, UnicodeError):
        raise TicketRefused("payload is not JSON") from None
    ticket = _check_fields(payload)
    if canonical(payload) != raw:  # duplicate keys, other spellings: only what `sign` makes is read
        raise TicketRefused("payload is not canonical JSON")
    t = time.time() if now is None else now
    if ticket.issued_at > t + SKEW_SECONDS:
        raise TicketRefused("issued in the future (check the clocks of hub and host)")
    if t > ticket.expires_at + SKEW_SECONDS:
        raise TicketRefused("expired")
    return ticket


def require(ticket: Ticket, *, verb: str, me: str, project_id: str, peer: str | None = None,
            mode: str | None = None, snapshot: str | None = None) -> None:
    """The ticket authorises `verb` for `project_id` on this host (`me`) in the verb's role; for the
    receiver grammar (`peer` given) the logged-in peer must be the ticket's source."""
    if project_id != ticket.project_id:
        raise TicketRefused(f"the ticket is for project {ticket.project_id}, not {project_id}")
    if verb not in ticket.verbs:
        raise TicketRefused(f"the ticket does not authorise {verb}")
    role_host = ticket.source if verb in ("send", "cleanup", "release") and peer is None else ticket.dest
    if role_host != me:
        role = "source" if role_host == ticket.source else "destination"
        raise TicketRefused(f"the ticket names another host as {role}")
    if peer is not None and peer != ticket.source:
        raise TicketRefused("the logged-in peer is not the ticket's source")
    if mode is not None and mode != ticket.mode:
        raise TicketRefused(f"the ticket is for a {ticket.mode} move, not {mode}")
    if snapshot is not None and snapshot != ticket.snapshot:
        raise TicketRefused("the ticket names another move snapshot")
