"""The proxy's fast path: asyncio Protocols for the common exchange, streams for everything else.

Most requests through a project proxy are body-less (GET/HEAD...) and answered with a
Content-Length or no body. For those, callbacks on the transports do the whole exchange: parse the
head (the same strict parser as the stream path), write it to a pooled upstream connection,
forward the answer as it arrives, with back-pressure by pausing the upstream while the client's
write buffer is full. That avoids the per-read coroutine and future machinery of StreamReader and is
about three times faster (benchmarks/proxy).

Anything else (a request body, an Upgrade, /healthz and /metrics, a route needing a database
lookup, a chunked/until-close/1xx answer, an upstream speaking bare LF) is handed to the stream
implementation in server.py by moving the transport to a StreamReaderProtocol with the bytes already
buffered; that connection then stays on the stream path.
"""

from __future__ import annotations

import asyncio
import re
import time

from cocalc_ctl.proxy import http1
from cocalc_ctl.proxy.http1 import HttpError, UpstreamProtocolError
from cocalc_ctl.proxy.routing import Route, project_from_target

_BARE_LF_OR_CR = re.compile(rb"(?<!\r)\n|\r(?=[^\n])")


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


class ClientProtocol(asyncio.Protocol):
    def __init__(self, proxy):
        self.p = proxy
        self.loop = asyncio.get_running_loop()
        self.buf = bytearray()
        self.t: asyncio.Transport | None = None
        self.busy = False
        self.eof = False
        self.detached = False
        self.write_paused = False
        self.read_paused = False
        self.head_started = False
        self.timer = None
        self.deadline: float | None = None
        self.upstream: UpstreamProtocol | None = None

    # -- transport callbacks -------------------------------------------------------------------

    def connection_made(self, transport):
        self.t = transport
        peer = transport.get_extra_info("peername")
        self.peer = peer[0] if peer else "-"
        sock = transport.get_extra_info("sockname")
        self.local_port = sock[1] if sock and len(sock) > 1 else 0
        self.p.metrics.active_connections += 1
        self.p._clients.add(transport)
        self._arm(self.p.s.header_timeout)

    def connection_lost(self, exc):
        if self.detached:
            return
        self.detached = True
        self._cancel_timer()
        self.p.metrics.active_connections -= 1
        self.p._clients.discard(self.t)
        if self.upstream is not None:
            self.upstream.client_lost()

    def eof_received(self):
        self.eof = True
        return self.busy  # keep the write side open to finish the answer in flight

    def pause_writing(self):
        self.write_paused = True
        if self.upstream is not None:
            self.upstream.t.pause_reading()

    def resume_writing(self):
        self.write_paused = False
        if self.upstream is not None:
            self.upstream.t.resume_reading()

    def data_received(self, data):
        self.buf += data
        if self.busy:
            if len(self.buf) > self.p.s.max_head_bytes and not self.read_paused:
                self.read_paused = True  # pipelined requests wait; do not buffer without bound
                self.t.pause_reading()
            return
        self._next()

    # -- requests --------------------------------------------------------------------------------

    # One timer per connection, moved lazily: arming sets a deadline, and a timer that fires before
    # it re-arms for the rest, so a keep-alive request costs no timer creation or cancellation.

    def _arm(self, seconds: float) -> None:
        self.deadline = deadline = self.loop.time() + seconds
        timer = self.timer
        if timer is not None:
            if timer.when() <= deadline:
                return
            timer.cancel()
        self.timer = self.loop.call_later(seconds, self._expired)

    def _disarm(self) -> None:
        self.deadline = None  # a pending timer finds no deadline and does nothing

    def _cancel_timer(self) -> None:
        self.deadline = None
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None

    def _expired(self) -> None:
        self.timer = None
        deadline = self.deadline
        if deadline is None or self.busy or self.detached:
            return
        remaining = deadline - self.loop.time()
        if remaining > 0:
            self.timer = self.loop.call_later(remaining, self._expired)
            return
        self.t.close()  # keep-alive idle, or a head too slow (slowloris): just close

    def _next(self) -> None:
        buf = self.buf
        if buf[:2] == b"\r\n":
            del buf[:2]  # RFC 9112 §2.2: one empty line before a request line is ignored
        if not buf:
            return
        end = buf.find(b"\r\n\r\n")
        limit = self.p.s.max_head_bytes
        if end < 0 or end + 4 > limit:
            if _BARE_LF_OR_CR.search(buf, 0, limit) is not None:
                return self._bad(HttpError(400, "bare LF or CR in message head"))
            if len(buf) >= limit:
                return self._bad(HttpError(431, "request head too large"))
            if not self.head_started:
                self.head_started = True
                if self.deadline is not None and self.deadline > self.loop.time() + self.p.s.header_timeout:
                    self._arm(self.p.s.header_timeout)
            return
        raw = bytes(buf[:end])
        del buf[:end + 4]
        # A bare LF or CR inside a complete head is refused by the line checks that follow: the request
        # line must be exactly three tokens and every field line must match the field grammar.
        lines = raw.split(b"\r\n")
        try:
            if len(lines) > self.p.s.max_headers + 1:
                raise HttpError(431, "too many header fields")
            head = http1.parse_request_head(lines)
        except HttpError as exc:
            return self._bad(exc, lines[0].split(b" ", 1)[0][:16])
        self.busy = True
        self.head_started = False
        self._disarm()
        self.p.fast_dispatch(self, head)

    def _bad(self, exc: HttpError, method: bytes = b"-") -> None:
        self.busy = True
        self._disarm()
        p = self.p
        p.metrics.requests[exc.status] += 1
        p.log.log(peer=self.peer, method=method, target=b"-", status=exc.status, bytes_out=0, seconds=0.0,
                  upstream=None, note=exc.reason)
        self.t.write(http1.simple_response(exc.status, exc.reason.encode() + b"\n", keep_alive=False))
        self.t.close()

    def reply_error(self, head, status: int, reason: str, t0: float, upstream: str | None) -> None:
        keep = head.keep_alive and status < 500 and status != 400
        self.p.metrics.requests[status] += 1
        self.p.log.log(peer=self.peer, method=head.method, target=head.target, status=status, bytes_out=0,
                       seconds=time.monotonic() - t0, upstream=upstream, note=reason)
        if not self.detached:
            self.t.write(http1.simple_response(status, reason.encode() + b"\n", keep_alive=keep,
                                               head_only=head.method == b"HEAD"))
        self.request_done(keep)

    def request_done(self, keep: bool) -> None:
        self.busy = False
        if self.detached:
            return
        if not keep or self.eof:
            self.t.close()
            return
        self._arm(self.p.s.idle_timeout)
        if self.read_paused:
            self.read_paused = False
            self.t.resume_reading()
        if self.buf:
            self._next()

    def to_streams(self):
        """Hand this connection to the stream path (returns reader, writer)."""
        self.detached = True
        self._cancel_timer()
        self.p._clients.discard(self.t)
        buffered = bytes(self.buf)
        self.buf.clear()
        return to_streams(self.t, buffered, limit=self.p.s.max_head_bytes, eof=self.eof)


