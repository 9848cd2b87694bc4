"""Hostile requests: smuggling, traversal, absolute URIs, header injection, oversized heads, slowloris.

A canary server listens on another loopback port that no project is registered on; every request
line it receives is recorded. No hostile request may reach it, none may crash the proxy, and none
may hang a client past the configured timeouts.
"""

from __future__ import annotations

import socket
import time
import uuid

import pytest

from tests.support.proxy import DIRECT, get_json, host_state, raw_exchange, start_backend, start_proxy, status_of

pytestmark = pytest.mark.integration

PID = str(uuid.uuid4())


@pytest.fixture(scope="module", params=[True, False], ids=["fast-path", "streams-only"])
def env(request, tmp_path_factory):
    work = tmp_path_factory.mktemp("proxy-hostile")
    canary_log = work / "canary.log"
    canary_log.touch()
    canary = start_backend(work, canary=canary_log)
    backend = start_backend(work, canary=work / "backend.log")
    host_state(work / "data", {PID: backend.port})
    proxy = start_proxy(work, "host", {"data_dir": str(work / "data"), "proxy": {
        "upstream_timeout": 2, "header_timeout": 2, "idle_timeout": 2, "max_header_bytes": 8192,
        "fast_path": request.param, **DIRECT}})
    try:
        yield {"work": work, "canary": canary, "canary_log": canary_log, "backend": backend, "proxy": proxy}
    finally:
        proxy.stop()
        backend.stop()
        canary.stop()
    assert canary_log.read_text() == "", "the canary was reached"


def _c(env) -> int:
    return env["canary"].port


