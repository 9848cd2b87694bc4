"""Raw HTTP/1.1 on both ends of a proxy under test: a strict reference reading of the request bytes a
client sends, and a strict reader of the response bytes it gets back.

`reference_requests(data)` splits client bytes the way RFC 9112 says a recipient must (and refuses
what it says must be refused, plus the proxy rules of the routing-safety section: a `Connection`
header naming a framing field or Host, an empty Host, CONNECT/TRACE). The result is the list of
requests a correct proxy may forward, in order, and whether bytes follow that it must not forward.
`read_responses(sock, ...)` reads responses until the peer closes or goes quiet and says whether
each was correctly framed.
"""

from __future__ import annotations

import re
import socket
import time
from dataclasses import dataclass, field

TOKEN = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
FIELD = re.compile(rb"([!#$%&'*+\-.^_`|~0-9A-Za-z]+):[ \t]*([^\x00-\x08\x0a-\x1f\x7f]*?)[ \t]*")
CHUNK = re.compile(rb"([0-9A-Fa-f]+)((?:[ \t]*;[ \t]*[!#$%&'*+\-.^_`|~0-9A-Za-z]+"
                   rb"(?:[ \t]*=[ \t]*(?:[!#$%&'*+\-.^_`|~0-9A-Za-z]+|\"[^\"\r\n]*\"))?)*)")
LENIENT_CHUNK = re.compile(rb"([0-9A-Fa-f]+)[ \t]*(;[^\r\n]*)?")
FRAMING_FIELDS = {b"content-length", b"transfer-encoding", b"host"}


@dataclass
class Req:
    method: bytes
    target: bytes
    version: bytes
    headers: list[tuple[bytes, bytes]]
    body: bytes

    def key(self) -> tuple[bytes, bytes, bytes]:
        return (self.method, self.target, self.body)

    def has_body_framing(self) -> bool:
        return any(k.lower() in (b"content-length", b"transfer-encoding") for k, _ in self.headers)


@dataclass
class Reference:
    requests: list[Req]
    rest: bytes            # bytes after the last well-formed request (empty: nothing else)
    why: str = ""          # why `rest` is not a request
    closes: bool = False   # the last request closes the connection (bytes after it are never read)


class Bad(Exception):
    pass


class Incomplete(Exception):
    pass


def _one_request(data: bytes, pos: int, lenient: bool = False) -> tuple[Req, int]:
    if lenient and data.startswith(b"\r\n", pos) and not data.startswith(b"\r\n\r\n", pos):
        pos += 2  # RFC 9112 §2.2: one empty line before a request line may be ignored
    end = data.find(b"\r\n\r\n", pos)
    if end < 0:
        if b"\n" in data[pos:] and b"\r\n" not in data[pos:data.find(b"\n", pos) + 1]:
            raise Bad("bare LF")
        raise Incomplete("head incomplete")
    head = data[pos:end]
    if b"\n" in head.replace(b"\r\n", b"") or b"\r" in head.replace(b"\r\n", b""):
        raise Bad("bare CR or LF in head")
    lines = head.split(b"\r\n")
    parts = lines[0].split(b" ")
    if len(parts) != 3 or TOKEN.fullmatch(parts[0]) is None or parts[2] not in (b"HTTP/1.1", b"HTTP/1.0"):
        raise Bad("request line")
    method, target, version = parts
    if not re.fullmatch(rb"/[\x21-\x7e]*", target) or b"#" in target:
        raise Bad("target not origin-form")
    if method in (b"CONNECT", b"TRACE") and not lenient:
        raise Bad(f"{method.decode()} refused")
    headers = []
    for line in lines[1:]:
        m = FIELD.fullmatch(line)
        if m is None:
            raise Bad(f"field line {line[:30]!r}")
        headers.append((m.group(1), m.group(2)))
    low = [(k.lower(), v) for k, v in headers]
    hosts = [v for k, v in low if k == b"host"]
    if len(hosts) > 1:
        raise Bad("Host")
    if not lenient and ((version == b"HTTP/1.1" and not hosts) or (hosts and not hosts[0])):
        raise Bad("Host")
    if version == b"HTTP/1.0" and not hosts and not lenient:
        raise Bad("HTTP/1.0 without Host")
    for k, v in low:
        if k == b"connection" and not lenient:
            named = {t.strip(b" \t").lower() for t in v.split(b",")}
            if named & FRAMING_FIELDS:
                raise Bad("Connection names a framing field")
    if any(b"_" in k for k, _ in low) and False:  # dropped, not refused: checked at the backend
        pass
    te = [v for k, v in low if k == b"transfer-encoding"]
    cl = [v for k, v in low if k == b"content-length"]
    body_start = end + 4
    if te:
        if cl or version == b"HTTP/1.0":
            raise Bad("TE with CL, or TE in 1.0")
        if [t.strip(b" \t").lower() for t in b",".join(te).split(b",") if t.strip(b" \t")] != [b"chunked"]:
            raise Bad("transfer coding")
        body = bytearray()
        p = body_start
        while True:
            e = data.find(b"\r\n", p)
            if e < 0:
                if b"\n" in data[p:]:
                    raise Bad("bare LF in chunk size")
                raise Incomplete("chunk size")
            line = data[p:e]
            m = (LENIENT_CHUNK if lenient else CHUNK).fullmatch(line)
            if m is None or len(m.group(1)) > 15:
                raise Bad(f"chunk size {line[:20]!r}")
            size = int(m.group(1), 16)
            p = e + 2
            if size == 0:
                while True:
                    e = data.find(b"\r\n", p)
                    if e < 0:
                        raise Incomplete("trailers")
                    line = data[p:e]
                    p = e + 2
                    if not line:
                        break
                    if FIELD.fullmatch(line) is None and not lenient:
                        raise Bad("trailer line")
                    if lenient and b"\n" in line:
                        raise Bad("bare LF in trailers")
                return Req(method, target, version, headers, bytes(body)), p
            if len(data) < p + size + 2:
                raise Incomplete("chunk data")
            body += data[p:p + size]
            p += size
            if data[p:p + 2] != b"\r\n":
                raise Bad("chunk not followed by CRLF")
            p += 2
    if cl:
        if len(cl) > 1 or not re.fullmatch(rb"[0-9]+" if lenient else rb"[0-9]{1,15}", cl[0]):
            raise Bad("Content-Length")
        n = int(cl[0])
        if len(data) < body_start + n:
            raise Incomplete("body")
        return Req(method, target, version, headers, data[body_start:body_start + n]), body_start + n
    return Req(method, target, version, headers, b""), body_start


