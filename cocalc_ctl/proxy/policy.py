"""The proxy's forwarding rules, in one place: both the fast path (fastpath.py) and the stream path
(stream.py) call these functions, so there is one set of rules however a message travels.

The invariant they keep: every message the proxy forwards, in either direction and on every hop,
carries framing computed from the proxy's own parse. `Content-Length` and `Transfer-Encoding` are
never copied from the peer; the proxy writes its own, and no `Connection` header can remove them.

Requests (`parse_request`):
- `CONNECT` and `TRACE` are refused with 405; a missing or empty `Host` with 400 (HTTP/1.0 too);
  a `Connection` header naming `Content-Length` or `Transfer-Encoding` with 400.
- `Connection` may drop end-to-end fields, but never `Host`, the framing fields, `Upgrade` of an
  upgrade request or the `X-Forwarded-*` fields the proxy sets.
- `Forwarded`, `X-Real-IP`, `X-Cocalc-Account`, `X-Cocalc-Hub-Auth` (the proxy sets those two itself)
  and every field whose name contains `_` are dropped (a WSGI server reads
  `X_Forwarded_Host` as `X-Forwarded-Host`).
- `X-Forwarded-For/-Proto/-Host/-Port` are set from the connection, replacing the client's, unless
  the peer's address is in `proxy.trust_forwarded`: then the peer's values are kept and the peer's
  address is appended to `X-Forwarded-For`.
- Limits: a trusted peer (the hub, for a host) may send `FORWARD_BUDGET_FIELDS` more fields and
  `FORWARD_BUDGET_BYTES` more head bytes than a client, the room the fields it adds take (four
  forwarded ones, the account and the hub credential), so what the front proxy accepts the next one
  accepts too. `Host` is capped at `MAX_HOST_BYTES`.

Responses (`check_response`, `plan_response`, `client_response_head`):
- a `Connection` header naming `Content-Length` or `Transfer-Encoding` is a 502;
- a `101` to a request that asked for no upgrade, or a `1xx` other than the one `100` an
  `Expect: 100-continue` request asked for, is a 502;
- a response head over `RESPONSE_MAX_BYTES` / `RESPONSE_MAX_FIELDS` (as received, or as the proxy
  would re-emit it) is a 502;
- an upstream connection goes back to the pool only after a response read completely by the
  proxy's own framing, with nothing left over, no `close`, no protocol switch and no anomaly
  (any of the above, a body on a 204/304/HEAD answer, bytes past the length, a timeout): when in
  doubt, the connection is closed.
"""

from __future__ import annotations

import ipaddress

from cocalc_ctl.authnames import ACCOUNT_HEADER, HUB_AUTH_HEADER
from cocalc_ctl.proxy import cookies
from cocalc_ctl.proxy.http1 import (HOP_BY_HOP, HttpError, UpstreamProtocolError, parse_request_head,
                                    parse_response_head)

FRAMING = frozenset({b"content-length", b"transfer-encoding"})
FORWARDED = frozenset({b"x-forwarded-for", b"x-forwarded-proto", b"x-forwarded-host", b"x-forwarded-port"})
# Fields a Connection header may name without effect: the proxy keeps or re-sets them.
PROTECTED = FRAMING | FORWARDED | {b"host", b"upgrade"}
# Request fields never copied: hop-by-hop ones, framing (re-emitted), client-sent proxy fields.
# x-cocalc-account and x-cocalc-hub-auth are only ever set by the proxy itself (the `extra` lines).
_REQUEST_DROP = HOP_BY_HOP | FRAMING | {b"forwarded", b"x-real-ip", ACCOUNT_HEADER, HUB_AUTH_HEADER}
# Response fields never copied: hop-by-hop ones and framing (re-emitted from our parse).
_RESPONSE_DROP = HOP_BY_HOP | FRAMING

REFUSED_METHODS = frozenset({b"CONNECT", b"TRACE"})
MAX_HOST_BYTES = 1024
FORWARD_BUDGET_FIELDS = 6
# 4 forwarded field names + an address, a scheme, a port and a Host of MAX_HOST_BYTES (2048), then the
# hub's x-cocalc-account and x-cocalc-hub-auth lines (about 160 bytes; 256)
FORWARD_BUDGET_BYTES = 2048 + 256
RESPONSE_MAX_BYTES = 65536
RESPONSE_MAX_FIELDS = 200
# What a response head may have when received: the limits above plus the lines a proxy in front of
# it adds when re-emitting (framing, connection, upgrade), so a chain of proxies agrees.
RESPONSE_ACCEPT_BYTES = RESPONSE_MAX_BYTES + 256
RESPONSE_ACCEPT_FIELDS = RESPONSE_MAX_FIELDS + 4


