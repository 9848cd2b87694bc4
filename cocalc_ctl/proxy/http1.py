"""Strict HTTP/1.1 message heads and body framing for the proxy (RFC 9110/9112).

Requests come from the internet, so their heads are parsed strictly and anything a front end and
a back end could read two ways is refused: bare LF or CR, obs-fold, whitespace before the colon,
duplicate Host, Content-Length together with Transfer-Encoding, list or non-digit Content-Length,
any transfer coding but `chunked`. Responses come from project servers (user code): they are parsed
a little more leniently but never allowed to inject a line into what the client sees.
This module is syntax only; what the proxy does with a parsed head (refusals, forwarded fields,
re-emitted framing) is policy.py, called by both the fast and the stream path.
"""

from __future__ import annotations

import asyncio
import re

TOKEN_RE = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
BAD_VALUE_RE = re.compile(rb"[\x00-\x08\x0a-\x1f\x7f]")
STATUS_LINE_RE = re.compile(rb"HTTP/1\.([01]) ([0-9]{3})(?: ([^\r\n]*))?")
CHUNK_SIZE_RE = re.compile(rb"([0-9A-Fa-f]{1,15})[ \t]*(?:;[^\r\n]*)?")
DIGITS_RE = re.compile(rb"[0-9]{1,18}")

# RFC 9110 §7.6.1 plus the fields every proxy treats as per-hop (Proxy-Connection, Keep-Alive,
# Proxy-Authorization/-Authenticate of RFC 9110 §11.7).
HOP_BY_HOP = frozenset({b"connection", b"keep-alive", b"proxy-connection", b"te", b"trailer",
                        b"transfer-encoding", b"upgrade", b"proxy-authorization", b"proxy-authenticate"})

READ_SIZE = 64 * 1024

REASONS = {100: "Continue", 101: "Switching Protocols", 200: "OK", 303: "See Other", 400: "Bad Request",
           401: "Unauthorized", 403: "Forbidden", 404: "Not Found",
           405: "Method Not Allowed", 408: "Request Timeout", 413: "Content Too Large",
           414: "URI Too Long", 431: "Request Header Fields Too Large", 500: "Internal Server Error",
           501: "Not Implemented", 502: "Bad Gateway", 503: "Service Unavailable", 504: "Gateway Timeout",
           505: "HTTP Version Not Supported"}


class HttpError(Exception):
    """A request the proxy answers itself with `status`; `reason` goes to the log and the body."""

    def __init__(self, status: int, reason: str):
        super().__init__(reason)
        self.status = status
        self.reason = reason


class PeerClosed(Exception):
    """The other end went away in the middle of a message."""


class UpstreamProtocolError(Exception):
    """The project server sent something that is not HTTP/1.x."""


class RequestHead:
    __slots__ = ("method", "target", "version", "headers", "host", "content_length", "chunked",
                 "keep_alive", "upgrade", "expect_continue", "raw_size", "connection_tokens")

    def __init__(self):
        self.headers: list[tuple[bytes, bytes, bytes]] = []  # (lowercase name, name, value)
        self.host = b""
        self.content_length: int | None = None
        self.chunked = False
        self.keep_alive = True
        self.upgrade: bytes | None = None
        self.expect_continue = False
        self.raw_size = 0
        self.connection_tokens: frozenset[bytes] = frozenset()


class ResponseHead:
    __slots__ = ("version", "status", "reason", "headers", "content_length", "chunked", "keep_alive",
                 "connection_tokens")

    def __init__(self):
        self.headers: list[tuple[bytes, bytes, bytes]] = []
        self.content_length: int | None = None
        self.chunked = False
        self.keep_alive = True
        self.connection_tokens: set[bytes] = set()


