"""Upgraded connections (WebSocket) as a pair of transports wired to each other.

After the 101 has gone out, the client's and the upstream's transports get a tiny Protocol each
that writes what it receives into the other one. Back-pressure: when one side's write buffer
fills, reading from the other side pauses. Half-close: a FIN from one side is passed on with
`write_eof` and the other direction keeps flowing until it ends too. An idle tunnel is closed by
the proxy's sweeper. No coroutine or task stays behind while a WebSocket is held.
"""

from __future__ import annotations

import asyncio
import time


class _End(asyncio.Protocol):
    __slots__ = ("tunnel", "t", "other", "eof", "count")

    def __init__(self, tunnel: "Tunnel"):
        self.tunnel = tunnel
        self.t: asyncio.Transport | None = None
        self.other: _End | None = None
        self.eof = False
        self.count = 0

    def data_received(self, data: bytes) -> None:
        self.count += len(data)
        self.tunnel.last = self.tunnel.loop.time()
        self.other.t.write(data)

    def eof_received(self) -> bool:
        self.eof = True
        other = self.other
        if other.eof:
            self.tunnel.close()
        elif not other.t.is_closing() and other.t.can_write_eof():
            other.t.write_eof()
        return True  # keep our write side open: the other direction may still be flowing

    def connection_lost(self, exc) -> None:
        self.tunnel.close()

    def pause_writing(self) -> None:
        self.other.t.pause_reading()

    def resume_writing(self) -> None:
        self.other.t.resume_reading()


class Tunnel:
    def __init__(self, proxy, *, peer: str, head, t0: float, upstream: str):
        self.proxy = proxy
        self.loop = asyncio.get_running_loop()
        self.last = self.loop.time()
        self.peer, self.head, self.t0, self.upstream = peer, head, t0, upstream
        self.client = _End(self)
        self.server = _End(self)
        self.client.other, self.server.other = self.server, self.client
        self.closed = False

    def start(self, creader, cwriter, ureader, uwriter) -> None:
        """Move both transports off their streams onto the tunnel, keeping bytes already read."""
        # A StreamWriter closes its transport when garbage-collected: keep both for the tunnel's life.
        self._writers = (cwriter, uwriter)
        ends = ((self.client, creader, cwriter), (self.server, ureader, uwriter))
        pending = []
        for end, reader, writer in ends:
            end.t = writer.transport
            # StreamReader has no public "take what you buffered": these two fields are its state.
            pending.append((end, bytes(reader._buffer), reader._eof))
            reader._buffer.clear()
            end.t.set_protocol(end)
        self.proxy.tunnels.add(self)
        for end, data, eof in pending:
            if data:
                end.data_received(data)
            if eof:
                end.eof_received()
        for end, _, _ in pending:
            if not self.closed:
                end.t.resume_reading()

    def close(self, note: str | None = None) -> None:
        if self.closed:
            return
        self.closed = True
        if self.proxy.access is not None:
            self.proxy.access.unwatch(self)
        self.client.t.close()
        self.server.t.close()
        p = self.proxy
        p.tunnels.discard(self)
        p.metrics.active_websockets -= 1
        p.metrics.bytes_upstream += self.client.count
        p.metrics.bytes_downstream += self.server.count
        p.log.log(peer=self.peer, method=self.head.method, target=self.head.target, status=101,
                  bytes_out=self.server.count, seconds=time.monotonic() - self.t0, upstream=self.upstream, note=note)

    def expire_if_idle(self, now: float, idle: float) -> None:
        if now - self.last > idle:
            self.close()
