"""A recording HTTP/1.1 backend for the proxy conformance tests, run in a thread of the test process.

Every connection's received bytes are kept verbatim (`Conn.raw`), and every request the backend
parsed out of them (`Record`: method, target, version, header lines, decoded body). It also notes
what a strict server would object to in a message it received (`Record.ambiguous`): the proxy in
front must never forward anything two servers could frame differently.

Answers:
- default: 200 with `x-rec: <seq>` and the body `<seq> <method> <target> <body length> <sha1>`, so a
  client can tell which received request a response belongs to;
- a target containing `/script/<name>`: the steps registered in `scripts[name]`, written raw (bytes to
  write, ("sleep", s), ("drip", bytes, s) one byte every s seconds, ("close",), ("hold", s) silence
  for s seconds, then close);
- `Expect: 100-continue` gets `100 Continue` before the body is read (as common servers do).

Framing of what the backend reads is deliberately lenient (a chunked body wins over a length, bare
LF ends a line), like the servers a project may run: the point is to *notice* ambiguity, not hide it.
"""

from __future__ import annotations

import asyncio
import hashlib
import re
import threading
import time
from dataclasses import dataclass, field

_STRICT_LINE = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+:[ \t]*[^\x00-\x08\x0a-\x1f\x7f]*")


@dataclass
class Record:
    seq: int
    conn: int
    method: bytes
    target: bytes
    version: bytes
    headers: list[tuple[bytes, bytes]]
    body: bytes
    raw_head: bytes
    ambiguous: list[str] = field(default_factory=list)

    def header(self, name: bytes) -> list[bytes]:
        return [v for k, v in self.headers if k.lower() == name.lower()]

    def key(self) -> tuple[bytes, bytes, bytes]:
        return (self.method, self.target, self.body)


@dataclass
class Conn:
    id: int
    raw: bytearray = field(default_factory=bytearray)
    consumed: int = 0       # bytes of `raw` that belong to complete requests
    open: bool = True
    writer: object = None
    dropped: object = None  # asyncio.Event: drop_idle() was called (ends a scripted wait)

    def leftover(self) -> bytes:
        return bytes(self.raw[self.consumed:])


def default_body(rec: Record) -> bytes:
    return b"%d %s %s %d %s" % (rec.seq, rec.method, rec.target, len(rec.body),
                                hashlib.sha1(rec.body).hexdigest()[:16].encode())


class _Buf:
    """Bytes received on one connection, recorded as they arrive."""

    def __init__(self, reader: asyncio.StreamReader, conn: Conn):
        self.r = reader
        self.conn = conn
        self.buf = bytearray()
        self.pos = 0

    async def _more(self) -> None:
        data = await self.r.read(65536)
        if not data:
            raise EOFError
        self.conn.raw += data
        self.buf += data

    async def line(self, limit: int = 1 << 20) -> bytes:
        while True:
            i = self.buf.find(b"\n", self.pos)
            if i >= 0:
                out = bytes(self.buf[self.pos:i + 1])
                self.pos = i + 1
                return out
            if len(self.buf) - self.pos > limit:
                raise ValueError("line too long")
            await self._more()

    async def exactly(self, n: int) -> bytes:
        while len(self.buf) - self.pos < n:
            await self._more()
        out = bytes(self.buf[self.pos:self.pos + n])
        self.pos += n
        return out


