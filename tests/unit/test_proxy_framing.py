"""Framing and connection hygiene through an in-process proxy (both paths) in front of a scripted
upstream on loopback: what the upstream receives, what the client receives, and which upstream
connection served what."""

from __future__ import annotations

import asyncio
import io
import re

import pytest

from cocalc_ctl.proxy.metrics import AccessLog
from cocalc_ctl.proxy.routing import Route
from cocalc_ctl.proxy.server import Settings, serve

PID = "1b4e28ba-2fa1-41d2-883f-0016d3cca427"
PID2 = "2b4e28ba-2fa1-41d2-883f-0016d3cca427"


class Routes:
    def __init__(self, port: int):
        self.port = port

    async def start(self):
        pass

    async def close(self):
        pass

    def resolve_now(self, project_id):
        return Route("127.0.0.1", self.port)

    async def resolve(self, project_id):
        return self.resolve_now(project_id)


class Upstream:
    """Reads request heads (and Content-Length bodies); answers with `script(conn_no, req_no, head)`."""

    def __init__(self, script):
        self.script = script
        self.requests: list[tuple[int, bytes, bytes]] = []  # (connection number, head, body)
        self.conns = 0

    async def handle(self, reader, writer):
        self.conns += 1
        conn = self.conns
        n = 0
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                m = re.search(rb"\r\ncontent-length: (\d+)", head, re.I)
                body = await reader.readexactly(int(m.group(1))) if m else b""
                self.requests.append((conn, head, body))
                n += 1
                writer.write(self.script(conn, n, head))
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()


async def _run(script, client_bytes: bytes, *, fast: bool, expect_responses: int, settings=None):
    up = Upstream(script)
    server = await asyncio.start_server(up.handle, "127.0.0.1", 0)
    up_port = server.sockets[0].getsockname()[1]
    log = io.StringIO()
    ready = asyncio.get_running_loop().create_future()
    stop = asyncio.Event()
    s = settings or Settings(upstream_timeout=3, idle_timeout=3, header_timeout=3, fast_path=fast)
    s.fast_path = fast
    task = asyncio.create_task(serve(Routes(up_port), s, "127.0.0.1", 0, AccessLog(True, False, log),
                                     ready=lambda h, p: ready.set_result(p), stop=stop))
    port = await ready
    try:
        r, w = await asyncio.open_connection("127.0.0.1", port)
        w.write(client_bytes)
        await w.drain()
        got = b""
        async with asyncio.timeout(8):
            while got.count(b"HTTP/1.1 ") < expect_responses or not _complete(got):
                data = await r.read(65536)
                if not data:
                    break
                got += data
            # anything more within a moment (a glued-on extra response) is caught too
            try:
                async with asyncio.timeout(0.3):
                    while data := await r.read(65536):
                        got += data
            except TimeoutError:
                pass
        w.close()
    finally:
        stop.set()
        await task
        server.close()
    return got, up, log.getvalue()


def _complete(data: bytes) -> bool:
    """Every response in `data` has its whole Content-Length body."""
    pos = 0
    while True:
        i = data.find(b"HTTP/1.1 ", pos)
        if i < 0:
            return True
        end = data.find(b"\r\n\r\n", i)
        if end < 0:
            return False
        m = re.search(rb"\r\ncontent-length: (\d+)", data[i:end + 2], re.I)
        n = int(m.group(1)) if m else 0
        if len(data) < end + 4 + n:
            return False
        pos = end + 4 + n


def _statuses(data: bytes) -> list[int]:
    return [int(x) for x in re.findall(rb"HTTP/1\.1 (\d{3}) ", data)]


def ok(body: bytes = b"fresh") -> bytes:
    return b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body)


GET = f"GET /{PID}/x HTTP/1.1\r\nHost: a\r\n\r\n".encode()
paths = pytest.mark.parametrize("fast", [True, False], ids=["fast-path", "streams-only"])


@paths
def test_request_connection_content_length_cannot_smuggle(fast):
    smuggled = f"GET /{PID}/../../secret HTTP/1.1\r\nHost: a\r\n\r\n".encode()
    req = (f"POST /{PID}/x HTTP/1.1\r\nHost: a\r\nConnection: content-length\r\nContent-Length: {len(smuggled)}\r\n\r\n"
           .encode() + smuggled)
    got, up, _ = asyncio.run(_run(lambda c, n, h: ok(), req + GET, fast=fast, expect_responses=1))
    assert _statuses(got) == [400] and up.requests == []