def _closes(req: Req) -> bool:
    conn = b",".join(v for k, v in req.headers if k.lower() == b"connection").lower()
    tokens = {t.strip() for t in conn.split(b",")}
    if req.version == b"HTTP/1.0":
        return b"keep-alive" not in tokens
    return b"close" in tokens


def _is_upgrade(req: Req) -> bool:
    conn = b",".join(v for k, v in req.headers if k.lower() == b"connection").lower()
    return any(k.lower() == b"upgrade" for k, _ in req.headers) and b"upgrade" in {t.strip() for t in conn.split(b",")}


def reference_requests(data: bytes, lenient: bool = False) -> Reference:
    """Strict: what RFC 9112 and the routing-safety rules let through. Lenient: the same message
    boundaries, without the rules whose breach cannot move a boundary (a proxy may be more or less
    strict there, but where it accepts, this is the only reading that does not desynchronise)."""
    out: list[Req] = []
    pos = 0
    while pos < len(data):
        try:
            req, pos = _one_request(data, pos, lenient)
        except Bad as exc:
            return Reference(out, data[pos:], str(exc))
        except Incomplete as exc:
            return Reference(out, data[pos:], f"incomplete: {exc}")
        out.append(req)
        if _closes(req) or _is_upgrade(req):
            # nothing after a closing request is read; after a (refused) upgrade a proxy may close
            return Reference(out, data[pos:], "after close/upgrade", closes=True)
    return Reference(out, b"")


# -- responses ------------------------------------------------------------------------------------

@dataclass
class Resp:
    status: int
    headers: list[tuple[bytes, bytes]]
    body: bytes
    framing: str                     # "length", "chunked", "none" (no body by rule), "close"
    interim: list[int] = field(default_factory=list)

    def header(self, name: bytes) -> bytes | None:
        for k, v in self.headers:
            if k.lower() == name.lower():
                return v
        return None


@dataclass
class ClientView:
    responses: list[Resp]
    garbage: bytes          # bytes that are not a correctly framed response
    closed: bool            # the proxy closed the connection
    error: str = ""
    raw: bytes = b""