# (name, request bytes with {pid} and {canary}, expected status)
HOSTILE = [
    ("absolute-form", b"GET http://127.0.0.1:{canary}/{pid}/info HTTP/1.1\r\nHost: 127.0.0.1:{canary}\r\n\r\n", 400),
    ("absolute-form-https", b"GET https://evil.example/{pid}/info HTTP/1.1\r\nHost: x\r\n\r\n", 400),
    ("authority-form", b"CONNECT 127.0.0.1:{canary} HTTP/1.1\r\nHost: 127.0.0.1:{canary}\r\n\r\n", 405),
    ("asterisk-form", b"OPTIONS * HTTP/1.1\r\nHost: x\r\n\r\n", 400),
    ("protocol-relative", b"GET //127.0.0.1:{canary}/{pid}/info HTTP/1.1\r\nHost: x\r\n\r\n", 400),
    ("dot-dot", b"GET /{pid}/../info HTTP/1.1\r\nHost: x\r\n\r\n", 400),
    ("dot-dot-first", b"GET /../{pid}/info HTTP/1.1\r\nHost: x\r\n\r\n", 400),
    ("dot-segment", b"GET /{pid}/./info HTTP/1.1\r\nHost: x\r\n\r\n", 400),
    ("encoded-dots", b"GET /{pid}/%2e%2e/info HTTP/1.1\r\nHost: x\r\n\r\n", 400),
    ("encoded-dots-upper", b"GET /{pid}/%2E%2E/info HTTP/1.1\r\nHost: x\r\n\r\n", 400),
    ("encoded-slash", b"GET /{pid}%2f..%2finfo HTTP/1.1\r\nHost: x\r\n\r\n", 400),
    ("encoded-backslash", b"GET /{pid}/..%5cinfo HTTP/1.1\r\nHost: x\r\n\r\n", 400),
    ("backslash", b"GET /{pid}\\..\\info HTTP/1.1\r\nHost: x\r\n\r\n", 400),
    ("encoded-nul", b"GET /{pid}/info%00 HTTP/1.1\r\nHost: x\r\n\r\n", 400),
    ("fragment", b"GET /{pid}/info#x HTTP/1.1\r\nHost: x\r\n\r\n", 400),
    ("non-ascii-target", b"GET /{pid}/\xff HTTP/1.1\r\nHost: x\r\n\r\n", 400),
    ("uppercase-uuid", b"GET /{PID}/info HTTP/1.1\r\nHost: x\r\n\r\n", 404),
    ("uuid-with-junk", b"GET /{pid}x/info HTTP/1.1\r\nHost: x\r\n\r\n", 404),
    ("port-in-path", b"GET /127.0.0.1:{canary}/info HTTP/1.1\r\nHost: x\r\n\r\n", 404),
    ("unregistered-uuid", b"GET /" + str(uuid.uuid4()).encode() + b"/info HTTP/1.1\r\nHost: x\r\n\r\n", 404),
    ("duplicate-host", b"GET /{pid}/info HTTP/1.1\r\nHost: a\r\nHost: 127.0.0.1:{canary}\r\n\r\n", 400),
    ("missing-host", b"GET /{pid}/info HTTP/1.1\r\n\r\n", 400),
    ("host-with-userinfo", b"GET /{pid}/info HTTP/1.1\r\nHost: a@127.0.0.1:{canary}\r\n\r\n", 400),
    ("cl-and-te", b"POST /{pid}/upload HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n"
                  b"0\r\n\r\nGET /{pid}/smuggled HTTP/1.1\r\nHost: x\r\n\r\n", 400),
    ("te-and-cl", b"POST /{pid}/upload HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nContent-Length: 60\r\n\r\n"
                  b"0\r\n\r\n", 400),
    ("double-cl", b"POST /{pid}/upload HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nContent-Length: 40\r\n\r\nhello", 400),
    ("list-cl", b"POST /{pid}/upload HTTP/1.1\r\nHost: x\r\nContent-Length: 5, 5\r\n\r\nhello", 400),
    ("signed-cl", b"POST /{pid}/upload HTTP/1.1\r\nHost: x\r\nContent-Length: +5\r\n\r\nhello", 400),
    ("te-identity", b"POST /{pid}/upload HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: identity, chunked\r\n\r\n0\r\n\r\n", 501),
    ("te-chunked-twice", b"POST /{pid}/upload HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked, chunked\r\n\r\n0\r\n\r\n", 501),
    ("te-xchunked", b"POST /{pid}/upload HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: xchunked\r\n\r\n0\r\n\r\n", 501),
    ("te-in-http10", b"POST /{pid}/upload HTTP/1.0\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", 400),
    ("space-before-colon", b"GET /{pid}/info HTTP/1.1\r\nHost: x\r\nTransfer-Encoding : chunked\r\n\r\n", 400),
    ("obs-fold", b"GET /{pid}/info HTTP/1.1\r\nHost: x\r\nX-A: a\r\n b\r\n\r\n", 400),
    ("obs-fold-te", b"POST /{pid}/upload HTTP/1.1\r\nHost: x\r\nTransfer-Encoding:\r\n chunked\r\n\r\n0\r\n\r\n", 400),
    ("bare-lf", b"GET /{pid}/info HTTP/1.1\nHost: x\n\n", 400),
    ("bare-lf-in-headers", b"GET /{pid}/info HTTP/1.1\r\nHost: x\nX-A: b\r\n\r\n", 400),
    ("bare-cr", b"GET /{pid}/info HTTP/1.1\r\nHost: x\rX-Injected: 1\r\n\r\n", 400),
    ("nul-in-header", b"GET /{pid}/info HTTP/1.1\r\nHost: x\r\nX-A: a\x00b\r\n\r\n", 400),
    ("header-without-colon", b"GET /{pid}/info HTTP/1.1\r\nHost: x\r\nX-A\r\n\r\n", 400),
    ("bad-method", b"G(T /{pid}/info HTTP/1.1\r\nHost: x\r\n\r\n", 400),
    ("extra-space-request-line", b"GET  /{pid}/info HTTP/1.1\r\nHost: x\r\n\r\n", 400),
    ("http09", b"GET /{pid}/info\r\n\r\n", 400),
    ("http2-version", b"GET /{pid}/info HTTP/2.0\r\nHost: x\r\n\r\n", 505),
    ("garbage-version", b"GET /{pid}/info HTTQ/1.1\r\nHost: x\r\n\r\n", 400),
    ("oversized-header", b"GET /{pid}/info HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 20000 + b"\r\n\r\n", 431),
    ("too-many-headers", b"GET /{pid}/info HTTP/1.1\r\nHost: x\r\n" + b"X-A: b\r\n" * 150 + b"\r\n", 431),
    ("bad-chunk-size", b"POST /{pid}/upload HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n-1\r\nx\r\n0\r\n\r\n", 400),
    ("chunk-size-prefix", b"POST /{pid}/upload HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n0x5\r\nhello\r\n0\r\n\r\n", 400),
    ("chunk-size-overflow", b"POST /{pid}/upload HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
                            b"fffffffffffffffff1\r\nx\r\n0\r\n\r\n", 400),
    ("chunk-bare-lf", b"POST /{pid}/upload HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n5\nhello\r\n0\r\n\r\n", 400),
    ("chunk-missing-crlf", b"POST /{pid}/upload HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhelloX\r\n0\r\n\r\n", 400),
]


@pytest.mark.parametrize("name,request_bytes,expected", HOSTILE, ids=[h[0] for h in HOSTILE])
def test_hostile_request_is_refused_and_never_reaches_the_canary(env, name, request_bytes, expected):
    data = (request_bytes.replace(b"{pid}", PID.encode()).replace(b"{PID}", PID.upper().encode())
            .replace(b"{canary}", str(_c(env)).encode()))
    t = time.monotonic()
    resp = raw_exchange(env["proxy"].port, data, timeout=6)
    assert time.monotonic() - t < 5, "the proxy held the connection open"
    assert status_of(resp) == expected, resp[:300]
    assert resp.count(b"HTTP/1.1 ") == 1, "a second (smuggled) response followed"
    assert env["canary_log"].read_text() == ""
    assert env["proxy"].alive()


def test_smuggled_request_after_error_is_not_executed(env):
    """After a refused request the connection closes, so bytes behind it never become a request."""
    backend_log = env["work"] / "backend.log"
    before = backend_log.read_text() if backend_log.exists() else ""
    raw_exchange(env["proxy"].port, (f"POST /{PID}/upload HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n"
                                     f"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET /{PID}/smuggled HTTP/1.1\r\n"
                                     "Host: x\r\n\r\n").encode())
    after = backend_log.read_text() if backend_log.exists() else ""
    assert "smuggled" not in after[len(before):]


def test_injected_header_lines_cannot_reach_the_backend(env):
    status, info = get_json(env["proxy"].port, f"/{PID}/info", headers={"X-Ok": "value"})
    assert status == 200
    names = [k.lower() for k, _ in info["headers"]]
    assert names.count("host") == 1 and names.count("x-forwarded-for") == 1


def test_slowloris_head_is_cut_off_after_header_timeout(env):
    t = time.monotonic()
    with socket.create_connection(("127.0.0.1", env["proxy"].port), timeout=10) as s:
        s.sendall(f"GET /{PID}/info HTTP/1.1\r\n".encode())
        closed = False
        for i in range(40):  # one header byte every 0.25 s: far slower than header_timeout allows
            try:
                s.sendall(b"X")
                time.sleep(0.25)
            except (BrokenPipeError, ConnectionResetError):
                closed = True
                break
            s.settimeout(0.01)
            try:
                if s.recv(1) == b"":
                    closed = True
                    break
            except socket.timeout:
                pass
            s.settimeout(10)
    assert closed
    assert time.monotonic() - t < 4  # header_timeout is 2 s
    assert env["proxy"].alive()


def test_idle_keep_alive_connection_is_closed(env):
    with socket.create_connection(("127.0.0.1", env["proxy"].port), timeout=10) as s:
        s.sendall(f"GET /{PID}/info HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        t = time.monotonic()
        data = b""
        while True:
            chunk = s.recv(65536)
            if not chunk:
                break
            data += chunk
        assert status_of(data) == 200
        assert 1.5 < time.monotonic() - t < 4  # idle_timeout is 2 s


def test_many_half_open_connections_do_not_stop_service(env):
    socks = [socket.create_connection(("127.0.0.1", env["proxy"].port)) for _ in range(200)]
    try:
        for s in socks[::2]:
            s.sendall(b"GET /")
        assert get_json(env["proxy"].port, f"/{PID}/info")[0] == 200
    finally:
        for s in socks:
            s.close()