@paths
def test_request_body_reaches_the_upstream_with_the_proxy_s_own_length(fast):
    req = f"POST /{PID}/x HTTP/1.1\r\nHost: a\r\nContent-Length: 05\r\nConnection: x-drop\r\nX-Drop: 1\r\n\r\nhello".encode()
    got, up, _ = asyncio.run(_run(lambda c, n, h: ok(), req + GET, fast=fast, expect_responses=2))
    assert _statuses(got) == [200, 200]
    assert [r[2] for r in up.requests] == [b"hello", b""]
    first = up.requests[0][1].lower()
    assert first.count(b"content-length") == 1 and b"content-length: 5\r\n" in first and b"x-drop" not in first


@paths
def test_response_connection_content_length_is_a_502_and_nothing_is_glued(fast):
    def script(c, n, h):
        if n == 1:
            return b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nConnection: content-length\r\n\r\nAAAAA"
        return ok()
    got, up, log = asyncio.run(_run(script, GET + GET, fast=fast, expect_responses=1))
    assert _statuses(got)[0] == 502 and b"AAAAA" not in got
    assert "502" in log and "Traceback" not in log


@paths
def test_body_on_a_204_is_never_served_to_the_next_request(fast):
    def script(c, n, h):
        if c == 1 and n == 1:
            return b"HTTP/1.1 204 No Content\r\n\r\n" + ok(b"STALE")
        return ok()
    got, up, _ = asyncio.run(_run(script, GET + GET, fast=fast, expect_responses=2))
    assert _statuses(got) == [204, 200] and b"STALE" not in got and b"fresh" in got
    assert [r[0] for r in up.requests] == [1, 2]  # the second request went to a fresh connection


@paths
def test_bytes_past_the_content_length_close_the_upstream_connection(fast):
    def script(c, n, h):
        return ok(b"one") + ok(b"STALE") if c == 1 else ok()
    got, up, _ = asyncio.run(_run(script, GET + GET, fast=fast, expect_responses=2))
    assert _statuses(got) == [200, 200] and b"STALE" not in got
    assert [r[0] for r in up.requests] == [1, 2]


@paths
@pytest.mark.parametrize("interim", [b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: x\r\nConnection: upgrade\r\n\r\n",
                                     b"HTTP/1.1 100 Continue\r\n\r\n", b"HTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\n"])
def test_interim_response_not_asked_for_is_a_502_and_the_connection_is_dropped(fast, interim):
    def script(c, n, h):
        return interim + ok(b"STALE") if c == 1 else ok()
    got, up, log = asyncio.run(_run(script, GET + GET, fast=fast, expect_responses=1))
    assert _statuses(got)[0] == 502 and b"STALE" not in got and b"HTTP/1.1 10" not in got
    assert "Traceback" not in log
    assert all(r[0] != 1 for r in up.requests[1:])


@paths
@pytest.mark.parametrize("head", [b"HTTP/1.1 200 OK\r\n" + b"X-A: b\r\n" * 300 + b"Content-Length: 0\r\n\r\n",
                                  b"HTTP/1.1 200 OK\r\nX-A: " + b"b" * 70000 + b"\r\nContent-Length: 0\r\n\r\n",
                                  b"HTTP/1.1 200 OK\r\nX-A: " + b"b" * 70000])
def test_oversized_upstream_head_is_a_logged_502_without_traceback(fast, head):
    got, up, log = asyncio.run(_run(lambda c, n, h: head, GET, fast=fast, expect_responses=1))
    assert _statuses(got) == [502] and b"X-A" not in got
    assert "Traceback" not in log and " 502 " in log


@paths
def test_client_forwarded_fields_are_replaced_and_spoofing_fields_dropped(fast):
    req = (f"GET /{PID}/x HTTP/1.1\r\nHost: a\r\nX-Forwarded-For: 6.6.6.6\r\nX-Forwarded-Host: evil\r\n"
           "X_Forwarded_Host: evil\r\nForwarded: for=6.6.6.6\r\nX-Real-IP: 6.6.6.6\r\nConnection: host\r\n\r\n").encode()
    got, up, _ = asyncio.run(_run(lambda c, n, h: ok(), req, fast=fast, expect_responses=1))
    head = up.requests[0][1].lower()
    assert _statuses(got) == [200]
    assert b"6.6.6.6" not in head and b"evil" not in head and b"\r\nhost: a\r\n" in head
    assert b"x-forwarded-for: 127.0.0.1\r\n" in head


@paths
def test_connect_and_trace_are_405_and_never_forwarded(fast):
    for req in (b"CONNECT 127.0.0.1:1 HTTP/1.1\r\nHost: 127.0.0.1:1\r\n\r\n",
                f"TRACE /{PID}/x HTTP/1.1\r\nHost: a\r\n\r\n".encode()):
        got, up, _ = asyncio.run(_run(lambda c, n, h: ok(), req, fast=fast, expect_responses=1))
        assert _statuses(got) == [405] and up.requests == []


