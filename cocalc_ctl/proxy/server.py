"""The asyncio HTTP/1.1 + WebSocket reverse proxy behind `proxy serve`: listener and connection loop.

Modules, one job each:
- server.py    settings, the listener, the per-connection request loop, local answers, errors;
- policy.py    the forwarding rules (refusals, forwarded fields, framing, limits, reuse), called by
               both paths below, so there is one set of rules however a message travels;
- http1.py     message-head syntax; bodies.py body relays with the proxy's own framing;
- fastpath.py  the Protocol fast path for body-less requests (the hot path), fastupstream.py its
               upstream side; anything else moves to
- stream.py    the stream relay (bodies, chunked and until-close answers, 100-continue, upgrades);
- pool.py      idle upstream connections, per project; tunnel.py upgraded connections;
- routing.py   request target -> upstream; metrics.py counters and the access log.

Every failure has a bounded answer: no route 404, not running / refused / garbled upstream 502,
upstream silent past its timeout 504, a client too slow with its head is dropped after
`header_timeout`. Once a response head has gone out, a failure can only close the connection.
"""

from __future__ import annotations

import asyncio
import hmac
import ipaddress
import signal
import time
from dataclasses import dataclass

from cocalc_ctl.authnames import ACCOUNT_HEADER
from cocalc_ctl.proxy import http1, hubcred, policy
from cocalc_ctl.proxy.access import Answer, Pass
from cocalc_ctl.proxy.http1 import HttpError, PeerClosed
from cocalc_ctl.proxy.metrics import AccessLog, Metrics
from cocalc_ctl.proxy.pool import FastPool, StreamPool
from cocalc_ctl.proxy.routing import Addressing
from cocalc_ctl.proxy.stream import ClientGone, Side, StreamRelay


@dataclass
class Settings:
    connect_timeout: float = 5.0      # TCP connect to an upstream
    upstream_timeout: float = 60.0    # upstream silent (no response head, or no body bytes) -> 504 / close
    idle_timeout: float = 60.0        # client keep-alive idle, and client body bytes stalled
    header_timeout: float = 10.0      # a client's request head must arrive within this (slowloris)
    websocket_idle_timeout: float = 3600.0  # a tunnel with no bytes either way is closed
    max_head_bytes: int = 32768
    max_headers: int = 100
    trust_forwarded: tuple = ()       # addresses/networks whose X-Forwarded-* are kept (front proxies)
    scheme: str = "http"
    metrics: bool = True
    pool_max_idle: int = 64           # idle upstream connections kept per project
    pool_idle_ttl: float = 30.0
    fast_path: bool = True            # Protocol fast path for body-less requests (fastpath.py)
    project_domain: str | None = None  # subdomain routing (routing.Addressing); None: path mode
    metrics_token: bytes | None = None  # bearer token opening /metrics to non-loopback clients
    hub_verifier: object = None       # host mode: hubcred.HubVerifier (None: proxy.host_auth none)
    hub_signer: object = None         # hub mode: hubcred.HubSigner (signs what it forwards to hosts)


def is_loopback_peer(peer: str) -> bool:
    """What `loopback` means for /metrics: 127.0.0.0/8 (so 127.0.0.2 too: any local process can use
    any of them), ::1 and ::ffff:127.0.0.0/104. Not a unix socket, not the host's other addresses."""
    if peer.startswith("127."):
        return True
    try:
        addr = ipaddress.ip_address(peer)
    except ValueError:
        return False
    mapped = getattr(addr, "ipv4_mapped", None)
    return (mapped or addr).is_loopback


