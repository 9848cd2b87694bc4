"""A loopback project backend for the proxy tests: plain asyncio, so every framing is under our control.

Run: python -m tests.support.proxy_backend --port N [--canary FILE] [--name TAG]
Endpoints live under any prefix (the proxy forwards `/<project_id>/...` unchanged); the last path
segment picks the behaviour:
  info        JSON of method, target, headers (what the proxy sent)
  download    ?size=N bytes, Content-Length framed
  upload      reads the body (length or chunked), answers {"bytes", "crc32"}
  echo        streams the body straight back, chunked, while still reading it
  chunked     ?n=K chunked response of K chunks
  sse         ?n=K server-sent events, 20 ms apart
  slow        ?delay=S seconds of silence before answering
  reject      413 at once without reading the body (then a lingering close)
  ws          WebSocket echo (text and binary, answers ping, echoes close)
  page        an HTML page whose script does a WebSocket round trip and writes the result into the DOM
With --canary FILE every request line received is appended to FILE (the canary must never be hit).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import hashlib
import json
import struct
import zlib
from urllib.parse import parse_qs, urlsplit

WS_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
BLOCK = bytes(range(256)) * 256  # 64 KiB

PAGE = b"""<!doctype html><html><head><title>proxy test</title></head><body>
<div id="result">pending</div>
<script>
const url = (location.protocol === 'https:' ? 'wss://' : 'ws://') + location.host + location.pathname.replace(/page$/, 'ws');
const ws = new WebSocket(url);
ws.onopen = () => ws.send('ping-from-browser');
ws.onmessage = (ev) => { document.getElementById('result').textContent = 'echo:' + ev.data; ws.close(); };
ws.onerror = () => { document.getElementById('result').textContent = 'error'; };
</script></body></html>"""


async def read_head(reader):
    lines = []
    while True:
        line = await reader.readuntil(b"\r\n")
        if line == b"\r\n":
            return lines
        lines.append(line[:-2].decode("latin-1"))


async def read_body(reader, headers):
    """Yield body pieces (length or chunked)."""
    if headers.get("transfer-encoding", "").lower() == "chunked":
        while True:
            size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
            if size == 0:
                while (await reader.readuntil(b"\r\n")) != b"\r\n":
                    pass
                return
            while size:
                data = await reader.read(min(size, 65536))
                if not data:
                    raise ConnectionError("eof in chunk")
                size -= len(data)
                yield data
            await reader.readexactly(2)
    else:
        n = int(headers.get("content-length", "0"))
        while n:
            data = await reader.read(min(n, 65536))
            if not data:
                raise ConnectionError("eof in body")
            n -= len(data)
            yield data


def respond(writer, status, body=b"", ctype="application/json", extra=""):
    writer.write(f"HTTP/1.1 {status} X\r\ncontent-type: {ctype}\r\ncontent-length: {len(body)}\r\n{extra}\r\n"
                 .encode() + body)


async def websocket(reader, writer, headers):
    key = headers["sec-websocket-key"].encode()
    accept = base64.b64encode(hashlib.sha1(key + WS_GUID).digest()).decode()
    writer.write(("HTTP/1.1 101 Switching Protocols\r\nupgrade: websocket\r\nconnection: Upgrade\r\n"
                  f"sec-websocket-accept: {accept}\r\n\r\n").encode())
    await writer.drain()
    while True:
        try:
            b1, b2 = await reader.readexactly(2)
        except asyncio.IncompleteReadError:
            return
        opcode, masked, n = b1 & 0x0F, b2 & 0x80, b2 & 0x7F
        if n == 126:
            n = struct.unpack("!H", await reader.readexactly(2))[0]
        elif n == 127:
            n = struct.unpack("!Q", await reader.readexactly(8))[0]
        mask = await reader.readexactly(4) if masked else b"\0\0\0\0"
        payload = bytearray(await reader.readexactly(n))
        for i in range(n):
            payload[i] ^= mask[i % 4]
        if opcode == 0x9:
            opcode = 0xA
        elif opcode == 0xA:
            continue
        hdr = bytes([0x80 | opcode])
        hdr += bytes([n]) if n < 126 else (b"\x7e" + struct.pack("!H", n) if n < 65536 else b"\x7f" + struct.pack("!Q", n))
        writer.write(hdr + bytes(payload))
        await writer.drain()
        if opcode == 0x8:
            writer.close()
            return


async def handle(reader, writer, canary, name_tag=None):
    try:
        while True:
            try:
                lines = await read_head(reader)
            except (asyncio.IncompleteReadError, ConnectionError):
                return
            if canary:
                with open(canary, "a") as fh:
                    fh.write(lines[0] + "\n")
            method, target, _ = lines[0].split(" ", 2)
            headers: dict[str, str] = {}
            raw_headers = []
            for line in lines[1:]:
                k, _, v = line.partition(":")
                headers[k.strip().lower()] = v.strip()
                raw_headers.append([k.strip(), v.strip()])
            url = urlsplit(target)
            q = {k: v[0] for k, v in parse_qs(url.query).items()}
            name = url.path.rsplit("/", 1)[-1]
            if name == "ws" and headers.get("upgrade", "").lower() == "websocket":
                await websocket(reader, writer, headers)
                return
            if name == "download":
                size = int(q.get("size", "0"))
                writer.write(f"HTTP/1.1 200 OK\r\ncontent-type: application/octet-stream\r\ncontent-length: {size}\r\n\r\n".encode())
                while size:
                    piece = BLOCK[:min(size, len(BLOCK))]
                    writer.write(piece)
                    size -= len(piece)
                    await writer.drain()
            elif name == "upload":
                n, crc = 0, 0
                async for data in read_body(reader, headers):
                    n += len(data)
                    crc = zlib.crc32(data, crc)
                respond(writer, 200, json.dumps({"bytes": n, "crc32": crc}).encode())
            elif name == "echo":
                writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: application/octet-stream\r\ntransfer-encoding: chunked\r\n\r\n")
                async for data in read_body(reader, headers):
                    writer.write(b"%x\r\n%s\r\n" % (len(data), data))
                    await writer.drain()
                writer.write(b"0\r\n\r\n")
            elif name == "chunked":
                writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ntransfer-encoding: chunked\r\n\r\n")
                for i in range(int(q.get("n", "3"))):
                    data = f"chunk {i}\n".encode()
                    writer.write(b"%x\r\n%s\r\n" % (len(data), data))
                    await writer.drain()
                writer.write(b"0\r\n\r\n")
            elif name == "sse":
                writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ncache-control: no-cache\r\n"
                             b"transfer-encoding: chunked\r\n\r\n")
                for i in range(int(q.get("n", "3"))):
                    data = f"id: {i}\ndata: event {i}\n\n".encode()
                    writer.write(b"%x\r\n%s\r\n" % (len(data), data))
                    await writer.drain()
                    await asyncio.sleep(0.02)
                writer.write(b"0\r\n\r\n")
            elif name == "slow":
                await asyncio.sleep(float(q.get("delay", "5")))
                respond(writer, 200, b"{}")
            elif name == "reject":
                respond(writer, 413, b'{"error": "too large"}', extra="connection: close\r\n")
                await writer.drain()
                writer.write_eof()
                try:  # lingering close, as real servers do, so the answer is not lost to a RST
                    async with asyncio.timeout(2):
                        while await reader.read(65536):
                            pass
                except TimeoutError:
                    pass
                writer.close()
                return
            elif name == "cookies":  # one Set-Cookie per X-Test-Set-Cookie request field; ?chunked=1: chunked
                cookies = "".join(f"set-cookie: {v}\r\n" for k, v in raw_headers if k.lower() == "x-test-set-cookie")
                if q.get("chunked"):
                    writer.write(f"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\n{cookies}"
                                 "transfer-encoding: chunked\r\n\r\n3\r\nok\n\r\n0\r\n\r\n".encode())
                else:
                    respond(writer, 200, b"ok\n", ctype="text/plain", extra=cookies)
            elif name == "page":
                respond(writer, 200, PAGE, ctype="text/html; charset=utf-8")
            else:
                peer = writer.get_extra_info("peername")
                body = json.dumps({"method": method, "target": target, "headers": raw_headers, "name": name_tag,
                                   "peer_port": peer[1]}).encode()
                async for _ in read_body(reader, headers):
                    pass
                respond(writer, 200, body)
            await writer.drain()
            if headers.get("connection", "").lower() == "close":
                return
    except (ConnectionError, asyncio.IncompleteReadError):
        pass
    finally:
        writer.close()


async def main(port: int, canary: str | None, name_tag: str | None) -> None:
    server = await asyncio.start_server(lambda r, w: handle(r, w, canary, name_tag), "127.0.0.1", port, backlog=1024)
    print("ready", flush=True)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--canary")
    ap.add_argument("--name", help="reported in the info answer (tells two backends apart)")
    args = ap.parse_args()
    try:
        import uvloop

        uvloop.run(main(args.port, args.canary, args.name))
    except ImportError:
        asyncio.run(main(args.port, args.canary, args.name))