@paths
def test_projects_never_share_an_upstream_connection(fast):
    other = f"GET /{PID2}/x HTTP/1.1\r\nHost: a\r\n\r\n".encode()
    got, up, _ = asyncio.run(_run(lambda c, n, h: ok(), GET + other + GET, fast=fast, expect_responses=3))
    assert _statuses(got) == [200, 200, 200]
    by_conn = {}
    for conn, head, _ in up.requests:
        by_conn.setdefault(conn, set()).add(head.split(b"/")[1])
    assert all(len(v) == 1 for v in by_conn.values()), by_conn


@paths
def test_plain_get_is_served_by_the_fast_path_when_it_is_on(fast):
    """The hot path must not regress: a body-less GET with a Content-Length answer stays on the fast path."""
    metrics = b"GET /metrics HTTP/1.1\r\nHost: a\r\n\r\n"
    got, up, _ = asyncio.run(_run(lambda c, n, h: ok(), GET + GET + metrics, fast=fast, expect_responses=3))
    assert _statuses(got) == [200, 200, 200]
    text = got.decode()
    fast_n = int(re.search(r'cocalc_proxy_path_requests_total\{path="fast"\} (\d+)', text).group(1))
    stream_n = int(re.search(r'cocalc_proxy_path_requests_total\{path="stream"\} (\d+)', text).group(1))
    assert (fast_n, stream_n) == ((2, 0) if fast else (0, 2))
    assert re.search(r'cocalc_proxy_event_loop_info\{loop="(uvloop|asyncio)"\} 1', text)


@paths
@pytest.mark.parametrize("trusted", [True, False], ids=["trusted-peer", "untrusted-peer"])
def test_a_trusted_front_proxy_gets_room_for_the_fields_it_adds(fast, trusted):
    from cocalc_ctl.proxy.policy import FORWARD_BUDGET_FIELDS

    # + Host + X-Forwarded-For = max_headers + the budget (forwarded fields, account, hub credential)
    extra = b"".join(b"X-F%d: v\r\n" % i for i in range(10 + FORWARD_BUDGET_FIELDS - 2))
    req = f"GET /{PID}/x HTTP/1.1\r\nHost: a\r\n".encode() + extra + b"X-Forwarded-For: 198.51.100.7\r\n\r\n"
    s = Settings(upstream_timeout=3, idle_timeout=3, header_timeout=3, max_headers=10,
                 trust_forwarded=("127.0.0.0/8",) if trusted else ())
    got, up, _ = asyncio.run(_run(lambda c, n, h: ok(), req, fast=fast, expect_responses=1, settings=s))
    if trusted:
        assert _statuses(got) == [200]
        assert b"x-forwarded-for: 198.51.100.7, 127.0.0.1\r\n" in up.requests[0][1]
        one_more = req[:-2] + b"X-Over: 1\r\n\r\n"  # the budget is a few fields, not unlimited
        got, up, _ = asyncio.run(_run(lambda c, n, h: ok(), one_more, fast=fast, expect_responses=1, settings=s))
        assert _statuses(got) == [431] and up.requests == []
    else:
        assert _statuses(got) == [431] and up.requests == []


def test_stream_pool_closes_an_idle_connection_the_upstream_closed_at_once():
    """No descriptor waits in CLOSE_WAIT for the sweep: EOF (or a stray byte) while idle closes it."""
    from cocalc_ctl.proxy.pool import StreamPool

    async def main():
        conns = []

        async def upstream(reader, writer):
            conns.append(writer)

        server = await asyncio.start_server(upstream, "127.0.0.1", 0)
        key = ("127.0.0.1", server.sockets[0].getsockname()[1], PID)
        pool = StreamPool(max_idle=8, idle_ttl=3600, limit=65536)
        readers = []
        for _ in range(3):
            r, w = await pool.open(key, 5)
            readers.append((r, w))
        for r, w in readers:
            pool.release(key, r, w)
        await asyncio.sleep(0.1)
        assert pool.idle_count() == 3
        conns[0].close()               # the upstream closes one idle connection
        conns[1].write(b"HTTP/1.1 200 OK\r\n")  # and sends a stray byte on another
        await asyncio.sleep(0.3)
        assert pool.idle_count() == 1
        closed = [w.is_closing() for _, w in readers]
        assert closed.count(True) == 2
        r, w, reused = await pool.acquire(key, 5)  # the live one, usable (its watcher stopped)
        assert reused and not w.is_closing()
        w.write(b"x")
        await w.drain()
        pool.release(key, r, w)
        pool.close()
        server.close()
        for c in conns:
            c.close()

    asyncio.run(main())
