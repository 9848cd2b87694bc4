"""The asyncio HTTP/1.1 + WebSocket reverse proxy behind `proxy serve`.

One coroutine per client connection reads request heads strictly (http1.py), asks the route table
(routing.py) for the upstream, and relays the message with keep-alive on both sides: upstream
connections go back to a small per-target pool after a complete exchange. Bodies stream in 64 KiB
pieces with `drain()` after each write (back-pressure both ways). An `Upgrade` request gets its own
upstream connection and, on 101, becomes a byte tunnel that honours half-close.

Every failure has a bounded answer: no route 404, not running / refused / garbled upstream 502,
upstream silent past its timeout 504, a client too slow with its head is dropped after
`header_timeout`. Once a response head has gone out, a failure can only close the connection.
"""

from __future__ import annotations

import asyncio
import signal
import time
from collections import deque
from dataclasses import dataclass

from cocalc_ctl.proxy import http1
from cocalc_ctl.proxy.http1 import Counter, HttpError, PeerClosed, UpstreamProtocolError
from cocalc_ctl.proxy.metrics import AccessLog, Metrics
from cocalc_ctl.proxy.routing import Route, project_from_target


@dataclass
class Settings:
    connect_timeout: float = 5.0      # TCP connect to an upstream
    upstream_timeout: float = 60.0    # upstream silent (no response head, or no body bytes) -> 504 / close
    idle_timeout: float = 60.0        # client keep-alive idle, and client body bytes stalled
    header_timeout: float = 10.0      # a client's request head must arrive within this (slowloris)
    websocket_idle_timeout: float = 3600.0  # a tunnel with no bytes either way is closed
    max_head_bytes: int = 32768
    max_headers: int = 100
    trust_forwarded: bool = False     # keep X-Forwarded-Proto/-Host/-Port from the peer (a trusted proxy)
    scheme: str = "http"
    metrics: bool = True
    pool_max_idle: int = 64           # idle upstream connections kept per target
    pool_idle_ttl: float = 30.0
    fast_path: bool = True            # Protocol fast path for body-less requests (fastpath.py)


class ClientGone(Exception):
    """Writing to the client failed."""


class UpstreamGone(Exception):
    """Writing to the upstream failed."""


class _Side:
    """A StreamWriter whose drain failure names the side it belongs to."""
    __slots__ = ("w", "exc")

    def __init__(self, writer: asyncio.StreamWriter, exc: type[Exception]):
        self.w = writer
        self.exc = exc

    def write(self, data: bytes) -> None:
        self.w.write(data)

    async def drain(self) -> None:
        try:
            await self.w.drain()
        except (ConnectionError, OSError, RuntimeError) as e:
            raise self.exc(str(e)) from None


class _ClientBodyError(Exception):
    """Reading the request body from the client failed (args[0] is the cause)."""


def _connect_failure(exc: OSError) -> str:
    if isinstance(exc, ConnectionRefusedError):
        return "upstream refused the connection"
    return f"cannot connect to the upstream: {exc.strerror or type(exc).__name__}"


def _cancel(task) -> None:
    if task is not None and not task.done():
        task.cancel()


class UpstreamPool:
    """Idle keep-alive connections per (host, port), newest first; stale ones are dropped."""

    def __init__(self, max_idle: int, idle_ttl: float, limit: int):
        self.max_idle = max_idle
        self.idle_ttl = idle_ttl
        self.limit = limit
        self._idle: dict[tuple[str, int], deque] = {}

    async def open(self, key: tuple[str, int], timeout: float):
        async with asyncio.timeout(timeout):
            return await asyncio.open_connection(key[0], key[1], limit=self.limit)

    async def acquire(self, key: tuple[str, int], timeout: float):
        dq = self._idle.get(key)
        while dq:
            reader, writer, _ = dq.pop()
            if writer.is_closing() or reader.at_eof():
                writer.close()
                continue
            return reader, writer, True
        reader, writer = await self.open(key, timeout)
        return reader, writer, False

    def release(self, key: tuple[str, int], reader, writer) -> None:
        dq = self._idle.setdefault(key, deque())
        if len(dq) >= self.max_idle or writer.is_closing():
            writer.close()
            return
        dq.append((reader, writer, time.monotonic()))

    def sweep(self) -> None:
        cutoff = time.monotonic() - self.idle_ttl
        for key, dq in list(self._idle.items()):
            while dq and (dq[0][2] < cutoff or dq[0][1].is_closing()):
                dq.popleft()[1].close()
            if not dq:
                del self._idle[key]

    def idle_count(self) -> int:
        return sum(len(dq) for dq in self._idle.values())

    def close(self) -> None:
        for dq in self._idle.values():
            for _, writer, _ in dq:
                writer.close()
        self._idle.clear()