async def read_head_lines(reader: asyncio.StreamReader, *, max_bytes: int, max_lines: int,
                          strict: bool = True, on_first_line=None) -> list[bytes] | None:
    """The lines of one message head without their CRLF; None on a clean EOF before any byte.

    Raises HttpError(400) for bare LF/CR (strict), HttpError(431) past the limits, PeerClosed on
    EOF inside the head.
    """
    # Fast path: the whole head is usually in the buffer already; take it in one piece. (StreamReader
    # has no public peek; `_buffer` has been its buffer since asyncio began.)
    buf = getattr(reader, "_buffer", None)
    if buf:
        end = buf.find(b"\r\n\r\n")
        if 0 < end <= max_bytes - 4 and not buf.startswith(b"\r\n"):
            head = bytes(await reader.readexactly(end + 4))[:-4]
            lines = head.split(b"\r\n")
            for i, line in enumerate(lines):
                if b"\n" in line or b"\r" in line:
                    if strict:
                        raise HttpError(400, "bare LF or CR in message head")
                    lines = [x[:-1] if x.endswith(b"\r") else x for x in head.split(b"\n")]
                    if any(b"\r" in x or not x for x in lines):
                        raise HttpError(400, "bare CR in message head")
                    break
            if len(lines) > max_lines:
                raise HttpError(431, "too many header fields")
            return lines
    lines = []
    total = 0
    while True:
        try:
            line = await reader.readuntil(b"\n")
        except asyncio.IncompleteReadError as exc:
            if not lines and not exc.partial and total == 0:
                return None
            raise PeerClosed("connection closed inside a message head") from None
        except asyncio.LimitOverrunError:
            raise HttpError(431, "header line too long") from None
        total += len(line)
        if total > max_bytes:
            raise HttpError(431, "request head too large")
        if line[-2:-1] == b"\r":
            line = line[:-2]
        elif strict:
            raise HttpError(400, "bare LF in message head")
        else:
            line = line[:-1]
        if b"\r" in line:
            raise HttpError(400, "bare CR in message head")
        if not line:
            if lines:
                return lines
            if total > 4:  # RFC 9112 §2.2: ignore at least one empty line before the request line
                raise HttpError(400, "empty lines before the request line")
            continue
        lines.append(line)
        if on_first_line is not None and len(lines) == 1:
            on_first_line()
        if len(lines) > max_lines:
            raise HttpError(431, "too many header fields")


# One match per well-formed field line; anything else goes through _split_header for a precise error.
_FIELD_LINE_RE = re.compile(rb"([!#$%&'*+\-.^_`|~0-9A-Za-z]+):[ \t]*((?:[^\x00-\x08\x0a-\x1f\x7f]*[^\x00-\x20\x7f])?)[ \t]*")


# The field names the parsers act on; every other field is only collected.
_REQUEST_SPECIAL = frozenset({b"host", b"content-length", b"transfer-encoding", b"connection", b"upgrade", b"expect"})
_RESPONSE_SPECIAL = frozenset({b"content-length", b"transfer-encoding", b"connection"})


def split_field(line: bytes) -> tuple[bytes, bytes]:
    m = _FIELD_LINE_RE.fullmatch(line)
    if m is not None:
        return m.group(1), m.group(2)
    return _split_header(line)


def _split_header(line: bytes) -> tuple[bytes, bytes]:
    if line[:1] in (b" ", b"\t"):
        raise HttpError(400, "obsolete line folding")
    name, sep, value = line.partition(b":")
    if not sep or TOKEN_RE.fullmatch(name) is None:
        raise HttpError(400, "malformed header field name")
    value = value.strip(b" \t")
    if BAD_VALUE_RE.search(value) is not None:
        raise HttpError(400, "control character in a header field value")
    return name, value


# An empty Transfer-Encoding value, or an empty list element in it (`, chunked`, `chunked,,x`): RFC 9110
# §5.6.1 lets a recipient skip those, but a parser that does not is exactly what smuggling needs.
_EMPTY_ELEMENT = re.compile(rb"^[ \t]*(?:,|$)|,[ \t]*(?:,|$)")


def _tokens(value: bytes) -> list[bytes]:
    return [t.strip(b" \t").lower() for t in value.split(b",") if t.strip(b" \t")]


