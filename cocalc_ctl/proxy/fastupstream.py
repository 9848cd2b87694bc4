"""The fast path's upstream side: one pooled upstream connection as an asyncio Protocol.

It forwards a body-less request head (built by policy.upstream_request_head) and passes the answer
on as it arrives when that answer is body-less or has a Content-Length, writing the head the proxy
re-emits (policy.client_response_head). Anything else (chunked or until-close bodies, a 100, bare
LF) is finished by the stream relay (stream.py). Any anomaly (bytes past the length, a byte while
idle, an interim response not asked for, an oversized head) closes the connection instead of
pooling it.
"""

from __future__ import annotations

import asyncio
import time
from typing import Protocol

from cocalc_ctl.proxy import policy
from cocalc_ctl.proxy.http1 import UpstreamProtocolError
from cocalc_ctl.proxy.stream import connect_failure



class ClientSide(Protocol):
    """What an upstream exchange uses of the client connection it serves (fastpath.ClientProtocol;
    described here rather than imported, since the client side imports this module)."""

    t: asyncio.Transport
    peer: str
    detached: bool
    write_paused: bool
    upstream: "UpstreamProtocol | None"

    def reply_error(self, head, status: int, reason: str, t0: float, upstream: str | None) -> None: ...

    def request_done(self, keep: bool) -> None: ...


def to_streams(transport: asyncio.Transport, buffered: bytes, *, limit: int, eof: bool = False):
    """Re-home a transport onto a StreamReader/StreamWriter pair, keeping bytes already received."""
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=limit, loop=loop)
    protocol = asyncio.StreamReaderProtocol(reader, loop=loop)
    transport.set_protocol(protocol)
    protocol.connection_made(transport)
    # Resume first, then feed: feed_data pauses the transport again if `buffered` is already over the
    # reader's limit, and the reader's own flow control stays consistent.
    transport.resume_reading()
    if buffered:
        reader.feed_data(buffered)
    if eof:
        reader.feed_eof()
    writer = asyncio.StreamWriter(transport, protocol, reader, loop)
    return reader, writer


def fast_connect(proxy, conn, head, out: bytes, key, t0: float) -> None:
    """Open a fresh upstream connection for `conn`'s request (no pooled one, or it had closed)."""

    async def connect():
        loop = asyncio.get_running_loop()
        upstream = f"{key[0]}:{key[1]}"
        try:
            async with asyncio.timeout(proxy.s.connect_timeout):
                _, up = await loop.create_connection(lambda: UpstreamProtocol(proxy, key), key[0], key[1])
        except TimeoutError:
            proxy.metrics.upstream_errors["connect_timeout"] += 1
            return conn.reply_error(head, 504, "upstream connect timed out", t0, upstream)
        except OSError as exc:
            proxy.metrics.upstream_errors["refused"] += 1
            return conn.reply_error(head, 502, connect_failure(exc), t0, upstream)
        if conn.detached:
            up.t.close()
            return
        up.start(conn, head, out, t0, reused=False)

    asyncio.ensure_future(connect())


