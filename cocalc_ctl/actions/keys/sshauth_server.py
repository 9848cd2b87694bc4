"""`sshpiper serve`: the HTTP endpoint of sshpiperd's REST auth plugin.

Contract (the plugin's own request form): `GET /<token>/<url.QueryEscape(user)>` over HTTP/1.1
keep-alive. Every answer is HTTP 200 with `{"user","host","authorizedKeys","privateKey"}`; a deny, a
stopped project, a wrong token, a malformed request or any internal error is the same 200 with all
four fields empty, because the plugin mishandles anything else. `GET /healthz` says `{"ok": true}`.

A minimal asyncio protocol rather than http.server: the decision is a primary-key lookup plus two
small file reads, so the HTTP layer is most of the cost and must stay thin to serve thousands of
lookups per second on one core. Request heads are parsed by the proxy's strict parser
(`cocalc_ctl/proxy/http1.py`); a head it refuses gets the empty answer and the connection closes. The token is compared in constant time and never logged.

Defence in depth beside the token: a connection is answered only when the socket at its other end
belongs to the local user sshpiperd runs as (`sshpiper.rest_client_user`, default root). Loopback TCP
peers are local sockets, so their owner is in `/proc/net/tcp{,6}` (the row whose local address is the
peer's and whose remote address is ours); any other owner, or no such row, is closed unanswered.
"""

from __future__ import annotations

import asyncio
import hmac
import ipaddress
import json
import pwd
import signal
import socket
import struct
import sys
import threading
import time
from dataclasses import dataclass
from urllib.parse import unquote_plus

from cocalc_ctl.actions.keys.sshauth import DENY, Resolver
from cocalc_ctl.config import Config
from cocalc_ctl.errors import ConfigError, InvalidInput
from cocalc_ctl.proxy import http1
from cocalc_ctl.tools import ssh

MAX_HEAD = 16 << 10
IDLE_TIMEOUT = 60.0  # close connections that send nothing for this long (sshpiperd reconnects at will)
EMPTY_BODY = json.dumps(DENY.as_dict()).encode()
HEALTH_BODY = b'{"ok": true}'


def _response(body: bytes, keep_alive: bool) -> bytes:
    return (b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nCache-Control: no-store\r\n"
            b"Content-Length: " + str(len(body)).encode() + b"\r\n"
            + (b"Connection: keep-alive\r\n" if keep_alive else b"Connection: close\r\n") + b"\r\n" + body)


@dataclass
class Stats:
    requests: int = 0
    allowed: int = 0
    denied: int = 0
    bad_token: int = 0
    errors: int = 0
    bad_peer: int = 0  # connections closed because another local user opened them


def _hex_addr(ip: str) -> str | None:
    """An address as /proc/net/tcp{,6} prints it (32-bit words in host byte order)."""
    try:
        if ":" in ip:
            b = socket.inet_pton(socket.AF_INET6, ip.split("%", 1)[0])
            return "".join("%08X" % struct.unpack("=I", b[i:i + 4])[0] for i in range(0, 16, 4))
        return "%08X" % struct.unpack("=I", socket.inet_aton(ip))[0]
    except (OSError, ValueError):
        return None


def socket_owner(peer: tuple, local: tuple, *, proc_net: str = "/proc/net") -> int | None:
    """uid owning the local socket `peer` that is connected to our `local` address, or None when no such
    socket exists on this host (a remote client, or it is gone)."""
    want_l, want_r = _hex_addr(peer[0]), _hex_addr(local[0])
    if want_l is None or want_r is None:
        return None
    want_l += ":%04X" % peer[1]
    want_r += ":%04X" % local[1]
    for name in (("tcp6", "tcp") if ":" in peer[0] else ("tcp", "tcp6")):
        try:
            with open(f"{proc_net}/{name}", "rb") as f:
                data = f.read().decode("ascii", "replace")
        except OSError:
            continue
        for line in data.splitlines()[1:]:
            fields = line.split()
            if len(fields) > 7 and fields[1] == want_l and fields[2] == want_r:
                try:
                    return int(fields[7])
                except ValueError:
                    return None
    return None


def _unmapped(addr: tuple) -> tuple:
    """::ffff:127.0.0.1 -> 127.0.0.1 (an IPv4 peer of a dual-stack listener lives in /proc/net/tcp)."""
    if addr and isinstance(addr[0], str) and addr[0].lower().startswith("::ffff:") and "." in addr[0]:
        return (addr[0][7:], addr[1])
    return addr


def client_uid(cfg: Config) -> int:
    """`sshpiper.rest_client_user` as a uid (a user name or a number)."""
    v = str(cfg["sshpiper.rest_client_user"]).strip()
    if v.isdigit():
        return int(v)
    try:
        return pwd.getpwnam(v).pw_uid
    except KeyError:
        raise ConfigError(f"config sshpiper.rest_client_user: no local user {v!r}",
                          hint="set it to the user sshpiperd runs as (name or uid)") from None


class Handler:
    """Request target -> response body. Pure function of state; never raises."""

    def __init__(self, resolver: Resolver, token: str, *, log=None, allowed_uid: int | None = None):
        self.resolver = resolver
        self.token = token.encode()
        self.allowed_uid = allowed_uid
        self.stats = Stats()
        self.log = log or (lambda m: None)

    def body_for(self, method: bytes, target: bytes) -> bytes:
        self.stats.requests += 1
        try:
            path = target.split(b"?", 1)[0]
            if path == b"/healthz":
                return HEALTH_BODY
            if method != b"GET":
                self.stats.denied += 1
                return EMPTY_BODY
            parts = path.split(b"/")
            if len(parts) != 3 or parts[0] != b"" or not hmac.compare_digest(parts[1], self.token):
                self.stats.bad_token += 1
                return EMPTY_BODY
            login = unquote_plus(parts[2].decode("ascii"), encoding="utf-8", errors="strict")
            answer, decision = self.resolver.decide(login)
            if not decision.allowed:
                self.stats.denied += 1
                return EMPTY_BODY
            self.stats.allowed += 1
            return json.dumps(answer.as_dict()).encode()
        except Exception as exc:  # noqa: BLE001 - any failure is a deny, and the server keeps serving
            self.stats.errors += 1
            self.log(f"internal error answered as deny: {type(exc).__name__}")
            return EMPTY_BODY