# Kept flat (over 60 lines): every request's head goes through here, and a call per step costs measurable time.
def parse_request_head(lines: list[bytes]) -> RequestHead:
    head = RequestHead()
    parts = lines[0].split(b" ")
    if len(parts) != 3:
        raise HttpError(400, "malformed request line")
    method, target, version = parts
    if TOKEN_RE.fullmatch(method) is None:
        raise HttpError(400, "malformed method")
    if version == b"HTTP/1.1":
        head.version = 11
    elif version == b"HTTP/1.0":
        head.version = 10
        head.keep_alive = False
    elif re.fullmatch(rb"HTTP/[0-9]\.[0-9]", version):
        raise HttpError(505, "only HTTP/1.0 and 1.1 are spoken here")
    else:
        raise HttpError(400, "malformed HTTP version")
    head.method = method
    head.target = target
    hosts = 0
    te: list[bytes] = []
    connection: list[bytes] = []
    cl: bytes | None = None
    fields = _FIELD_LINE_RE.fullmatch
    headers = head.headers
    for line in lines[1:]:
        m = fields(line)
        name, value = _split_header(line) if m is None else m.groups()
        lname = name.lower()
        headers.append((lname, name, value))
        if lname not in _REQUEST_SPECIAL:
            continue
        if lname == b"host":
            hosts += 1
            head.host = value
        elif lname == b"content-length":
            if cl is not None:
                raise HttpError(400, "more than one Content-Length")
            if DIGITS_RE.fullmatch(value) is None:
                raise HttpError(400, "invalid Content-Length")
            cl = value
        elif lname == b"transfer-encoding":
            if _EMPTY_ELEMENT.search(value) is not None:
                raise HttpError(400, "empty element in Transfer-Encoding")
            te.extend(_tokens(value))
        elif lname == b"connection":
            connection.extend(_tokens(value))
        elif lname == b"upgrade":
            head.upgrade = value
        elif value.lower() == b"100-continue":  # expect
            head.expect_continue = True
    if hosts > 1:
        raise HttpError(400, "duplicate Host header")
    if hosts == 0 and head.version == 11:
        raise HttpError(400, "missing Host header")
    if b"@" in head.host or b"/" in head.host or b"\\" in head.host or b" " in head.host:
        raise HttpError(400, "invalid Host header")
    if te:
        if cl is not None:
            raise HttpError(400, "both Content-Length and Transfer-Encoding")
        if head.version == 10:
            raise HttpError(400, "Transfer-Encoding in an HTTP/1.0 request")
        if te != [b"chunked"]:
            raise HttpError(501, "unsupported transfer coding")
        head.chunked = True
    elif cl is not None:
        head.content_length = int(cl)
    if b"close" in connection:
        head.keep_alive = False
    elif head.version == 10 and b"keep-alive" in connection:
        head.keep_alive = True
    if head.upgrade is not None and b"upgrade" not in connection:
        head.upgrade = None  # an Upgrade not named in Connection is not an upgrade request (RFC 9110 §7.8)
    head.raw_size = sum(len(x) + 2 for x in lines) + 2
    if connection:
        head.connection_tokens = frozenset(connection)
    return head


def parse_response_head(lines: list[bytes]) -> ResponseHead:
    m = STATUS_LINE_RE.fullmatch(lines[0])
    if m is None:
        raise UpstreamProtocolError("malformed status line")
    head = ResponseHead()
    head.version = 10 + int(m.group(1))
    head.status = int(m.group(2))
    head.reason = m.group(3) or b""
    if BAD_VALUE_RE.search(head.reason):
        raise UpstreamProtocolError("control character in the reason phrase")
    head.keep_alive = head.version == 11
    te: list[bytes] = []
    cls: set[bytes] = set()
    fields = _FIELD_LINE_RE.fullmatch
    headers = head.headers
    for line in lines[1:]:
        m = fields(line)
        if m is None:
            try:
                name, value = _split_header(line)
            except HttpError as exc:
                raise UpstreamProtocolError(exc.reason) from None
        else:
            name, value = m.groups()
        lname = name.lower()
        headers.append((lname, name, value))
        if lname not in _RESPONSE_SPECIAL:
            continue
        if lname == b"content-length":
            for v in value.split(b","):
                v = v.strip(b" \t")
                if DIGITS_RE.fullmatch(v) is None:
                    raise UpstreamProtocolError("invalid Content-Length")
                cls.add(v.lstrip(b"0") or b"0")
        elif lname == b"transfer-encoding":
            if _EMPTY_ELEMENT.search(value) is not None:
                raise UpstreamProtocolError("empty element in Transfer-Encoding")
            te.extend(_tokens(value))
        else:  # connection
            head.connection_tokens.update(_tokens(value))
    if te:
        # The only transfer coding a project may use is chunked, once (nginx: "unknown
        # Transfer-Encoding" -> 502). With Content-Length as well, RFC 9112 §6.3 lets
        # Transfer-Encoding win, and the connection must not be reused afterwards.
        if te != [b"chunked"]:
            raise UpstreamProtocolError("unsupported transfer coding in the response")
        head.chunked = True
        if cls:
            head.keep_alive = False
            head.connection_tokens.add(b"close")
    elif cls:
        if len(cls) > 1:
            raise UpstreamProtocolError("conflicting Content-Length values")
        head.content_length = int(cls.pop())
    if b"close" in head.connection_tokens:
        head.keep_alive = False
    elif head.version == 10 and b"keep-alive" in head.connection_tokens:
        head.keep_alive = True
    return head


def simple_response(status: int, body: bytes, *, keep_alive: bool, content_type: bytes = b"text/plain; charset=utf-8",
                    head_only: bool = False, extra: bytes = b"") -> bytes:
    reason = REASONS.get(status, "Status").encode()
    head = (b"HTTP/1.1 %d %s\r\ncontent-type: %s\r\ncontent-length: %d\r\n%s%s\r\n"
            % (status, reason, content_type, len(body), extra,
               b"" if keep_alive else b"connection: close\r\n"))
    return head if head_only else head + body