class UpstreamProtocol(asyncio.Protocol):
    def __init__(self, proxy, key: tuple[str, int]):
        self.p = proxy
        self.key = key
        self.loop = asyncio.get_running_loop()
        self.t: asyncio.Transport | None = None
        self.conn: ClientSide | None = None
        self.closed = False
        self.timer = None
        # The last response head on this connection (raw bytes, parse) and the head re-emitted for it
        # with its (body mode, keep-alive): a server answering the same way again is not re-parsed.
        self.last_raw: bytes | None = None
        self.last_resp = None
        self.last_plan = None
        self.last_out = b""

    def connection_made(self, transport):
        self.t = transport

    def start(self, conn: ClientSide, head, out: bytes, t0: float, reused: bool) -> None:
        self.conn = conn
        self.head = head
        self.out = out
        self.t0 = t0
        self.reused = reused
        self.got_any = False
        self.resp = None
        self.remaining = 0
        self.sent = 0
        self.overflow = False
        self.buf = bytearray()
        self.last = self.started = self.loop.time()
        conn.upstream = self
        self.t.write(out)
        if conn.write_paused:
            self.t.pause_reading()
        if self.timer is None:  # a pending one (from an earlier exchange) fires sooner and re-arms
            self.timer = self.loop.call_later(self.p.s.upstream_timeout, self._expired)

    @property
    def upstream_name(self) -> str:
        return f"{self.key[0]}:{self.key[1]}"

    # Kept flat (over 60 lines): runs per chunk of every fast-path response; a call per step costs measurable time.
    def data_received(self, data):
        conn = self.conn
        if conn is None:
            self.t.close()  # bytes on an idle pooled connection: not HTTP we can trust
            return
        self.got_any = True
        self.last = self.loop.time()
        if self.resp is not None:
            n = self.remaining
            if len(data) > n:
                data = data[:n]
                self.overflow = True
            conn.t.write(data)
            self.remaining -= len(data)
            self.sent += len(data)
            if self.remaining == 0:
                self._finish()
            return
        self.buf += data
        buf = self.buf
        end = buf.find(b"\r\n\r\n")
        if end < 0:
            if b"\n\n" in buf:
                return self._to_slow(None)  # bare-LF upstream: the lenient stream parser copes
            if len(buf) > policy.RESPONSE_ACCEPT_BYTES:
                return self._fail(502, "bad upstream response: response head too large", "protocol")
            return
        raw = bytes(buf[:end])
        cached = raw == self.last_raw
        if not cached and raw.count(b"\n") != raw.count(b"\r\n"):
            return self._to_slow(None)  # bare LF somewhere: the lenient stream parser copes
        head = self.head
        try:
            # Only a head that was answered on the fast path is remembered, so a cached parse is never
            # one the stream relay has been given.
            resp = self.last_resp if cached else policy.parse_response_lines(raw)
            policy.check_response(head, resp)
            mode, _, keep, reusable = policy.plan_response(head, resp)
            if resp.status == 100 or mode >= policy.CHUNKED:
                return self._to_slow(resp, end + 4)  # the stream relay re-frames these
            plan = (mode, keep)
            if cached and plan == self.last_plan:
                out = self.last_out
            else:
                out = policy.client_response_head(resp, mode, False, keep, cookie_scope=self.p.cookie_scope(self.key))
                self.last_raw, self.last_resp, self.last_plan, self.last_out = raw, resp, plan, out
        except UpstreamProtocolError as exc:
            return self._fail(502, f"bad upstream response: {exc}", "protocol")
        self.resp = resp
        self.keep = keep
        self.reusable = reusable
        rest = bytes(buf[end + 4:])
        self.buf = bytearray()
        self.remaining = 0 if mode == policy.NONE else resp.content_length
        if len(rest) > self.remaining:
            rest = rest[:self.remaining]
            self.overflow = True  # bytes past the framing: this connection is never reused
        self.remaining -= len(rest)
        self.sent = len(rest)
        conn.t.write(out + rest)
        if self.remaining == 0:
            self._finish()

    def _finish(self) -> None:
        conn = self.conn
        self._detach()
        p = self.p
        p.metrics.requests[self.resp.status] += 1
        p.metrics.fast_path += 1
        p.metrics.bytes_downstream += self.sent
        if p.log.enabled:
            p.log.log(peer=conn.peer, method=self.head.method, target=self.head.target, status=self.resp.status,
                      bytes_out=self.sent, seconds=time.monotonic() - self.t0, upstream=self.upstream_name)
        if self.reusable and not self.overflow and not self.closed:
            self.t.resume_reading()
            p.fast_pool.put(self)
        else:
            self._cancel_timer()
            self.t.close()
        conn.request_done(self.keep)

    def _detach(self) -> None:
        if self.conn is not None:
            self.conn.upstream = None
        self.conn = None

    def _fail(self, status: int, reason: str, kind: str) -> None:
        conn = self.conn
        self._detach()
        self._cancel_timer()
        self.t.close()
        self.p.metrics.upstream_errors[kind] += 1
        if self.resp is None:
            conn.reply_error(self.head, status, reason, self.t0, self.upstream_name)
        else:  # the answer has begun: all we can do is cut the client off
            conn.t.close()

    def _cancel_timer(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None

    def _expired(self) -> None:
        self.timer = None
        if self.conn is None:
            return  # idle in the pool (or handed to the stream path)
        # Waiting for the head: counted from the request; inside the body: from the last bytes.
        deadline = (self.started if self.resp is None else self.last) + self.p.s.upstream_timeout
        remaining = deadline - self.loop.time()
        if remaining > 0:
            self.timer = self.loop.call_later(remaining, self._expired)
            return
        self._fail(504, "upstream timed out", "timeout")

    def client_lost(self) -> None:
        self._detach()
        self._cancel_timer()
        self.t.close()

    def connection_lost(self, exc):
        self.closed = True
        self._cancel_timer()
        self.p.fast_pool.discard(self)
        conn = self.conn
        if conn is None:
            return
        if self.resp is None and self.reused and not self.got_any:
            self._detach()  # a pooled connection the upstream had closed: retry once on a fresh one
            fast_connect(self.p, conn, self.head, self.out, self.key, self.t0)
            return
        self.p.metrics.upstream_errors["reset" if self.resp is None else "body"] += 1
        self._detach()
        if self.resp is None:
            conn.reply_error(self.head, 502, "upstream closed the connection", self.t0, self.upstream_name)
        else:
            conn.t.close()

    def _to_slow(self, resp, head_len: int = 0) -> None:
        """Finish this exchange on the stream path (chunked or until-close bodies, a 100, bare LF);
        `resp`, if given, has passed policy.check_response."""
        conn, head = self.conn, self.head
        self._detach()
        self._cancel_timer()
        buffered = bytes(self.buf[head_len:])
        self.buf = bytearray()
        ur, uw = to_streams(self.t, buffered, limit=self.p.read_limit)
        cr, cw = conn.to_streams()
        asyncio.ensure_future(self.p.continue_on_streams(head, resp, ur, uw, self.key, cr, cw, conn.peer,
                                                         conn.local_port, self.t0, self.upstream_name))