class _HttpProtocol(asyncio.Protocol):
    __slots__ = ("handler", "transport", "buf", "closing", "last", "conns")

    def __init__(self, handler: Handler, conns: set):
        self.handler = handler
        self.transport = None
        self.buf = b""
        self.closing = False
        self.last = time.monotonic()
        self.conns = conns

    def connection_made(self, transport):
        self.transport = transport
        want = self.handler.allowed_uid
        if want is not None:
            peer = _unmapped(transport.get_extra_info("peername"))
            local = _unmapped(transport.get_extra_info("sockname"))
            owner = socket_owner(peer, local) if peer and local else None
            if owner != want:
                self.handler.stats.bad_peer += 1
                who = "a remote or vanished socket" if owner is None else f"uid {owner}"
                self.handler.log(f"closed a connection from {who} (only uid {want} may ask)")
                self.closing = True
                transport.abort()
                return
        self.conns.add(self)

    def data_received(self, data: bytes) -> None:
        if self.closing:
            return
        self.last = time.monotonic()
        self.buf += data
        while not self.closing:
            end = self.buf.find(b"\r\n\r\n")
            if end < 0:
                if len(self.buf) > MAX_HEAD:
                    self._finish(EMPTY_BODY)
                return
            head, self.buf = self.buf[:end], self.buf[end + 4:]
            try:
                request = http1.parse_request_head(head.split(b"\r\n"))
            except http1.HttpError:
                self._finish(EMPTY_BODY)
                return
            # we never read bodies: answer, then close
            keep_alive = request.keep_alive and not request.chunked and not request.content_length
            body = self.handler.body_for(request.method, request.target)
            if keep_alive:
                self.transport.write(_response(body, True))
            else:
                self._finish(body)

    def _finish(self, body: bytes) -> None:
        self.closing = True
        self.transport.write(_response(body, False))
        self.transport.close()

    def connection_lost(self, exc):
        self.buf = b""
        self.conns.discard(self)


async def _reap_idle(conns: set, idle: float) -> None:
    """A client that opens connections and goes quiet must not pin file descriptors forever."""
    while True:
        await asyncio.sleep(min(idle / 4, 15.0))
        cutoff = time.monotonic() - idle
        for p in [p for p in conns if p.last < cutoff]:
            p.transport.close()
            conns.discard(p)


def parse_listen(text: str, *, allow_remote: bool) -> tuple[str, int]:
    try:
        host, port = ssh.parse_host_port(text, default_port=8089, min_port=0)
    except ValueError as exc:
        raise InvalidInput(f"--listen: {exc}", hint="use e.g. 127.0.0.1:8089") from None
    loopback = host == "localhost"
    try:
        loopback = loopback or ipaddress.ip_address(host).is_loopback
    except ValueError:
        pass
    if not loopback and not allow_remote:
        raise InvalidInput(f"refusing to listen on non-loopback address {host}",
                           hint="sshpiperd runs on this host; pass --allow-remote only if you really mean it")
    return host, port


def _log(msg: str) -> None:
    sys.stderr.write(f"cocalc-ctl: sshpiper serve: {msg}\n")
    sys.stderr.flush()


def serve(cfg: Config, *, listen: str | None = None, allow_remote: bool = False,
          max_seconds: float | None = None, idle_timeout: float = IDLE_TIMEOUT) -> Stats:
    """Run until SIGINT/SIGTERM (or `max_seconds`); returns request counters."""
    from cocalc_ctl.actions.keys import keys

    host, port = parse_listen(listen or cfg["sshpiper.rest_listen"], allow_remote=allow_remote)
    keys.ensure_token(cfg)
    handler = Handler(Resolver(cfg, log=_log), keys.read_token(cfg), log=_log, allowed_uid=client_uid(cfg))

    async def main() -> None:
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.add_signal_handler(sig, stop.set)
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        conns: set = set()
        server = await loop.create_server(lambda: _HttpProtocol(handler, conns), host, port, family=family,
                                          reuse_address=True, backlog=1024)
        reaper = asyncio.ensure_future(_reap_idle(conns, idle_timeout))
        bound = server.sockets[0].getsockname()
        _log(f"listening on http://{ssh.listen_address(bound[0], bound[1])}/ (token from the secrets dir; "
             f"answering uid {handler.allowed_uid} only)")
        started = time.monotonic()
        try:
            if max_seconds is None:
                await stop.wait()
            else:
                try:
                    await asyncio.wait_for(stop.wait(), max_seconds)
                except asyncio.TimeoutError:
                    pass
        finally:
            reaper.cancel()
            server.close()
            for p in list(conns):
                p.transport.close()
            try:  # keep-alive clients may hold connections open; do not wait on them forever
                await asyncio.wait_for(server.wait_closed(), 2)
            except asyncio.TimeoutError:
                pass
            s = handler.stats
            _log(f"stopped after {time.monotonic() - started:.0f}s: {s.requests} requests, {s.allowed} allowed, "
                 f"{s.denied} denied, {s.bad_token} bad token, {s.bad_peer} other-user connections, {s.errors} errors")

    asyncio.run(main())
    return handler.stats
