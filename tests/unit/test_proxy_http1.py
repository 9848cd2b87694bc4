"""Request/response head parsing, target validation and route-table pieces of the proxy (no network)."""

from __future__ import annotations

import asyncio

import pytest

from cocalc_ctl.proxy import bodies, http1, policy
from cocalc_ctl.proxy.http1 import HttpError, parse_request_head, parse_response_head
from cocalc_ctl.proxy.routing import HubRoutes, Route, parse_internal_url, project_from_target

PID = "1b4e28ba-2fa1-41d2-883f-0016d3cca427"


def _req(text: bytes):
    return parse_request_head(text.split(b"\r\n"))


def test_request_head_fields():
    head = _req(b"POST /x HTTP/1.1\r\nHost: a\r\nContent-Length: 12\r\nConnection: close\r\nX-A:  b ")
    assert (head.method, head.target, head.version, head.host) == (b"POST", b"/x", 11, b"a")
    assert head.content_length == 12 and not head.chunked and head.keep_alive is False
    assert head.headers[-1] == (b"x-a", b"X-A", b"b")


def test_upgrade_needs_connection_token():
    assert _req(b"GET /x HTTP/1.1\r\nHost: a\r\nUpgrade: websocket").upgrade is None
    assert _req(b"GET /x HTTP/1.1\r\nHost: a\r\nUpgrade: websocket\r\nConnection: Upgrade").upgrade == b"websocket"


def test_http10_keep_alive_only_when_asked():
    assert _req(b"GET /x HTTP/1.0").keep_alive is False
    assert _req(b"GET /x HTTP/1.0\r\nConnection: keep-alive").keep_alive is True


@pytest.mark.parametrize("raw,status", [
    (b"GET /x HTTP/1.1\r\nHost: a\r\nHost: a", 400),
    (b"GET /x HTTP/1.1\r\nHost: a\r\nContent-Length: 1\r\nTransfer-Encoding: chunked", 400),
    (b"GET /x HTTP/1.1\r\nHost: a\r\nContent-Length: 1\r\nContent-Length: 1", 400),
    (b"GET /x HTTP/1.1\r\nHost: a\r\nContent-Length: 0x1", 400),
    (b"GET /x HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip, chunked", 501),
    (b"GET /x HTTP/1.1\r\nHost: a\r\n folded", 400),
    (b"GET /x HTTP/1.1\r\nHost: a\r\nBad Name: x", 400),
    (b"GET /x HTTP/1.1\r\nHost: a\r\nX: a\x01b", 400),
    (b"GET /x HTTP/3", 400),
    (b"GET /x HTTP/1.2\r\nHost: a", 505),
    (b"GET /x HTTP/1.1", 400),
])
def test_request_head_rejections(raw, status):
    with pytest.raises(HttpError) as info:
        _req(raw)
    assert info.value.status == status


def test_response_head_te_overrides_length_and_hop_by_hop_are_dropped():
    resp = parse_response_head([b"HTTP/1.1 200 OK", b"Content-Length: 5", b"Transfer-Encoding: chunked",
                                b"Connection: X-Secret", b"X-Secret: 1", b"X-Keep: 2"])
    assert resp.chunked and resp.content_length is None
    assert resp.keep_alive is False  # both framings: never reused
    out = policy.client_response_head(resp, *policy.plan_response(_req(b"GET /x HTTP/1.1\r\nHost: a"), resp)[:3])
    names = [line.split(b":")[0].lower() for line in out.split(b"\r\n")[1:-2]]
    assert names == [b"x-keep", b"transfer-encoding"]  # the proxy's own framing; the client may keep its connection


def test_response_head_conflicting_lengths_are_refused():
    with pytest.raises(http1.UpstreamProtocolError):
        parse_response_head([b"HTTP/1.1 200 OK", b"Content-Length: 5", b"Content-Length: 6"])
    assert parse_response_head([b"HTTP/1.1 200 OK", b"Content-Length: 5, 5"]).content_length == 5