class Proxy(StreamRelay):
    def __init__(self, routes, settings: Settings, access_log: AccessLog, access=None):
        self.routes = routes
        self.access = access  # hub mode: access.Access, checked before routing; None: no access control
        self.s = settings
        self.log = access_log
        self.metrics = Metrics()
        # hub mode: how long the lookups behind cache misses take, measured here (a /metrics histogram)
        if getattr(routes, "lookup_latency", None) is not None:
            self.metrics.lookup_seconds["route"] = routes.lookup_latency
        if access is not None and access.mode == "builtin":
            self.metrics.lookup_seconds["decision"] = access.lookup_latency
            if getattr(routes, "prime", None) is not None:
                access.routes = routes  # a decision lookup brings the project's route along
        self.fwd = policy.Forwarding(settings.trust_forwarded, settings.scheme)
        # a StreamReader's limit must let the largest head we accept (from a trusted peer) through
        self.read_limit = max(policy.RESPONSE_ACCEPT_BYTES, settings.max_head_bytes + policy.FORWARD_BUDGET_BYTES)
        self.pool = StreamPool(settings.pool_max_idle, settings.pool_idle_ttl, self.read_limit)
        self.fast_pool = FastPool(settings.pool_max_idle, settings.pool_idle_ttl)
        self.clients: set = set()  # StreamWriters and transports, closed on shutdown
        self.tunnels: set = set()
        self.waiting: set = set()  # stream-path StreamWriters between requests (idle keep-alive)
        self.draining = False  # set by a worker's drain (workers.py): finish the request, then close
        self.addr = Addressing(settings.project_domain)
        self.verifier = settings.hub_verifier
        self.signer = settings.hub_signer
        self._scopes: dict[str, bytes] = {}
        self._drop = policy.request_drop()

    def cookie_scope(self, key) -> bytes:
        """Set-Cookie scope of the project an upstream connection (pool key) serves: `/<id>/` or `/`."""
        scope = self._scopes.get(key[2])
        if scope is None:
            scope = self.addr.cookie_path(key[2]) or b"/"
            if len(self._scopes) < 10000:
                self._scopes[key[2]] = scope
        return scope

    def account_line(self, account: bytes) -> bytes:
        """Host mode: x-cocalc-account re-emitted from a verified head (never a client's copy)."""
        return b"%s: %s\r\n" % (ACCOUNT_HEADER, account) if account else b""

    def upstream_head(self, head, route, verdict, account: bytes, key, peer: bytes, port: bytes,
                      trusted: bool, project_id: str = "") -> bytes:
        """The upstream head for both paths: i13b's forwarding of a hub-mode decision (fields to drop, the
        account line), host mode's verified account, and in hub mode the host's credential last, over
        exactly the x-cocalc-account value the host will see."""
        if verdict is None:
            drop, extra = self._drop, self.account_line(account)
        else:
            drop, extra = verdict.forward()
        if self.signer is not None:
            extra += self.sign_line(head, route, key, hubcred.account_in(extra), project_id)
        return policy.upstream_request_head(head, peer, port, self.fwd, trusted, extra, drop)

    def sign_line(self, head, route, key, account: bytes, project_id: str) -> bytes:
        """Hub mode: the credential for `route`'s host, bound to the project the hub authorized (no key
        for that host: none; the host refuses)."""
        if key is None or route.host_id is None:
            return b""
        return hubcred.header_line(key[1], key[0], route.host_id.encode(), head, account, project_id.encode())

    def addressed(self, head) -> tuple[bytes, str]:
        """(verified account, project id) of a project request, for both paths. Host mode checks the hub
        credential first (without one a client learns nothing, not even whether its target is valid), over
        the project THIS host addresses, so a hub that authorized another one (its addressing mode differs)
        is refused. HttpError for a refused credential or target."""
        if self.verifier is None:
            return b"", self.addr.project(head)
        try:
            project_id = self.addr.project(head)
        except HttpError:
            self.verifier.verify(head, None)  # always 401: a hub signs only targets that address a project
            raise
        return self.verifier.verify(head, project_id.encode()), project_id

    def limits(self, peer: str) -> tuple[bool, int, int]:
        """(peer trusted, head bytes, header fields) for a client connection from `peer`."""
        trusted = self.fwd.trusted(peer)
        return (trusted, *policy.request_limits(self.s.max_head_bytes, self.s.max_headers, trusted))

    def pool_key(self, route, project_id: str) -> tuple:
        return (route.host, route.port, project_id)

    # -- client connections (stream path) ----------------------------------------------------

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, *, pending=None,
                     counted: bool = False) -> None:
        """Serve a client connection on streams; `pending` is a request head the fast path already read."""
        if not counted:
            self.metrics.active_connections += 1
        self.clients.add(writer)
        peer = writer.get_extra_info("peername")
        peer_ip = peer[0] if peer else "-"
        sock = writer.get_extra_info("sockname")
        local_port = sock[1] if sock and len(sock) > 1 else 0
        trusted, max_bytes, max_fields = self.limits(peer_ip)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.s.header_timeout
        detached = False  # an upgraded connection is handed to a Tunnel and must stay open
        try:
            head = pending
            while True:
                if head is None:
                    self.waiting.add(writer)
                    try:
                        async with asyncio.timeout_at(deadline) as cm:
                            lines = await http1.read_head_lines(
                                reader, max_bytes=max_bytes, max_lines=max_fields + 1,
                                on_first_line=lambda: cm.reschedule(
                                    min(cm.when(), loop.time() + self.s.header_timeout)))
                    except TimeoutError:
                        break
                    except HttpError as exc:
                        await self._reply_bad(writer, exc, peer_ip, b"-", b"-")
                        break
                    self.waiting.discard(writer)
                    if lines is None:
                        break
                    try:
                        head = policy.parse_request(lines)
                    except HttpError as exc:
                        await self._reply_bad(writer, exc, peer_ip, lines[0].split(b" ", 1)[0][:16], b"-")
                        break
                keep = await self.handle_request(head, reader, writer, peer_ip, local_port, trusted)
                if keep is None:
                    detached = True
                    break
                if not keep:
                    if head.chunked or head.content_length:
                        await self._linger(reader, writer)
                    break
                if self.draining:
                    break
                head = None
                deadline = loop.time() + self.s.idle_timeout
        except (PeerClosed, ClientGone, ConnectionError, OSError):
            pass
        finally:
            self.clients.discard(writer)
            self.waiting.discard(writer)
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
        body = exc.reason.encode() + b"\n"
        self.log.log(peer=peer, method=method, target=target, status=exc.status, bytes_out=len(body), seconds=0.0,
                     upstream=None, note=exc.reason)
        try:
            writer.write(http1.simple_response(exc.status, body, keep_alive=False))
            await asyncio.wait_for(writer.drain(), 5)
        except (ConnectionError, OSError, TimeoutError, RuntimeError):
            pass

    # -- one request -------------------------------------------------------------------------

    async def handle_request(self, head, reader, writer, peer: str, local_port: int,
                             trusted: bool = False) -> bool | None:
        """Serve one request; return whether the client connection may carry another (None: it became
        a tunnel and is no longer ours)."""
        t0 = time.monotonic()
        target = head.target
        has_body = head.chunked or bool(head.content_length)
        if self.addr.local(head):
            return await self._local(head, writer, peer, has_body, t0)
        verdict = None
        try:
            # the hub credential before anything else (host mode), then which project, who, then where
            account, project_id = self.addressed(head)
            access = self.access
            if access is not None:
                generation = access.generation
                try:
                    verdict = await access.check(head, project_id, peer, trusted)
                except Exception as exc:  # noqa: BLE001 - never forward on a failed check
                    verdict = Answer(503, f"access check failed: {type(exc).__name__}")
                if verdict.__class__ is not Pass:
                    return await self._answer(writer, head, verdict, peer, t0, has_body)
            route = await self.routes.resolve(project_id)
            key = await self.signer.key(route.host_id) if self.signer is not None else None
        except HttpError as exc:
            if exc.status >= 500:
                self.metrics.upstream_errors["not_running" if exc.status == 502 else "route_lookup"] += 1
            return await self._error(writer, head, exc.status, exc.reason, peer, t0, None, has_body)
        upstream = f"{route.host}:{route.port}"
        out = self.upstream_head(head, route, verdict, account, key, peer.encode(), str(local_port).encode(),
                                 trusted, project_id)
        key = self.pool_key(route, project_id)
        if head.upgrade is not None:
            watch = None if verdict is None else (verdict, project_id, generation)
            return await self._tunnel(head, out, key, reader, writer, peer, t0, upstream, watch)
        return await self._exchange(head, out, key, reader, writer, peer, t0, upstream, has_body)

    def metrics_allowed(self, head, peer: str) -> bool:
        """/metrics: loopback peers (127.0.0.0/8, ::1, IPv4-mapped 127.x) speaking for themselves, or the
        configured bearer token. A loopback peer that forwards for someone else (X-Forwarded-For or
        Forwarded: a TLS front end on this machine) is no local client: it needs the token too."""
        if is_loopback_peer(peer) and not any(n in (b"x-forwarded-for", b"forwarded") for n, _, _ in head.headers):
            return True
        token = self.s.metrics_token
        if not token:
            return False
        for lname, _, value in head.headers:
            if lname == b"authorization":
                scheme, _, given = value.partition(b" ")
                return scheme.lower() == b"bearer" and hmac.compare_digest(given.strip(), token)
        return False

    async def _local(self, head, writer, peer, has_body, t0) -> bool:
        if head.target == b"/healthz":
            status, body, ctype = 200, b"ok\n", b"text/plain; charset=utf-8"
        elif self.s.metrics and not self.metrics_allowed(head, peer):
            return await self._error(writer, head, 403, "metrics are served to loopback clients or with the "
                                     "metrics bearer token", peer, t0, None, has_body)
        elif self.s.metrics:
            status, body, ctype = 200, self.metrics_text(), b"text/plain; version=0.0.4"
        else:
            return await self._error(writer, head, 404, "metrics are disabled", peer, t0, None, has_body)
        keep = head.keep_alive and not has_body
        writer.write(http1.simple_response(status, body, keep_alive=keep, content_type=ctype,
                                           head_only=head.method == b"HEAD"))
        await Side(writer, ClientGone).drain()
        self.metrics.requests[status] += 1
        self.log.log(peer=peer, method=head.method, target=head.target, status=status, bytes_out=len(body),
                     seconds=time.monotonic() - t0, upstream=None)
        return keep

    def metrics_text(self) -> bytes:
        """The /metrics answer (a worker of `--workers N` replaces it with every worker's series)."""
        return self.metrics.render(self._extra_metrics())

    def _extra_metrics(self) -> dict:
        idle = self.pool.idle_count() + self.fast_pool.idle_count()
        extra = {"cocalc_proxy_upstream_idle_connections": ("gauge", "Idle pooled upstream connections.", idle)}
        if self.access is not None:
            extra.update(self.access.metrics())
        if hasattr(self.routes, "lookups"):
            extra["cocalc_proxy_route_lookups_total"] = (
                "counter", "Route table reads that missed the route cache (host mode).", self.routes.lookups)
        if hasattr(self.routes, "notifications"):
            extra["cocalc_proxy_route_notifications_total"] = (
                "counter", "Route NOTIFY messages received from the hub.", self.routes.notifications)
            extra["cocalc_proxy_route_db_errors_total"] = (
                "counter", "Hub database errors while resolving routes.", self.routes.db_errors)
        link = getattr(self.routes, "link", None)
        if link is not None and hasattr(link, "batches"):
            extra["cocalc_proxy_hub_batches_total"] = (
                "counter", "Batched lookup queries sent to the hub (routes and decisions).", link.batches)
            extra["cocalc_proxy_hub_batched_keys_total"] = (
                "counter", "Lookups those batched queries answered.", link.batched_keys)
        self._extra_auth_metrics(extra)
        return extra

    async def _answer(self, writer, head, answer, peer, t0, has_body) -> bool:
        """A local answer of access control (access.Answer: 401, 403, the login's 303...)."""
        keep = head.keep_alive and not has_body and answer.status < 500 and answer.status != 400
        head_only = head.method == b"HEAD"
        writer.write(answer.response(keep, head_only))
        try:
            await Side(writer, ClientGone).drain()
        except ClientGone:
            keep = False
        self.metrics.requests[answer.status] += 1
        self.metrics.stream_path += 1
        self.log.log(peer=peer, method=head.method, target=head.target, status=answer.status,
                     bytes_out=0 if head_only else len(answer.body), seconds=time.monotonic() - t0, upstream=None,
                     note=answer.note)
        return keep

    async def _error(self, writer, head, status: int, reason: str, peer, t0, upstream, has_body) -> bool:
        # A request body we did not read would be parsed as the next request: close instead.
        keep = head.keep_alive and not has_body and status < 500 and status != 400
        body = b"" if head.method == b"HEAD" else reason.encode() + b"\n"
        writer.write(http1.simple_response(status, reason.encode() + b"\n", keep_alive=keep,
                                           head_only=head.method == b"HEAD"))
        try:
            await Side(writer, ClientGone).drain()
        except ClientGone:
            keep = False
        self.metrics.requests[status] += 1
        self.metrics.stream_path += 1
        self.log.log(peer=peer, method=head.method, target=head.target, status=status, bytes_out=len(body),
                     seconds=time.monotonic() - t0, upstream=upstream, note=reason)
        return keep

    def _done(self, head, status, counter, peer, t0, upstream, note) -> None:
        self.metrics.requests[status] += 1
        self.metrics.stream_path += 1
        self.metrics.bytes_downstream += counter.n
        self.log.log(peer=peer, method=head.method, target=head.target, status=status, bytes_out=counter.n,
                     seconds=time.monotonic() - t0, upstream=upstream, note=note)

    # -- lifecycle ----------------------------------------------------------------------------

    def _extra_auth_metrics(self, extra: dict) -> None:
        if self.verifier is not None:
            extra["cocalc_proxy_hub_auth_failures_total"] = (
                "counter", "Requests refused for a missing or invalid hub credential (host mode).",
                self.verifier.failures)
        if self.signer is not None:
            extra["cocalc_proxy_hub_key_lookups_total"] = (
                "counter", "Signing-key reads that missed the cache (hub mode).", self.signer.lookups)

    def close_clients(self) -> None:
        for tunnel in list(self.tunnels):
            tunnel.close()
        for w in list(self.clients):
            w.close()
        self.pool.close()
        self.fast_pool.close()