_FORWARDED = frozenset({b"x-forwarded-for", b"x-forwarded-proto", b"x-forwarded-host", b"x-forwarded-port"})


class Proxy:
    def __init__(self, routes, settings: Settings, access_log: AccessLog):
        self.routes = routes
        self.s = settings
        self.log = access_log
        self.metrics = Metrics()
        self.pool = UpstreamPool(settings.pool_max_idle, settings.pool_idle_ttl, max(65536, settings.max_head_bytes))
        self._clients: set = set()  # StreamWriters and transports, closed on shutdown
        self._fast_pool: dict[tuple[str, int], list] = {}
        self.tunnels: set = set()

    # -- fast path glue (fastpath.py) ------------------------------------------------------------

    def fast_dispatch(self, conn, head) -> None:
        from cocalc_ctl.proxy.fastpath import route_now

        t0 = time.monotonic()
        if head.chunked or head.content_length or head.upgrade is not None or head.target in (b"/healthz", b"/metrics"):
            return self._to_stream_path(conn, head)
        try:
            project_id = project_from_target(head.target)
        except HttpError as exc:
            return conn.reply_error(head, exc.status, exc.reason, t0, None)
        route = route_now(self.routes, project_id)
        if route is None:  # needs a database lookup: do it, then carry on here
            asyncio.ensure_future(self._fast_after_lookup(conn, head, project_id, t0))
            return
        self._fast_routed(conn, head, route, t0)

    async def _fast_after_lookup(self, conn, head, project_id: str, t0: float) -> None:
        try:
            route = await self.routes.resolve(project_id)
        except HttpError as exc:
            route = exc
        except Exception as exc:  # never leave the client waiting on a failed lookup
            route = HttpError(503, f"route lookup failed: {type(exc).__name__}")
        if not conn.detached:
            self._fast_routed(conn, head, route, t0)

    def _fast_routed(self, conn, head, route, t0: float) -> None:
        if isinstance(route, HttpError):
            if route.status >= 500:
                self.metrics.upstream_errors["not_running" if route.status == 502 else "route_lookup"] += 1
            return conn.reply_error(head, route.status, route.reason, t0, None)
        out = bytes(self._upstream_head(head, conn.peer, conn.local_port))
        key = (route.host, route.port)
        up = self._fast_pool_take(key)
        if up is not None:
            up.start(conn, head, out, t0, reused=True)
        else:
            self.fast_connect(conn, head, out, key, t0, retry=True)

    def _to_stream_path(self, conn, head) -> None:
        reader, writer = conn.to_streams()
        asyncio.ensure_future(self.handle(reader, writer, pending=head, counted=True))

    def fast_connect(self, conn, head, out: bytes, key, t0: float, *, retry: bool) -> None:
        from cocalc_ctl.proxy.fastpath import UpstreamProtocol

        async def connect():
            loop = asyncio.get_running_loop()
            upstream = f"{key[0]}:{key[1]}"
            try:
                async with asyncio.timeout(self.s.connect_timeout):
                    _, up = await loop.create_connection(lambda: UpstreamProtocol(self, key), key[0], key[1])
            except TimeoutError:
                self.metrics.upstream_errors["connect_timeout"] += 1
                return conn.reply_error(head, 504, "upstream connect timed out", t0, upstream)
            except OSError as exc:
                self.metrics.upstream_errors["refused"] += 1
                return conn.reply_error(head, 502, _connect_failure(exc), t0, upstream)
            if conn.detached:
                up.t.close()
                return
            up.start(conn, head, out, t0, reused=False)

        asyncio.ensure_future(connect())

    def _fast_pool_take(self, key):
        lst = self._fast_pool.get(key)
        while lst:
            up = lst.pop()
            if not up.closed and not up.t.is_closing():
                return up
        return None

    def fast_pool_put(self, up) -> None:
        lst = self._fast_pool.setdefault(up.key, [])
        if len(lst) >= self.s.pool_max_idle:
            up.t.close()
            return
        up.idle_since = time.monotonic()
        lst.append(up)

    def fast_pool_discard(self, up) -> None:
        lst = self._fast_pool.get(up.key)
        if lst and up in lst:
            lst.remove(up)

    def sweep_fast_pool(self) -> None:
        cutoff = time.monotonic() - self.s.pool_idle_ttl
        for key, lst in list(self._fast_pool.items()):
            for up in [u for u in lst if u.idle_since < cutoff]:
                lst.remove(up)
                up.t.close()
            if not lst:
                del self._fast_pool[key]

    async def continue_on_streams(self, head, resp, ur, uw, key, cr, cw, peer, local_port, t0, upstream) -> None:
        """Finish a fast-path exchange whose answer needs the stream relay, then serve on streams."""
        client = _Side(cw, ClientGone)
        keep = False
        try:
            if resp is not None and 100 <= resp.status < 200 and resp.status != 101:
                if head.version == 11:
                    client.write(self._response_head(resp, extra=b""))
                    await client.drain()
                resp = None
            if resp is None:
                resp = await self._read_response(ur, client, head, self.s.upstream_timeout)
        except TimeoutError:
            uw.close()
            self.metrics.upstream_errors["timeout"] += 1
            keep = await self._error(cw, head, 504, "upstream timed out", peer, t0, upstream, False)
        except ClientGone:
            uw.close()
        except (PeerClosed, ConnectionError, OSError, UpstreamProtocolError, HttpError) as exc:
            uw.close()
            self.metrics.upstream_errors["protocol"] += 1
            keep = await self._error(cw, head, 502, f"bad upstream response: {exc}", peer, t0, upstream, False)
        else:
            keep = await self._relay_response(head, resp, ur, uw, key, client, peer, t0, upstream)
        if keep:
            await self.handle(cr, cw, counted=True)
        else:
            self.metrics.active_connections -= 1
            cw.close()

    # -- client connections ----------------------------------------------------------------

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, *, pending=None,
                     counted: bool = False) -> None:
        """Serve a client connection on streams; `pending` is a request head the fast path already read."""
        if not counted:
            self.metrics.active_connections += 1
        self._clients.add(writer)
        peer = writer.get_extra_info("peername")
        peer_ip = peer[0] if peer else "-"
        sock = writer.get_extra_info("sockname")
        local_port = sock[1] if sock and len(sock) > 1 else 0
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.s.header_timeout
        detached = False  # an upgraded connection is handed to a Tunnel and must stay open
        try:
            if pending is not None:
                keep = await self.handle_request(pending, reader, writer, peer_ip, local_port)
                if keep is None:
                    detached = True
                    return
                if not keep:
                    if pending.chunked or pending.content_length:
                        await self._linger(reader, writer)
                    return
                deadline = loop.time() + self.s.idle_timeout
            while True:
                try:
                    async with asyncio.timeout_at(deadline) as cm:
                        lines = await http1.read_head_lines(
                            reader, max_bytes=self.s.max_head_bytes, max_lines=self.s.max_headers + 1,
                            on_first_line=lambda: cm.reschedule(
                                min(cm.when(), loop.time() + self.s.header_timeout)))
                except TimeoutError:
                    break
                except HttpError as exc:
                    await self._reply_bad(writer, exc, peer_ip, b"-", b"-")
                    break
                if lines is None:
                    break
                try:
                    head = http1.parse_request_head(lines)
                except HttpError as exc:
                    await self._reply_bad(writer, exc, peer_ip, lines[0].split(b" ", 1)[0][:16], b"-")
                    break
                keep = await self.handle_request(head, reader, writer, peer_ip, local_port)
                if keep is None:
                    detached = True
                    break
                if not keep:
                    if head.chunked or head.content_length:
                        await self._linger(reader, writer)
                    break
                deadline = loop.time() + self.s.idle_timeout
        except (PeerClosed, ClientGone, ConnectionError, OSError):
            pass
        finally:
            self._clients.discard(writer)
            self.metrics.active_connections -= 1
            if not detached:
                writer.close()

    @staticmethod
    async def _linger(reader, writer, seconds: float = 2.0, max_bytes: int = 64 << 20) -> None:
        """Lingering close (RFC 9112 §9.6): after answering without reading the whole body, send FIN and
        discard what the client still sends for a moment, so our answer is not destroyed by a RST."""
        try:
            await writer.drain()
            if writer.can_write_eof():
                writer.write_eof()
            async with asyncio.timeout(seconds):
                while max_bytes > 0:
                    data = await reader.read(65536)
                    if not data:
                        break
                    max_bytes -= len(data)
        except (TimeoutError, ConnectionError, OSError, RuntimeError):
            pass

    async def _reply_bad(self, writer, exc: HttpError, peer: str, method: bytes, target: bytes) -> None:
        self.metrics.requests[exc.status] += 1
        self.log.log(peer=peer, method=method, target=target, status=exc.status, bytes_out=0, seconds=0.0,
                     upstream=None, note=exc.reason)
        try:
            writer.write(http1.simple_response(exc.status, exc.reason.encode() + b"\n", keep_alive=False))
            await asyncio.wait_for(writer.drain(), 5)
        except (ConnectionError, OSError, TimeoutError, RuntimeError):
            pass

    # -- one request -------------------------------------------------------------------------

    async def handle_request(self, head, reader, writer, peer: str, local_port: int) -> bool | None:
        """Serve one request; return whether the client connection may carry another (None: it became
        a tunnel and is no longer ours)."""
        t0 = time.monotonic()
        target = head.target
        has_body = head.chunked or bool(head.content_length)
        if target == b"/healthz" or target == b"/metrics":
            return await self._local(head, writer, peer, has_body, t0)
        try:
            project_id = project_from_target(target)
            route = await self.routes.resolve(project_id)
        except HttpError as exc:
            if exc.status >= 500:
                self.metrics.upstream_errors["not_running" if exc.status == 502 else "route_lookup"] += 1
            return await self._error(writer, head, exc.status, exc.reason, peer, t0, None, has_body)
        upstream = f"{route.host}:{route.port}"
        out = self._upstream_head(head, peer, local_port)
        if head.upgrade is not None:
            return await self._tunnel(head, out, route, reader, writer, peer, t0, upstream)
        return await self._exchange(head, out, route, reader, writer, peer, t0, upstream, has_body)

    async def _local(self, head, writer, peer, has_body, t0) -> bool:
        if head.target == b"/healthz":
            status, body, ctype = 200, b"ok\n", b"text/plain; charset=utf-8"
        elif self.s.metrics:
            status, body, ctype = 200, self.metrics.render(self._extra_metrics()), b"text/plain; version=0.0.4"
        else:
            return await self._error(writer, head, 404, "metrics are disabled", peer, t0, None, has_body)
        keep = head.keep_alive and not has_body
        writer.write(http1.simple_response(status, body, keep_alive=keep, content_type=ctype,
                                           head_only=head.method == b"HEAD"))
        await _Side(writer, ClientGone).drain()
        self.metrics.requests[status] += 1
        self.log.log(peer=peer, method=head.method, target=head.target, status=status, bytes_out=len(body),
                     seconds=time.monotonic() - t0, upstream=None)
        return keep

    def _extra_metrics(self) -> dict:
        idle = self.pool.idle_count() + sum(len(lst) for lst in self._fast_pool.values())
        extra = {"cocalc_proxy_upstream_idle_connections": ("gauge", "Idle pooled upstream connections.", idle)}
        if hasattr(self.routes, "notifications"):
            extra["cocalc_proxy_route_notifications_total"] = (
                "counter", "Route NOTIFY messages received from the hub.", self.routes.notifications)
            extra["cocalc_proxy_route_db_errors_total"] = (
                "counter", "Hub database errors while resolving routes.", self.routes.db_errors)
        return extra

    async def _error(self, writer, head, status: int, reason: str, peer, t0, upstream, has_body) -> bool:
        # A request body we did not read would be parsed as the next request: close instead.
        keep = head.keep_alive and not has_body and status < 500 and status != 400
        writer.write(http1.simple_response(status, reason.encode() + b"\n", keep_alive=keep,
                                           head_only=head.method == b"HEAD"))
        try:
            await _Side(writer, ClientGone).drain()
        except ClientGone:
            keep = False
        self.metrics.requests[status] += 1
        self.log.log(peer=peer, method=head.method, target=head.target, status=status, bytes_out=0,
                     seconds=time.monotonic() - t0, upstream=upstream, note=reason)
        return keep

    def _upstream_head(self, head, peer: str, local_port: int) -> bytearray:
        tokens = http1.connection_tokens(head.headers)
        out = bytearray(b"%s %s HTTP/1.1\r\n" % (head.method, head.target))
        xff = proto = fhost = fport = None
        for lname, name, value in http1.end_to_end(head.headers, tokens):
            if lname in _FORWARDED:
                if lname == b"x-forwarded-for":
                    xff = value if xff is None else xff + b", " + value
                elif self.s.trust_forwarded:
                    if lname == b"x-forwarded-proto":
                        proto = value
                    elif lname == b"x-forwarded-host":
                        fhost = value
                    else:
                        fport = value
                continue
            out += b"%s: %s\r\n" % (name, value)
        peer_b = peer.encode()
        out += b"x-forwarded-for: %s\r\n" % ((xff + b", " + peer_b) if xff else peer_b)
        out += b"x-forwarded-proto: %s\r\n" % (proto or self.s.scheme.encode())
        out += b"x-forwarded-host: %s\r\n" % (fhost or head.host)
        out += b"x-forwarded-port: %s\r\n" % (fport or str(local_port).encode())
        if head.chunked:
            out += b"transfer-encoding: chunked\r\n"
        if head.upgrade is not None:
            out += b"connection: upgrade\r\nupgrade: %s\r\n" % head.upgrade
        out += b"\r\n"
        return out

    async def _read_response(self, ur, client: _Side, head, timeout: float | None):
        """The final response head; 1xx interim responses are passed on to the client."""
        while True:
            async with asyncio.timeout(timeout):
                lines = await http1.read_head_lines(ur, max_bytes=self.pool.limit, max_lines=200, strict=False)
            if lines is None:
                raise PeerClosed("upstream closed without a response")
            resp = http1.parse_response_head(lines)
            if 100 <= resp.status < 200 and resp.status != 101:
                if head.version == 11:
                    client.write(self._response_head(resp, extra=b""))
                    await client.drain()
                continue
            return resp

    @staticmethod
    def _response_head(resp, *, extra: bytes, drop_length: bool = False) -> bytes:
        out = bytearray(b"HTTP/1.1 %d %s\r\n" % (resp.status, resp.reason or b"-"))
        for lname, name, value in http1.end_to_end(resp.headers, resp.connection_tokens):
            if drop_length and lname == b"content-length":
                continue
            out += b"%s: %s\r\n" % (name, value)
        out += extra
        out += b"\r\n"
        return bytes(out)

    async def _send_body(self, reader, up: _Side, head, counter: Counter) -> None:
        if head.chunked:
            await http1.relay_chunked(reader, up, timeout=self.s.idle_timeout, counter=counter)
        else:
            await http1.relay_fixed(reader, up, head.content_length, timeout=self.s.idle_timeout, counter=counter)

    async def _exchange(self, head, out, route: Route, reader, writer, peer, t0, upstream, has_body) -> bool:
        key = (route.host, route.port)
        client = _Side(writer, ClientGone)
        for attempt in (0, 1):
            try:
                ur, uw, reused = await self.pool.acquire(key, self.s.connect_timeout)
            except TimeoutError:
                self.metrics.upstream_errors["connect_timeout"] += 1
                return await self._error(writer, head, 504, "upstream connect timed out", peer, t0, upstream, has_body)
            except OSError as exc:
                self.metrics.upstream_errors["refused"] += 1
                return await self._error(writer, head, 502, _connect_failure(exc), peer, t0, upstream,
                                         has_body)
            up = _Side(uw, UpstreamGone)
            up.write(out)
            body_task = None
            sent = Counter()
            try:
                if not has_body:
                    resp = await self._read_response(ur, client, head, self.s.upstream_timeout)
                else:
                    body_task = asyncio.create_task(self._send_body(reader, up, head, sent))
                    resp = await self._response_while_sending(ur, client, head, body_task)
                break
            except ClientGone:
                uw.close()
                return False
            except _ClientBodyError as err:
                uw.close()
                exc = err.args[0]
                if isinstance(exc, HttpError):  # malformed body: the upstream got a truncated one, we close it
                    await self._error(writer, head, exc.status, exc.reason, peer, t0, upstream, True)
                    return False
                self._done(head, 499, Counter(), peer, t0, upstream, f"client body: {exc or type(exc).__name__}")
                return False
            except TimeoutError:
                uw.close()
                _cancel(body_task)
                self.metrics.upstream_errors["timeout"] += 1
                return await self._error(writer, head, 504, "upstream timed out", peer, t0, upstream, has_body)
            except (PeerClosed, UpstreamGone, ConnectionError, OSError) as exc:
                uw.close()
                if body_task is None and reused and attempt == 0:
                    continue  # a pooled connection the upstream had already closed: retry once, fresh
                _cancel(body_task)
                self.metrics.upstream_errors["reset"] += 1
                return await self._error(writer, head, 502, f"upstream closed the connection ({exc})",
                                         peer, t0, upstream, has_body)
            except UpstreamProtocolError as exc:
                uw.close()
                _cancel(body_task)
                self.metrics.upstream_errors["protocol"] += 1
                return await self._error(writer, head, 502, f"bad upstream response: {exc}", peer, t0, upstream,
                                         has_body)
        return await self._relay_response(head, resp, ur, uw, key, client, peer, t0, upstream,
                                          body_task=body_task, sent=sent)

    async def _response_while_sending(self, ur, client, head, body_task):
        """Stream the request body while watching for the response: an upstream may answer early, or
        (an echo) answer while it still reads, and must not be deadlocked by us finishing the upload first."""
        head_task = asyncio.create_task(self._read_response(ur, client, head, None))
        try:
            await asyncio.wait({body_task, head_task}, return_when=asyncio.FIRST_COMPLETED)
            if head_task.done():
                return head_task.result()
            exc = body_task.exception()
            if exc is None:
                timeout = self.s.upstream_timeout
            elif isinstance(exc, UpstreamGone):
                timeout = 5.0  # the upstream stopped reading; it may have answered (413...)
            else:
                raise _ClientBodyError(exc)
            async with asyncio.timeout(timeout):
                return await head_task
        finally:
            _cancel(head_task)

    async def _relay_response(self, head, resp, ur, uw, key, client: _Side, peer, t0, upstream, *,
                              body_task=None, sent: Counter | None = None) -> bool:
        no_body = head.method == b"HEAD" or resp.status in (204, 304) or 100 <= resp.status < 200
        keep = head.keep_alive
        reusable = resp.keep_alive
        counter = Counter()
        until_close = not no_body and not resp.chunked and resp.content_length is None
        chunked_out = (resp.chunked or until_close) and head.version == 11 and not no_body
        if until_close:
            reusable = False
        if (until_close or resp.chunked) and head.version != 11:
            keep = False  # an HTTP/1.0 client gets the body raw, delimited by close
        if body_task is not None and body_task.done() and body_task.exception() is not None:
            keep = reusable = False  # the request body was not fully relayed
        extra = b""
        if chunked_out:
            extra += b"transfer-encoding: chunked\r\n"
        if not keep:
            extra += b"connection: close\r\n"
        head_bytes = self._response_head(resp, extra=extra, drop_length=resp.chunked or until_close)
        fixed = not no_body and not resp.chunked and not until_close
        if not fixed:
            client.write(head_bytes)
        try:
            if fixed:
                await http1.relay_fixed(ur, client, resp.content_length, timeout=self.s.upstream_timeout,
                                        counter=counter, prefix=head_bytes)
            elif no_body:
                await client.drain()
            elif resp.chunked:
                await http1.relay_chunked(ur, client, timeout=self.s.upstream_timeout, counter=counter,
                                          strict=False, chunked_out=chunked_out)
            else:
                await http1.relay_until_close(ur, client, timeout=self.s.upstream_timeout,
                                              chunked_out=chunked_out, counter=counter)
        except ClientGone:
            uw.close()
            _cancel(body_task)
            self._done(head, resp.status, counter, peer, t0, upstream, "client went away")
            return False
        except (PeerClosed, TimeoutError, HttpError, ConnectionError, OSError) as exc:
            uw.close()
            _cancel(body_task)
            self.metrics.upstream_errors["body"] += 1
            self._done(head, resp.status, counter, peer, t0, upstream, f"upstream body: {exc or type(exc).__name__}")
            return False
        if body_task is not None:
            if not body_task.done():
                # a complete response before the whole upload: give the last writes a moment, else close
                await asyncio.wait({body_task}, timeout=1.0)
            if not body_task.done() or body_task.cancelled() or body_task.exception() is not None:
                _cancel(body_task)
                keep = reusable = False
            if sent is not None:
                self.metrics.bytes_upstream += sent.n
        if reusable:
            self.pool.release(key, ur, uw)
        else:
            uw.close()
        self._done(head, resp.status, counter, peer, t0, upstream, None)
        return keep

    def _done(self, head, status, counter, peer, t0, upstream, note) -> None:
        self.metrics.requests[status] += 1
        self.metrics.bytes_downstream += counter.n
        self.log.log(peer=peer, method=head.method, target=head.target, status=status, bytes_out=counter.n,
                     seconds=time.monotonic() - t0, upstream=upstream, note=note)

    # -- upgrades -------------------------------------------------------------------------------

    async def _tunnel(self, head, out, route: Route, reader, writer, peer, t0, upstream) -> bool | None:
        key = (route.host, route.port)
        has_body = head.chunked or bool(head.content_length)
        if has_body:
            return await self._error(writer, head, 400, "upgrade request with a body", peer, t0, upstream, True)
        try:
            ur, uw = await self.pool.open(key, self.s.connect_timeout)
        except TimeoutError:
            self.metrics.upstream_errors["connect_timeout"] += 1
            return await self._error(writer, head, 504, "upstream connect timed out", peer, t0, upstream, False)
        except OSError as exc:
            self.metrics.upstream_errors["refused"] += 1
            return await self._error(writer, head, 502, _connect_failure(exc), peer, t0, upstream, False)
        client = _Side(writer, ClientGone)
        uw.write(out)
        try:
            resp = await self._read_response(ur, client, head, self.s.upstream_timeout)
        except TimeoutError:
            uw.close()
            self.metrics.upstream_errors["timeout"] += 1
            return await self._error(writer, head, 504, "upstream timed out", peer, t0, upstream, False)
        except (PeerClosed, ConnectionError, OSError, UpstreamProtocolError) as exc:
            uw.close()
            self.metrics.upstream_errors["reset"] += 1
            return await self._error(writer, head, 502, f"upstream failed the upgrade ({exc})", peer, t0, upstream,
                                     False)
        if resp.status != 101:
            head.keep_alive = False
            return await self._relay_response(head, resp, ur, uw, key, client, peer, t0, upstream)
        upgrade = next((v for n, _, v in resp.headers if n == b"upgrade"), head.upgrade)
        writer.write(self._response_head(resp, extra=b"connection: upgrade\r\nupgrade: %s\r\n" % upgrade))
        self.metrics.requests[101] += 1
        self.metrics.active_websockets += 1
        self.metrics.websockets_total += 1
        try:
            await client.drain()
        except ClientGone:
            self.metrics.active_websockets -= 1
            uw.close()
            return False
        from cocalc_ctl.proxy.tunnel import Tunnel

        Tunnel(self, peer=peer, head=head, t0=t0, upstream=upstream).start(reader, writer, ur, uw)
        return None  # the connection now belongs to the tunnel

    # -- lifecycle ----------------------------------------------------------------------------

    def close_clients(self) -> None:
        for tunnel in list(self.tunnels):
            tunnel.close()
        for w in list(self._clients):
            w.close()
        self.pool.close()
        for lst in self._fast_pool.values():
            for up in lst:
                up.t.close()
        self._fast_pool.clear()