@pytest.mark.parametrize("target,status", [
    (b"http://h/" + PID.encode(), 400), (b"//h/" + PID.encode(), 400), (b"*", 400),
    (f"/{PID}/../x".encode(), 400), (f"/{PID}/%2E%2e/x".encode(), 400), (f"/{PID}%2Fx".encode(), 400),
    (f"/{PID}/a\\b".encode(), 400), (f"/{PID}/a b".encode(), 400), (f"/{PID}/#x".encode(), 400),
    (f"/{PID.upper()}/x".encode(), 404), (b"/healthz2", 404), (b"/", 404),
])
def test_hostile_targets(target, status):
    with pytest.raises(HttpError) as info:
        project_from_target(target)
    assert info.value.status == status


def test_valid_targets_keep_their_project():
    assert project_from_target(f"/{PID}".encode()) == PID
    assert project_from_target(f"/{PID}/port/8888/lab?x=../y".encode()) == PID  # dots in the query are data


@pytest.mark.parametrize("url,expected", [
    ("http://10.0.0.5:8080", ("10.0.0.5", 8080)), ("http://host-a.internal:80/", ("host-a.internal", 80)),
    ("http://[::1]:9000", ("::1", 9000)), ("https://a:1", None), ("http://a:1/prefix", None),
    ("http://a", None), ("http://u@a:1", None), ("http://a:70000", None), (None, None), ("", None),
])
def test_internal_url_parsing(url, expected):
    assert parse_internal_url(url) == expected


def test_hub_cache_eviction_by_project_and_host():
    async def go():
        from cocalc_ctl.proxy.http1 import HttpError

        routes = HubRoutes("dbname=none", ttl=60)
        routes._cache.put(PID, (1e18, Route("a", 1, "h1")), positive=True)
        routes._cache.put("other", (1e18, Route("b", 2, "h2")), positive=True)
        routes._cache.put("gone", (1e18, HttpError(404, "no such project")), positive=False)
        routes.evict("host:h1")
        assert list(routes._cache.pos.d) == ["other"] and len(routes._cache.neg) == 0
        routes.evict("other")
        assert len(routes._cache) == 0
        routes._cache.put(PID, (1e18, Route("a", 1, "h1")), positive=True)
        routes.evict("anything else")
        assert len(routes._cache) == 0

    asyncio.run(go())


def _tb_len(exc) -> int:
    n, tb = 0, exc.__traceback__
    while tb is not None:
        n, tb = n + 1, tb.tb_next
    return n


def test_hub_route_cached_refusal_does_not_grow_with_each_request():
    """A cached 404 is answered many times until it expires; raising the cached instance itself would chain
    every request's frames onto its traceback (memory growing with request rate x TTL, not the bound)."""
    class Link:
        listening = True
        db_errors = 0

        def subscribe(self, *a):
            pass

        async def fetchone(self, sql, params):
            return None  # no such project

    async def go():
        routes = HubRoutes(Link(), ttl=60)
        seen = []
        for _ in range(50):
            try:
                await routes.resolve(PID)
            except HttpError as exc:
                seen.append(exc.status)
            try:
                routes.resolve_now(PID)
            except HttpError as exc:
                seen.append(exc.status)
        assert seen == [404] * 100 and routes.lookups == 1
        (_, cached), = routes._cache.neg.d.values()
        assert isinstance(cached, HttpError) and _tb_len(cached) == 0

    asyncio.run(go())


def test_chunked_relay_reencodes_and_drops_extensions_and_trailers():
    async def go():
        reader = asyncio.StreamReader()
        reader.feed_data(b"5;ext=1\r\nhello\r\n0\r\nX-Trailer: 1\r\n\r\n")
        reader.feed_eof()
        out = []

        class W:
            def write(self, d):
                out.append(d)

            async def drain(self):
                pass

        await bodies.relay_chunked(reader, W(), timeout=1)
        return b"".join(out)

    assert asyncio.run(go()) == b"5\r\nhello\r\n0\r\n\r\n"