# -- requests ------------------------------------------------------------------------------------

def parse_request(lines: list[bytes]):
    """Parse a request head (http1 syntax rules) and apply the request rules; HttpError if refused."""
    head = parse_request_head(lines)
    check_request(head)
    return head


def check_request(head) -> None:
    if head.method in REFUSED_METHODS:
        raise HttpError(405, f"{head.method.decode()} is not allowed")
    host = head.host
    if not host:
        raise HttpError(400, "missing or empty Host header")
    if len(host) > MAX_HOST_BYTES:
        raise HttpError(400, "Host header too long")
    tokens = head.connection_tokens
    if tokens and not tokens.isdisjoint(FRAMING):
        raise HttpError(400, "Connection header names a framing field")


class Forwarding:
    """Who may set X-Forwarded-* for us: `proxy.trust_forwarded`, a list of addresses and networks."""

    def __init__(self, trusted=(), scheme: str = "http"):
        self.networks = tuple(ipaddress.ip_network(t, strict=False) for t in trusted)
        self.scheme = scheme.encode()
        self._cache: dict[str, bool] = {}

    def trusted(self, peer: str) -> bool:
        if not self.networks:
            return False
        hit = self._cache.get(peer)
        if hit is None:
            try:
                addr = ipaddress.ip_address(peer)
            except ValueError:
                hit = False
            else:
                if getattr(addr, "ipv4_mapped", None) is not None:
                    addr = addr.ipv4_mapped
                hit = any(addr in net for net in self.networks)
            if len(self._cache) < 4096:
                self._cache[peer] = hit
        return hit


def request_limits(max_bytes: int, max_fields: int, trusted: bool) -> tuple[int, int]:
    """(head bytes, header fields) accepted from a peer: a trusted proxy gets room for what it adds."""
    if trusted:
        return max_bytes + FORWARD_BUDGET_BYTES, max_fields + FORWARD_BUDGET_FIELDS
    return max_bytes, max_fields


def request_drop(*names: bytes) -> frozenset:
    """The fields a request never forwards, plus `names` (lowercase): for `upstream_request_head(drop=)`."""
    return _REQUEST_DROP | frozenset(names)


def forwarded_for(head, peer: bytes, trusted: bool) -> bytes:
    """The X-Forwarded-For value upstream_request_head sends: a trusted peer's list plus the peer."""
    if trusted:
        xff = None
        for lname, _, value in head.headers:
            if lname == b"x-forwarded-for":
                xff = value if xff is None else xff + b", " + value
        if xff:
            return xff + b", " + peer
    return peer


def upstream_request_head(head, peer: bytes, local_port: bytes, fwd: Forwarding, trusted: bool,
                          extra: bytes = b"", drop: frozenset = _REQUEST_DROP) -> bytes:
    """The request head the proxy sends upstream: end-to-end fields, our forwarded fields, our framing.
    `drop` (from request_drop()) removes more fields; `extra` (complete `name: value\r\n` lines, from the
    proxy itself: the hub's x-cocalc-account) is added after the forwarded fields."""
    tokens = head.connection_tokens
    if tokens:
        drop = drop | (tokens - PROTECTED)
    out = bytearray(b"%s %s HTTP/1.1\r\n" % (head.method, head.target))
    xff = proto = fhost = fport = None
    for lname, name, value in head.headers:
        if lname in drop or b"_" in lname:
            continue
        if lname in FORWARDED:
            if trusted:
                if lname == b"x-forwarded-for":
                    xff = value if xff is None else xff + b", " + value
                elif lname == b"x-forwarded-proto":
                    proto = value
                elif lname == b"x-forwarded-host":
                    fhost = value
                else:
                    fport = value
            continue
        out += b"%s: %s\r\n" % (name, value)
    out += b"x-forwarded-for: %s\r\n" % ((xff + b", " + peer) if xff else peer)
    out += b"x-forwarded-proto: %s\r\n" % (proto or fwd.scheme)
    out += b"x-forwarded-host: %s\r\n" % (fhost or head.host)
    out += b"x-forwarded-port: %s\r\n" % (fport or local_port)
    out += extra
    if head.chunked:
        out += b"transfer-encoding: chunked\r\n"
    elif head.content_length is not None:
        out += b"content-length: %d\r\n" % head.content_length
    if head.upgrade is not None:
        out += b"connection: upgrade\r\nupgrade: %s\r\n" % head.upgrade
    out += b"\r\n"
    return bytes(out)