async def serve(routes, settings: Settings, host: str, port: int, access_log: AccessLog,
                ready=None, stop: asyncio.Event | None = None) -> None:
    """Run until SIGTERM/SIGINT (or `stop` is set); `ready(host, port)` is called once listening."""
    await routes.start()
    proxy = Proxy(routes, settings, access_log)
    if settings.fast_path:
        from cocalc_ctl.proxy.fastpath import ClientProtocol

        server = await asyncio.get_running_loop().create_server(lambda: ClientProtocol(proxy), host, port,
                                                                backlog=1024, reuse_address=True)
    else:
        server = await asyncio.start_server(proxy.handle, host, port, limit=settings.max_head_bytes,
                                            backlog=1024, reuse_address=True)
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        try:
            loop.add_signal_handler(sig, stop.set)
        except (NotImplementedError, RuntimeError):
            pass
    bound = server.sockets[0].getsockname()
    if ready is not None:
        ready(bound[0], bound[1])

    async def sweeper():
        while True:
            await asyncio.sleep(5)
            proxy.pool.sweep()
            proxy.sweep_fast_pool()
            now = loop.time()
            for tunnel in list(proxy.tunnels):
                tunnel.expire_if_idle(now, settings.websocket_idle_timeout)

    sweep_task = asyncio.create_task(sweeper())
    try:
        await stop.wait()
    finally:
        sweep_task.cancel()
        server.close()
        proxy.close_clients()
        await routes.close()


def run(routes, settings: Settings, host: str, port: int, access_log: AccessLog, ready=None,
        event_loop: str = "auto") -> str:
    """Blocking entry point on uvloop (when installed, or asked for) or asyncio; returns which."""
    uvloop = None
    if event_loop in ("auto", "uvloop"):
        try:
            import uvloop
        except ImportError:
            if event_loop == "uvloop":
                from cocalc_ctl.errors import PreconditionFailed

                raise PreconditionFailed("proxy.event_loop is uvloop but uvloop is not installed",
                                         hint="pip install uvloop, or set proxy.event_loop: auto") from None
    coro = serve(routes, settings, host, port, access_log, ready)
    if uvloop is not None:
        uvloop.run(coro)
        return "uvloop"
    asyncio.run(coro)
    return "asyncio"