class RecordingBackend:
    def __init__(self, name: str = "rec"):
        self.name = name
        self.scripts: dict[str, list] = {}
        self.records: list[Record] = []
        self.conns: list[Conn] = []
        self.errors: list[str] = []
        self._lock = threading.Lock()
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name=f"backend-{name}")
        self._thread.start()
        if not self._ready.wait(10):
            raise RuntimeError("recording backend did not start")

    # -- lifecycle -----------------------------------------------------------------------------

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)

        async def start():
            self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0, backlog=512)
            self.port = self._server.sockets[0].getsockname()[1]
            self._ready.set()

        self._loop.run_until_complete(start())
        self._loop.run_forever()

    def close(self) -> None:
        def stop():
            self._server.close()
            for c in self.conns:
                if c.writer is not None:
                    c.writer.close()
            self._loop.stop()
        self._loop.call_soon_threadsafe(stop)
        self._thread.join(10)

    # -- what the tests read ---------------------------------------------------------------------

    def mark(self) -> tuple[int, int]:
        with self._lock:
            return len(self.records), len(self.conns)

    def since(self, mark: tuple[int, int]) -> list[Record]:
        with self._lock:
            return list(self.records[mark[0]:])

    def conns_since(self, mark: tuple[int, int]) -> list[Conn]:
        with self._lock:
            return list(self.conns[mark[1]:])

    def leftovers(self) -> dict[int, bytes]:
        """Bytes received on any connection that are not (yet) a complete request: a half request
        sitting on a pooled connection is how one client's bytes become another client's request."""
        with self._lock:
            return {c.id: c.leftover() for c in self.conns if c.leftover()}

    def open_conns(self) -> int:
        with self._lock:
            return sum(1 for c in self.conns if c.open)

    def drop_idle(self) -> None:
        """Close every connection (the proxies' pools see EOF): isolates one case from the next."""
        def drop():
            for c in self.conns:
                if c.open and c.writer is not None:
                    c.writer.close()
                    c.dropped.set()  # a scripted answer may be waiting
        self._loop.call_soon_threadsafe(drop)

    def reset(self, timeout: float = 2.0) -> None:
        """drop_idle(), and wait until every connection is closed and the proxies had a moment to
        notice."""
        self.drop_idle()
        deadline = time.monotonic() + timeout
        while self.open_conns() and time.monotonic() < deadline:
            time.sleep(0.01)
        time.sleep(0.05)

    def settle(self, quiet: float = 0.05, timeout: float = 2.0) -> None:
        """Wait until no new bytes arrived for `quiet` seconds."""
        deadline = time.monotonic() + timeout
        last = -1
        while time.monotonic() < deadline:
            with self._lock:
                now = sum(len(c.raw) for c in self.conns)
            if now == last:
                return
            last = now
            time.sleep(quiet)

    # -- serving -------------------------------------------------------------------------------

    async def _handle(self, reader, writer) -> None:
        with self._lock:
            conn = Conn(id=len(self.conns), writer=writer, dropped=asyncio.Event())
            self.conns.append(conn)
        buf = _Buf(reader, conn)
        try:
            while True:
                rec = await self._read_request(buf, writer)
                if rec is None:
                    return
                with self._lock:
                    rec.seq = len(self.records)
                    self.records.append(rec)
                    conn.consumed = buf.pos
                close = await self._answer(rec, writer, conn)
                if close:
                    return
        except (EOFError, ConnectionError, ValueError, asyncio.IncompleteReadError) as exc:
            if not isinstance(exc, EOFError):
                self.errors.append(f"conn {conn.id}: {exc}")
        finally:
            conn.open = False
            writer.close()

    async def _read_request(self, buf: _Buf, writer) -> Record | None:
        lines: list[bytes] = []
        ambiguous: list[str] = []
        start = buf.pos
        while True:
            try:
                line = await buf.line()
            except EOFError:
                if lines or buf.pos < len(buf.buf):
                    raise
                return None
            if not line.endswith(b"\r\n"):
                ambiguous.append("bare LF")
            line = line.rstrip(b"\r\n")
            if not line:
                if lines:
                    break
                ambiguous.append("empty line before the request line")
                continue
            lines.append(line)
        raw_head = bytes(buf.buf[start:buf.pos])
        parts = lines[0].split(b" ")
        if len(parts) != 3:
            ambiguous.append("malformed request line")
            parts = (parts + [b"", b""])[:3]
        method, target, version = parts
        headers: list[tuple[bytes, bytes]] = []
        for line in lines[1:]:
            if line[:1] in (b" ", b"\t"):
                ambiguous.append("obs-fold")
                continue
            if _STRICT_LINE.fullmatch(line) is None:
                ambiguous.append(f"malformed field line {line[:40]!r}")
            name, _, value = line.partition(b":")
            headers.append((name.strip(), value.strip(b" \t")))
        low = [(k.lower(), v) for k, v in headers]
        te = [v for k, v in low if k == b"transfer-encoding"]
        cl = [v for k, v in low if k == b"content-length"]
        hosts = [v for k, v in low if k == b"host"]
        if version == b"HTTP/1.1" and len(hosts) != 1:
            ambiguous.append(f"{len(hosts)} Host fields in HTTP/1.1")
        if hosts and not hosts[0]:
            ambiguous.append("empty Host")
        if te and cl:
            ambiguous.append("Content-Length and Transfer-Encoding")
        if len(cl) > 1 or any(not re.fullmatch(rb"[0-9]+", v) for v in cl):
            ambiguous.append(f"Content-Length {cl!r}")
        if te and b",".join(te).replace(b" ", b"").lower() != b"chunked":
            ambiguous.append(f"Transfer-Encoding {te!r}")
        for k, v in low:
            if k == b"connection":
                named = {t.strip().lower() for t in v.split(b",")}
                bad = named & {b"content-length", b"transfer-encoding", b"host"}
                if bad:
                    ambiguous.append(f"Connection names {sorted(bad)!r}")
        expect = any(k == b"expect" and v.lower() == b"100-continue" for k, v in low)
        chunked = bool(te) and te[-1].split(b",")[-1].strip().lower() == b"chunked"
        if expect and (chunked or (cl and cl[0] not in (b"0",))):
            writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        body = bytearray()
        if chunked:
            while True:
                size_line = await buf.line()
                if not size_line.endswith(b"\r\n"):
                    ambiguous.append("bare LF in chunk size")
                m = re.match(rb"\s*([0-9A-Fa-f]+)", size_line)
                if m is None:
                    raise ValueError(f"bad chunk size {size_line[:40]!r}")
                size = int(m.group(1), 16)
                if size == 0:
                    while (await buf.line()).rstrip(b"\r\n"):
                        ambiguous.append("trailer field")
                    break
                body += await buf.exactly(size)
                end = await buf.line()
                if end.rstrip(b"\r\n"):
                    ambiguous.append("chunk data longer than its size")
        elif cl:
            try:
                n = int(cl[0].split(b",")[0].strip())
            except ValueError:
                n = 0
            body += await buf.exactly(n)
        return Record(seq=-1, conn=buf.conn.id, method=method, target=target, version=version, headers=headers,
                      body=bytes(body), raw_head=raw_head, ambiguous=ambiguous)

    @staticmethod
    async def _wait(conn: Conn, seconds: float) -> bool:
        """Sleep; True if the connection was dropped meanwhile."""
        try:
            async with asyncio.timeout(seconds):
                await conn.dropped.wait()
            return True
        except TimeoutError:
            return False

    async def _answer(self, rec: Record, writer, conn: Conn) -> bool:
        m = re.search(rb"/script/([A-Za-z0-9_.-]+)", rec.target)
        steps = self.scripts.get(m.group(1).decode()) if m else None
        if steps is None:
            body = default_body(rec)
            writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\nx-rec: %d\r\ncontent-length: %d\r\n\r\n%s"
                         % (rec.seq, len(body), b"" if rec.method == b"HEAD" else body))
            await writer.drain()
            return False
        for step in steps:
            if isinstance(step, (bytes, bytearray)):
                writer.write(bytes(step).replace(b"{seq}", str(rec.seq).encode()))
                await writer.drain()
            elif step[0] == "sleep":
                if await self._wait(conn, step[1]):
                    return True
            elif step[0] == "drip":  # ("drip", bytes, seconds between bytes)
                for i in range(len(step[1])):
                    writer.write(step[1][i:i + 1])
                    await writer.drain()
                    if await self._wait(conn, step[2]):
                        return True
            elif step[0] == "close":
                return True
            elif step[0] == "hold":  # silent until the proxy gives up (its timeout), then close
                await self._wait(conn, step[1] if len(step) > 1 else 30)
                return True
        return False