# -- responses -----------------------------------------------------------------------------------

def check_response(head, resp, interim_seen: int = 0) -> None:
    """UpstreamProtocolError for a response the proxy will not pass on (the caller answers 502 and
    closes the upstream connection)."""
    tokens = resp.connection_tokens
    if tokens and not tokens.isdisjoint(FRAMING):
        raise UpstreamProtocolError("Connection header names a framing field")
    status = resp.status
    if status < 200:
        if status == 101:
            if head.upgrade is None:
                raise UpstreamProtocolError("101 to a request that asked for no upgrade")
        elif status != 100 or not head.expect_continue or interim_seen:
            raise UpstreamProtocolError(f"unexpected {status} interim response")


# Body modes of a response toward the client.
NONE, FIXED, CHUNKED, UNTIL_CLOSE = 0, 1, 2, 3


def plan_response(head, resp) -> tuple[int, bool, bool, bool]:
    """(body mode, re-chunk toward the client, client connection may stay open, upstream reusable)."""
    if head.method == b"HEAD" or resp.status in (204, 304) or resp.status < 200:
        mode = NONE
    elif resp.chunked:
        mode = CHUNKED
    elif resp.content_length is not None:
        mode = FIXED
    else:
        mode = UNTIL_CLOSE
    keep = head.keep_alive
    reusable = resp.keep_alive and mode != UNTIL_CLOSE
    chunked_out = mode >= CHUNKED and head.version == 11
    if mode >= CHUNKED and head.version != 11:
        keep = False  # an HTTP/1.0 client gets the body raw, delimited by close
    return mode, chunked_out, keep, reusable


def client_response_head(resp, mode: int, chunked_out: bool, keep: bool, extra: bytes = b"",
                         cookie_scope: bytes = b"") -> bytes:
    """The response head toward the client: end-to-end fields, then our framing and connection fields.
    A `cookie_scope` (`/<project_id>/`, or `/` in subdomain mode) rewrites Set-Cookie (cookies.py).
    UpstreamProtocolError if it would exceed the response limits."""
    tokens = resp.connection_tokens
    drop = _RESPONSE_DROP if not tokens else _RESPONSE_DROP | tokens
    out = bytearray(b"HTTP/1.1 %d %s\r\n" % (resp.status, resp.reason or b"-"))
    n = 0
    for lname, name, value in resp.headers:
        if lname in drop:
            continue
        if lname == b"set-cookie" and cookie_scope:
            value = cookies.rewrite(value, cookie_scope)
            if value is None:
                continue
        out += b"%s: %s\r\n" % (name, value)
        n += 1
    if mode == FIXED:
        out += b"content-length: %d\r\n" % resp.content_length  # the length we relay
    elif mode == NONE:
        if resp.content_length is not None and resp.status >= 200 and resp.status != 204:
            # HEAD / 304: the length the upstream stated (metadata: no body follows)
            out += b"content-length: %d\r\n" % resp.content_length
    elif chunked_out:
        out += b"transfer-encoding: chunked\r\n"
    if not keep:
        out += b"connection: close\r\n"
    out += extra
    out += b"\r\n"
    if len(out) > RESPONSE_MAX_BYTES or n > RESPONSE_MAX_FIELDS:
        raise UpstreamProtocolError("response head too large")
    return bytes(out)


def interim_head(resp) -> bytes:
    """A 100 Continue passed on to an HTTP/1.1 client (no Set-Cookie: browsers ignore them on a 1xx,
    and nothing a project sends may set a cookie unscoped)."""
    resp.headers = [h for h in resp.headers if h[0] != b"set-cookie"]
    return client_response_head(resp, NONE, False, True)


def parse_response_lines(raw: bytes):
    """Fast path: a complete CRLF head (without its final CRLFCRLF) -> ResponseHead, with the limits."""
    if len(raw) + 4 > RESPONSE_ACCEPT_BYTES:
        raise UpstreamProtocolError("response head too large")
    lines = raw.split(b"\r\n")
    if len(lines) > RESPONSE_ACCEPT_FIELDS + 1:
        raise UpstreamProtocolError("too many response header fields")
    return parse_response_head(lines)