async def serve(routes, settings: Settings, host: str, port: int, access_log: AccessLog,
                ready=None, stop: asyncio.Event | None = None, worker=None, access=None) -> None:
    """Run until SIGTERM/SIGINT (or `stop` is set); `ready(host, port)` is called once listening.
    `worker` (workers.Worker): serve its inherited socket, publish metrics, drain on stop.
    `access` (hub mode): the access.Access every request is checked by."""
    await routes.start()
    if access is not None:
        await access.start()
    if settings.hub_signer is not None:
        await settings.hub_signer.start()
    proxy = Proxy(routes, settings, access_log, access)
    listen = dict(host=host, port=port, reuse_address=True) if worker is None else dict(sock=worker.sock)
    proxy.metrics.event_loop = "uvloop" if "uvloop" in type(asyncio.get_running_loop()).__module__ else "asyncio"
    if settings.fast_path:
        from cocalc_ctl.proxy.fastpath import ClientProtocol

        server = await asyncio.get_running_loop().create_server(lambda: ClientProtocol(proxy), backlog=1024,
                                                                **listen)
    else:
        server = await asyncio.start_server(proxy.handle, limit=proxy.read_limit, backlog=1024, **listen)
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
            proxy.fast_pool.sweep()
            now = loop.time()
            for tunnel in list(proxy.tunnels):
                tunnel.expire_if_idle(now, settings.websocket_idle_timeout)

    sweep_task = asyncio.create_task(sweeper())
    if worker is not None:
        worker.attach(proxy)
    try:
        await stop.wait()
    finally:
        sweep_task.cancel()
        server.close()
        if worker is not None:
            await worker.drain(proxy)
        proxy.close_clients()
        await routes.close()
        if access is not None:
            await access.close()
        if settings.hub_signer is not None:
            await settings.hub_signer.close()


def run(routes, settings: Settings, host: str, port: int, access_log: AccessLog, ready=None,
        event_loop: str = "auto", worker=None, access=None) -> str:
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
    coro = serve(routes, settings, host, port, access_log, ready, worker=worker, access=access)
    if uvloop is not None:
        uvloop.run(coro)
        return "uvloop"
    asyncio.run(coro)
    return "asyncio"