class UpstreamProtocol(asyncio.Protocol):
    def __init__(self, proxy, key: tuple[str, int]):
        self.p = proxy
        self.key = key
        self.loop = asyncio.get_running_loop()
        self.t: asyncio.Transport | None = None
        self.conn: ClientProtocol | None = None
        self.closed = False
        self.timer = None

    def connection_made(self, transport):
        self.t = transport

    def start(self, conn: ClientProtocol, head, out: bytes, t0: float, reused: bool) -> None:
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
            if len(buf) > self.p.pool.limit:
                return self._fail(502, "upstream response head too large", "protocol")
            return
        raw = bytes(buf[:end])
        if raw.count(b"\n") != raw.count(b"\r\n"):
            return self._to_slow(None)  # bare LF somewhere: the lenient stream parser copes
        try:
            resp = http1.parse_response_head(raw.split(b"\r\n"))
        except UpstreamProtocolError as exc:
            return self._fail(502, f"bad upstream response: {exc}", "protocol")
        head = self.head
        no_body = head.method == b"HEAD" or resp.status in (204, 304)
        if 100 <= resp.status < 200 or (not no_body and (resp.chunked or resp.content_length is None)):
            return self._to_slow(resp, end + 4)
        self.resp = resp
        self.keep = head.keep_alive
        rest = bytes(buf[end + 4:])
        self.buf = bytearray()
        self.remaining = 0 if no_body else resp.content_length
        if len(rest) > self.remaining:
            rest = rest[:self.remaining]
            self.overflow = True
        self.remaining -= len(rest)
        self.sent = len(rest)
        conn.t.write(self.p._response_head(resp, extra=b"" if self.keep else b"connection: close\r\n") + rest)
        if self.remaining == 0:
            self._finish()

    def _finish(self) -> None:
        conn = self.conn
        self._detach()
        p = self.p
        p.metrics.requests[self.resp.status] += 1
        p.metrics.bytes_downstream += self.sent
        if p.log.enabled:
            p.log.log(peer=conn.peer, method=self.head.method, target=self.head.target, status=self.resp.status,
                      bytes_out=self.sent, seconds=time.monotonic() - self.t0, upstream=self.upstream_name)
        if self.resp.keep_alive and not self.overflow and not self.closed:
            self.t.resume_reading()
            p.fast_pool_put(self)
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
        self.p.fast_pool_discard(self)
        conn = self.conn
        if conn is None:
            return
        if self.resp is None and self.reused and not self.got_any:
            self._detach()  # a pooled connection the upstream had closed: retry once on a fresh one
            self.p.fast_connect(conn, self.head, self.out, self.key, self.t0, retry=False)
            return
        self.p.metrics.upstream_errors["reset" if self.resp is None else "body"] += 1
        self._detach()
        if self.resp is None:
            conn.reply_error(self.head, 502, "upstream closed the connection", self.t0, self.upstream_name)
        else:
            conn.t.close()

    def _to_slow(self, resp, head_len: int = 0) -> None:
        """Finish this exchange on the stream path (chunked or until-close bodies, 1xx, bare LF)."""
        conn, head = self.conn, self.head
        self._detach()
        self._cancel_timer()
        buffered = bytes(self.buf[head_len:])
        self.buf = bytearray()
        ur, uw = to_streams(self.t, buffered, limit=self.p.pool.limit)
        cr, cw = conn.to_streams()
        asyncio.ensure_future(self.p.continue_on_streams(head, resp, ur, uw, self.key, cr, cw, conn.peer,
                                                         conn.local_port, self.t0, self.upstream_name))


def route_now(routes, project_id: str):
    """A Route or HttpError if known without waiting; None if the lookup needs I/O."""
    fn = getattr(routes, "resolve_now", None)
    if fn is None:
        return None
    try:
        return fn(project_id)
    except HttpError as exc:
        return exc


__all__ = ["ClientProtocol", "UpstreamProtocol", "Route", "project_from_target", "route_now", "to_streams"]
