"""Message bodies for the proxy: relayed piece by piece with `drain()` after every write, so memory
stays flat. The framing written out is always the proxy's own (chunk sizes are re-encoded, chunk
extensions and trailers dropped)."""

from __future__ import annotations

import asyncio

from cocalc_ctl.proxy.http1 import CHUNK_SIZE_RE, READ_SIZE, HttpError, PeerClosed

class Counter:
    """Bytes moved by one relay, so a failure can tell whether anything was sent yet."""
    __slots__ = ("n",)

    def __init__(self):
        self.n = 0


async def _read(reader: asyncio.StreamReader, n: int, timeout: float) -> bytes:
    async with asyncio.timeout(timeout):
        data = await reader.read(n)
    if not data:
        raise PeerClosed("connection closed inside a message body")
    return data


async def relay_fixed(reader, writer, length: int, *, timeout: float, counter: Counter | None = None,
                      prefix: bytes = b"") -> None:
    """Copy exactly `length` body bytes; `prefix` (a message head) goes out with the first piece so a
    small response costs one write."""
    while length > 0:
        data = await _read(reader, min(length, READ_SIZE), timeout)
        length -= len(data)
        if prefix:
            writer.write(prefix + data)
            prefix = b""
        else:
            writer.write(data)
        if counter is not None:
            counter.n += len(data)
        await writer.drain()
    if prefix:
        writer.write(prefix)
        await writer.drain()


async def relay_until_close(reader, writer, *, timeout: float, chunked_out: bool,
                            counter: Counter | None = None) -> None:
    """Copy a body delimited by the connection closing; re-frame it as chunked if asked."""
    while True:
        async with asyncio.timeout(timeout):
            data = await reader.read(READ_SIZE)
        if not data:
            break
        writer.write(b"%x\r\n%s\r\n" % (len(data), data) if chunked_out else data)
        if counter is not None:
            counter.n += len(data)
        await writer.drain()
    if chunked_out:
        writer.write(b"0\r\n\r\n")
        await writer.drain()


async def relay_chunked(reader, writer, *, timeout: float, counter: Counter | None = None,
                        strict: bool = True, max_line: int = 4096, chunked_out: bool = True) -> None:
    """Copy a chunked body chunk by chunk, re-encoding each size line (extensions and trailers are
    dropped: they are per-hop in practice and a classic smuggling vector). `chunked_out=False`
    writes the bare data (for an HTTP/1.0 client)."""
    while True:
        async with asyncio.timeout(timeout):
            try:
                line = await reader.readuntil(b"\n")
            except asyncio.IncompleteReadError:
                raise PeerClosed("connection closed inside a chunked body") from None
            except asyncio.LimitOverrunError:
                raise HttpError(400, "chunk size line too long") from None
        if len(line) > max_line:
            raise HttpError(400, "chunk size line too long")
        if line.endswith(b"\r\n"):
            line = line[:-2]
        elif strict:
            raise HttpError(400, "bare LF in chunked framing")
        else:
            line = line[:-1]
        m = CHUNK_SIZE_RE.fullmatch(line)
        if m is None:
            raise HttpError(400, "malformed chunk size")
        size = int(m.group(1), 16)
        if size == 0:
            await _skip_trailers(reader, timeout=timeout, strict=strict)
            if chunked_out:
                writer.write(b"0\r\n\r\n")
            await writer.drain()
            return
        if chunked_out:
            writer.write(b"%x\r\n" % size)
        await relay_fixed(reader, writer, size, timeout=timeout, counter=counter)
        async with asyncio.timeout(timeout):
            try:
                end = await reader.readuntil(b"\n")
            except asyncio.IncompleteReadError:
                raise PeerClosed("connection closed inside a chunked body") from None
            except asyncio.LimitOverrunError:
                raise HttpError(400, "chunk data not followed by CRLF") from None
        if end != b"\r\n" and (strict or end != b"\n"):
            raise HttpError(400, "chunk data not followed by CRLF")
        if chunked_out:
            writer.write(b"\r\n")


async def _skip_trailers(reader, *, timeout: float, strict: bool) -> None:
    total = 0
    while True:
        async with asyncio.timeout(timeout):
            try:
                line = await reader.readuntil(b"\n")
            except asyncio.IncompleteReadError:
                raise PeerClosed("connection closed inside chunked trailers") from None
            except asyncio.LimitOverrunError:
                raise HttpError(400, "trailer line too long") from None
        total += len(line)
        if total > 16384:
            raise HttpError(400, "trailers too large")
        if strict and not line.endswith(b"\r\n"):
            raise HttpError(400, "bare LF in trailers")
        if line in (b"\r\n", b"\n"):
            return