def _parse_responses(data: bytes, methods: list[bytes], closed: bool) -> tuple[list[Resp], bytes, str, bool]:
    """Responses in `data`; the last bool: more bytes are needed to finish the one being read."""
    out: list[Resp] = []
    pos = 0
    interim: list[int] = []
    while pos < len(data):
        end = data.find(b"\r\n\r\n", pos)
        if end < 0:
            return out, data[pos:], "incomplete head", True
        lines = data[pos:end].split(b"\r\n")
        m = re.fullmatch(rb"HTTP/1\.1 ([0-9]{3}) [^\r\n\x00]*", lines[0])
        if m is None:
            return out, data[pos:], f"bad status line {lines[0][:40]!r}", False
        status = int(m.group(1))
        headers = []
        for line in lines[1:]:
            f = FIELD.fullmatch(line)
            if f is None:
                return out, data[pos:], f"bad field line {line[:40]!r}", False
            headers.append((f.group(1), f.group(2)))
        low = [(k.lower(), v) for k, v in headers]
        p = end + 4
        if 100 <= status < 200 and status != 101:
            interim.append(status)
            pos = p
            continue
        method = methods[len(out)] if len(out) < len(methods) else b"GET"
        te = [v for k, v in low if k == b"transfer-encoding"]
        cl = [v for k, v in low if k == b"content-length"]
        conn = b",".join(v for k, v in low if k == b"connection").lower()
        if te and cl:
            return out, data[pos:], "response with both Content-Length and Transfer-Encoding", False
        if len(cl) > 1:
            return out, data[pos:], "response with several Content-Length", False
        if any(t in conn for t in (b"content-length", b"transfer-encoding")):
            return out, data[pos:], "response Connection names a framing field", False
        if method == b"HEAD" or status in (204, 304) or status == 101:
            if status == 204 and te:
                return out, data[pos:], f"{status} with Transfer-Encoding", False
            out.append(Resp(status, headers, b"", "none", interim))
            interim = []
            pos = p
            if status == 101:
                return out, data[pos:], "", False
            continue
        if te:
            if [t.strip().lower() for t in b",".join(te).split(b",")] != [b"chunked"]:
                return out, data[pos:], f"response transfer coding {te!r}", False
            body = bytearray()
            while True:
                e = data.find(b"\r\n", p)
                if e < 0:
                    return out, data[pos:], "incomplete chunk size", True
                m2 = re.fullmatch(rb"([0-9a-fA-F]{1,15})(;[^\r\n]*)?", data[p:e])
                if m2 is None:
                    return out, data[pos:], f"bad chunk size {data[p:e][:20]!r}", False
                size = int(m2.group(1), 16)
                p = e + 2
                if size == 0:
                    while True:
                        e = data.find(b"\r\n", p)
                        if e < 0:
                            return out, data[pos:], "incomplete trailers", True
                        line, p = data[p:e], e + 2
                        if not line:
                            break
                    break
                if len(data) < p + size + 2:
                    return out, data[pos:], "incomplete chunk", True
                body += data[p:p + size]
                if data[p + size:p + size + 2] != b"\r\n":
                    return out, data[pos:], "chunk not followed by CRLF", False
                p += size + 2
            out.append(Resp(status, headers, bytes(body), "chunked", interim))
        elif cl:
            if not re.fullmatch(rb"[0-9]+", cl[0]):
                return out, data[pos:], f"bad Content-Length {cl[0]!r}", False
            n = int(cl[0])
            if len(data) < p + n:
                return out, data[pos:], "incomplete body", True
            out.append(Resp(status, headers, data[p:p + n], "length", interim))
            p += n
        else:
            if not closed:
                return out, data[pos:], "unframed response", True
            out.append(Resp(status, headers, data[p:], "close", interim))
            p = len(data)
        interim = []
        pos = p
    return out, b"", "", False


def read_responses(sock: socket.socket, methods: list[bytes], expect: int, *, quiet: float = 0.3,
                   total: float = 6.0, settle: float = 0.05) -> ClientView:
    """Read until the peer closes, or `expect` responses arrived and nothing more for `settle`
    seconds, or nothing at all for `quiet` seconds, or `total` seconds."""
    data = b""
    closed = False
    start = last = time.monotonic()
    while True:
        now = time.monotonic()
        parsed, _, _, _ = _parse_responses(data, methods, False)
        done = len(parsed) >= expect
        wait = min((settle if done else quiet) - (now - last), total - (now - start))
        if wait <= 0:
            break
        sock.settimeout(wait)
        try:
            chunk = sock.recv(65536)
        except socket.timeout:
            break
        except OSError:
            closed = True
            break
        if not chunk:
            closed = True
            break
        data += chunk
        last = time.monotonic()
    responses, garbage, error, _ = _parse_responses(data, methods, closed)
    return ClientView(responses, garbage, closed, error, data)


def exchange(port: int, data: bytes, methods: list[bytes], expect: int, **kw) -> ClientView:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        try:
            s.sendall(data)
        except OSError:
            pass
        return read_responses(s, methods, expect, **kw)


def methods_of(data: bytes) -> list[bytes]:
    """Best-effort method of each request line in `data` (for HEAD framing of the responses)."""
    return [m.group(1) for m in re.finditer(rb"(?:^|\r\n\r\n|\n\n)([A-Z]+) /", data)]
