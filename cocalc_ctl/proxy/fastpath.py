"""The proxy's fast path: asyncio Protocols for the common exchange, streams for everything else.

Most requests through a project proxy are body-less (GET/HEAD...) and answered with a
Content-Length or no body. For those, callbacks on the transports do the whole exchange: parse the
head (policy.parse_request, the same rules as the stream path), write the head policy builds to a
pooled upstream connection (fastupstream.py), forward the answer as it arrives, with back-pressure
by pausing the upstream while the client's write buffer is full. That avoids the per-read
coroutine and future machinery of StreamReader and is about three times faster (benchmarks/proxy).

Anything else (a request body, an Upgrade, /healthz and /metrics, a chunked/until-close/100
answer, an upstream speaking bare LF) is handed to the stream relay (stream.py) by moving the
transport to a StreamReaderProtocol with the bytes already buffered; that connection then stays on
the stream path.
"""

from __future__ import annotations

import asyncio
import re
import time

from cocalc_ctl.proxy import http1, policy
from cocalc_ctl.proxy.access import Answer, Pass
from cocalc_ctl.proxy.fastupstream import fast_connect, to_streams
from cocalc_ctl.proxy.http1 import HttpError

_BARE_LF_OR_CR = re.compile(rb"(?<!\r)\n|\r(?=[^\n])")


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
        self.upstream = None  # fastupstream.UpstreamProtocol of the exchange in flight
        # The last request head seen on this connection, parsed, and the head sent upstream for it: a
        # keep-alive client repeating a request byte for byte (polling) is neither re-parsed nor re-built.
        # Both are pure functions of the bytes and of this connection's constants (peer, port, trust).
        self.last_raw: bytes | None = None
        self.last_head = None
        self.last_out: bytes | None = None
        self.last_decision = None  # the access decision last_out was built for
        self.last_presented = None  # (head, access.Presented): the credentials of last_head, read once

    # -- transport callbacks -------------------------------------------------------------------

    def connection_made(self, transport):
        self.t = transport
        peer = transport.get_extra_info("peername")
        self.peer = peer[0] if peer else "-"
        sock = transport.get_extra_info("sockname")
        self.local_port = sock[1] if sock and len(sock) > 1 else 0
        self.peer_b = self.peer.encode()
        self.port_b = str(self.local_port).encode()
        self.trusted, self.max_bytes, self.max_fields = self.p.limits(self.peer)
        self.p.metrics.active_connections += 1
        self.p.clients.add(transport)
        self._arm(self.p.s.header_timeout)

    def connection_lost(self, exc):
        if self.detached:
            return
        self.detached = True
        self._cancel_timer()
        self.p.metrics.active_connections -= 1
        self.p.clients.discard(self.t)
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
            if len(self.buf) > self.max_bytes and not self.read_paused:
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
        limit = self.max_bytes
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
        if raw == self.last_raw:
            head = self.last_head  # the same bytes as the last request: the same parse
        else:
            # A bare LF or CR inside a complete head is refused by the line checks that follow: the request
            # line must be exactly three tokens and every field line must match the field grammar.
            lines = raw.split(b"\r\n")
            try:
                if len(lines) > self.max_fields + 1:
                    raise HttpError(431, "too many header fields")
                head = policy.parse_request(lines)
            except HttpError as exc:
                return self._bad(exc, lines[0].split(b" ", 1)[0][:16])
            self.last_raw = raw
            self.last_head = head
            self.last_out = None
        self.busy = True
        self.head_started = False
        self._disarm()
        self._dispatch(head)

    def _dispatch(self, head) -> None:
        t0 = time.monotonic()
        p = self.p
        if head.chunked or head.content_length or head.upgrade is not None or p.addr.local(head):
            return self._to_stream_path(head)
        try:
            # the hub credential before anything else (host mode), then which project (routing.Addressing)
            account, project_id = p.addressed(head)
        except HttpError as exc:
            return self.reply_error(head, exc.status, exc.reason, t0, None)
        verdict = None
        access = p.access
        if access is not None:  # before routing: a refused client learns nothing about the project
            lp = self.last_presented
            if lp is not None and lp[0] is head:
                presented = lp[1]
            else:
                presented = access.present_for(head, self.trusted)
                if head is self.last_head:
                    self.last_presented = (head, presented)
            verdict = access.check_now(head, project_id, self.trusted, presented, self.peer)
            if verdict is None:  # needs a database lookup (or a login): do it, then carry on here
                asyncio.ensure_future(self._after_lookup(head, project_id, t0, None, account, True, presented))
                return
            if verdict.__class__ is not Pass:
                return self.reply_answer(head, verdict, t0)
        route = route_now(p.routes, project_id)
        key = None
        if route is not None and p.signer is not None and not isinstance(route, HttpError):
            try:
                key = p.signer.key_now(route.host_id)
            except KeyError:
                route = None  # the host's signing key needs a database lookup
        if route is None:  # needs a database lookup: do it, then carry on here
            asyncio.ensure_future(self._after_lookup(head, project_id, t0, verdict, account))
            return
        self._routed(head, route, project_id, t0, verdict, account, key)

    async def _after_lookup(self, head, project_id: str, t0: float, verdict, account: bytes = b"",
                            check: bool = False, presented=None) -> None:
        if check:
            try:
                verdict = await self.p.access.check(head, project_id, self.peer, self.trusted, presented)
            except Exception as exc:  # noqa: BLE001 - never forward on a failed check
                verdict = Answer(503, f"access check failed: {type(exc).__name__}")
            if verdict.__class__ is not Pass:
                if not self.detached:
                    self.reply_answer(head, verdict, t0)
                return
        key = None
        try:
            route = await self.p.routes.resolve(project_id)
            if self.p.signer is not None:
                key = await self.p.signer.key(route.host_id)
        except HttpError as exc:
            route = exc
        except Exception as exc:  # never leave the client waiting on a failed lookup
            route = HttpError(503, f"route lookup failed: {type(exc).__name__}")
        if not self.detached:
            self._routed(head, route, project_id, t0, verdict, account, key)

    def _routed(self, head, route, project_id: str, t0: float, verdict=None, account: bytes = b"",
                key=None) -> None:
        p = self.p
        if isinstance(route, HttpError):
            if route.status >= 500:
                p.metrics.upstream_errors["not_running" if route.status == 502 else "route_lookup"] += 1
            return self.reply_error(head, route.status, route.reason, t0, None)
        out = self.last_out
        decision = None if verdict is None else verdict.decision
        if (p.signer is not None  # hub credentials: a fresh one per request, nothing to reuse
                or out is None or head is not self.last_head or decision is not self.last_decision):
            # host mode: the verified account line is a function of the head, so reusable with it
            out = p.upstream_head(head, route, verdict, account, key, self.peer_b, self.port_b, self.trusted,
                                  project_id)
            if head is self.last_head and p.signer is None:
                self.last_out = out
                self.last_decision = decision
        key = p.pool_key(route, project_id)
        up = p.fast_pool.take(key)
        if up is not None:
            up.start(self, head, out, t0, reused=True)
        else:
            fast_connect(p, self, head, out, key, t0)

    def _to_stream_path(self, head) -> None:
        reader, writer = self.to_streams()
        asyncio.ensure_future(self.p.handle(reader, writer, pending=head, counted=True))

    def _bad(self, exc: HttpError, method: bytes = b"-") -> None:
        self.busy = True
        self._disarm()
        p = self.p
        p.metrics.requests[exc.status] += 1
        body = exc.reason.encode() + b"\n"
        p.log.log(peer=self.peer, method=method, target=b"-", status=exc.status, bytes_out=len(body), seconds=0.0,
                  upstream=None, note=exc.reason)
        self.t.write(http1.simple_response(exc.status, body, keep_alive=False))
        self.t.close()

    def reply_error(self, head, status: int, reason: str, t0: float, upstream: str | None) -> None:
        keep = head.keep_alive and status < 500 and status != 400
        self.p.metrics.requests[status] += 1
        self.p.metrics.fast_path += 1
        body = reason.encode() + b"\n"
        head_only = head.method == b"HEAD"
        self.p.log.log(peer=self.peer, method=head.method, target=head.target, status=status,
                       bytes_out=0 if head_only or self.detached else len(body),
                       seconds=time.monotonic() - t0, upstream=upstream, note=reason)
        if not self.detached:
            self.t.write(http1.simple_response(status, body, keep_alive=keep, head_only=head_only))
        self.request_done(keep)

    def reply_answer(self, head, answer, t0: float) -> None:
        """A local answer of access control (401, 403, the login's 303...)."""
        keep = head.keep_alive and answer.status < 500 and answer.status != 400
        self.p.metrics.requests[answer.status] += 1
        self.p.metrics.fast_path += 1
        head_only = head.method == b"HEAD"
        self.p.log.log(peer=self.peer, method=head.method, target=head.target, status=answer.status,
                       bytes_out=0 if head_only or self.detached else len(answer.body),
                       seconds=time.monotonic() - t0, upstream=None, note=answer.note)
        if not self.detached:
            self.t.write(answer.response(keep, head_only))
        self.request_done(keep)

    def request_done(self, keep: bool) -> None:
        self.busy = False
        if self.detached:
            return
        if not keep or self.eof or self.p.draining:
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
        self.p.clients.discard(self.t)
        buffered = bytes(self.buf)
        self.buf.clear()
        return to_streams(self.t, buffered, limit=self.p.read_limit, eof=self.eof)


def route_now(routes, project_id: str):
    """A Route or HttpError if known without waiting; None if the lookup needs I/O."""
    fn = getattr(routes, "resolve_now", None)
    if fn is None:
        return None
    try:
        return fn(project_id)
    except HttpError as exc:
        return exc
