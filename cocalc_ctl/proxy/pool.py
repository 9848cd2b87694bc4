"""Idle upstream connections kept for reuse, one pool per project.

A key is (host, port, project): in host mode that is one project server; in hub mode it is one
project on one host, so a hub->host connection never carries two projects' requests, even though
the framing rules (policy.py) already make a request boundary impossible to shift. A connection is
put back only by the code that read its last response completely with the proxy's own framing, and
only when nothing is buffered and it did not switch protocols (`reusable_streams` checks the
stream-side part); a pooled connection that receives a byte while idle is closed.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque

PoolKey = tuple  # (host, port, project_id)


def reusable_streams(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
    """Idle with nothing buffered: no bytes past the last response, no EOF, not closing."""
    return not writer.is_closing() and not reader.at_eof() and not reader._buffer and reader.exception() is None


class StreamPool:
    """Stream-path connections (StreamReader, StreamWriter), newest first; stale ones are dropped.

    While a connection is idle a watcher task waits for one byte: EOF (the upstream closed its idle
    connection, as the host does to the hub after its idle_timeout) or any byte closes it at once,
    so no descriptor lingers in CLOSE_WAIT until the sweep. Taking a connection stops its watcher
    first (a StreamReader allows one waiting reader).
    """

    def __init__(self, max_idle: int, idle_ttl: float, limit: int):
        self.max_idle = max_idle
        self.idle_ttl = idle_ttl
        self.limit = limit
        self._idle: dict[PoolKey, deque] = {}

    async def open(self, key: PoolKey, timeout: float):
        async with asyncio.timeout(timeout):
            return await asyncio.open_connection(key[0], key[1], limit=self.limit)

    async def acquire(self, key: PoolKey, timeout: float):
        dq = self._idle.get(key)
        while dq:
            reader, writer, _, watcher = dq.pop()
            if not watcher.done():
                watcher.cancel()
                await asyncio.wait({watcher})
            if watcher.cancelled() and reusable_streams(reader, writer):
                return reader, writer, True
            writer.close()  # closed, or bytes arrived while idle
        reader, writer = await self.open(key, timeout)
        return reader, writer, False

    def release(self, key: PoolKey, reader, writer) -> None:
        dq = self._idle.setdefault(key, deque())
        if len(dq) >= self.max_idle or not reusable_streams(reader, writer):
            writer.close()
            return
        entry = [reader, writer, time.monotonic(), None]
        entry[3] = asyncio.ensure_future(self._watch(key, entry))
        dq.append(entry)

    async def _watch(self, key: PoolKey, entry: list) -> None:
        try:
            await entry[0].read(1)  # b"" at EOF, or a byte nobody asked for: unusable either way
        except (ConnectionError, OSError):
            pass
        entry[1].close()
        dq = self._idle.get(key)
        if dq is not None and entry in dq:
            dq.remove(entry)

    def sweep(self) -> None:
        cutoff = time.monotonic() - self.idle_ttl
        for key, dq in list(self._idle.items()):
            for entry in [e for e in dq if e[2] < cutoff or e[1].is_closing()]:
                dq.remove(entry)
                entry[3].cancel()
                entry[1].close()
            if not dq:
                del self._idle[key]

    def idle_count(self) -> int:
        return sum(len(dq) for dq in self._idle.values())

    def close(self) -> None:
        for dq in self._idle.values():
            for entry in dq:
                entry[3].cancel()
                entry[1].close()
        self._idle.clear()


class FastPool:
    """Fast-path connections (fastpath.UpstreamProtocol): an UpstreamProtocol with no exchange closes
    its transport on any byte it receives, so an idle one here has nothing buffered."""

    def __init__(self, max_idle: int, idle_ttl: float):
        self.max_idle = max_idle
        self.idle_ttl = idle_ttl
        self._idle: dict[PoolKey, list] = {}

    def take(self, key: PoolKey):
        lst = self._idle.get(key)
        while lst:
            up = lst.pop()
            if not up.closed and not up.t.is_closing():
                return up
        return None

    def put(self, up) -> None:
        lst = self._idle.setdefault(up.key, [])
        if len(lst) >= self.max_idle:
            up.t.close()
            return
        up.idle_since = time.monotonic()
        lst.append(up)

    def discard(self, up) -> None:
        lst = self._idle.get(up.key)
        if lst and up in lst:
            lst.remove(up)

    def sweep(self) -> None:
        cutoff = time.monotonic() - self.idle_ttl
        for key, lst in list(self._idle.items()):
            for up in [u for u in lst if u.idle_since < cutoff]:
                lst.remove(up)
                up.t.close()
            if not lst:
                del self._idle[key]

    def idle_count(self) -> int:
        return sum(len(lst) for lst in self._idle.values())

    def close(self) -> None:
        for lst in self._idle.values():
            for up in lst:
                up.t.close()
        self._idle.clear()
