"""`proxy serve --mode host` against real loopback backends: routing, framing, keep-alive, errors."""

from __future__ import annotations

import http.client
import json
import socket
import time
import uuid

import pytest

from tests.support.proxy import (DIRECT, free_port, get_json, host_state, raw_exchange, start_backend, start_proxy,
                                 status_of)

pytestmark = pytest.mark.integration

RUNNING = str(uuid.uuid4())
STOPPED = str(uuid.uuid4())
REFUSED = str(uuid.uuid4())


@pytest.fixture(scope="module", params=[True, False], ids=["fast-path", "streams-only"])
def env(request, tmp_path_factory):
    work = tmp_path_factory.mktemp("proxy-host")
    backend = start_backend(work)
    dead_port = free_port()  # registered, but nothing listens there
    host_state(work / "data", {RUNNING: backend.port, STOPPED: None, REFUSED: dead_port})
    proxy = start_proxy(work, "host", {"data_dir": str(work / "data"), "proxy": {
        "upstream_timeout": 1, "header_timeout": 2, "idle_timeout": 3, "fast_path": request.param, **DIRECT}},
        json_log=True)
    try:
        yield {"work": work, "backend": backend, "proxy": proxy}
    finally:
        proxy.stop()
        backend.stop()


def test_get_forwards_full_path_and_forwarded_headers(env):
    port = env["proxy"].port
    status, info = get_json(port, f"/{RUNNING}/port/8888/lab/info?token=abc",
                            headers={"X-Forwarded-For": "203.0.113.9", "X-Forwarded-Proto": "https"})
    assert status == 200
    assert info["target"] == f"/{RUNNING}/port/8888/lab/info?token=abc"
    h = {k.lower(): v for k, v in info["headers"]}
    assert h["x-forwarded-for"] == "127.0.0.1"  # a direct client's own X-Forwarded-For is replaced
    assert h["x-forwarded-proto"] == "http"  # not trusted from a direct client by default
    assert h["x-forwarded-host"] == f"127.0.0.1:{port}"
    assert h["x-forwarded-port"] == str(port)
    assert h["host"] == f"127.0.0.1:{port}"


def test_hop_by_hop_headers_are_not_forwarded(env):
    status, info = get_json(env["proxy"].port, f"/{RUNNING}/info", headers={
        "Connection": "keep-alive, X-Private", "X-Private": "secret", "Keep-Alive": "timeout=5",
        "TE": "trailers", "Proxy-Authorization": "Basic eA==", "Trailer": "X-T", "X-End-To-End": "yes"})
    names = {k.lower() for k, _ in info["headers"]}
    assert status == 200
    assert not names & {"connection", "x-private", "keep-alive", "te", "proxy-authorization", "trailer"}
    assert "x-end-to-end" in names


def test_keep_alive_reuses_client_and_upstream_connections(env):
    conn = http.client.HTTPConnection("127.0.0.1", env["proxy"].port, timeout=5)
    peers = set()
    for _ in range(5):
        conn.request("GET", f"/{RUNNING}/info")
        resp = conn.getresponse()
        peers.add(json.loads(resp.read())["peer_port"])
        assert resp.status == 200
    sock = conn.sock
    conn.request("GET", f"/{RUNNING}/info")
    conn.getresponse().read()
    assert conn.sock is sock  # one client connection carried every request
    assert len(peers) == 1    # and one pooled upstream connection served them
    conn.close()


def test_chunked_response_and_streamed_upload_and_echo(env):
    port = env["proxy"].port
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    conn.request("GET", f"/{RUNNING}/chunked?n=50")
    resp = conn.getresponse()
    assert resp.getheader("transfer-encoding") == "chunked"
    assert resp.read() == b"".join(f"chunk {i}\n".encode() for i in range(50))

    payload = bytes(range(256)) * 40000  # ~10 MB
    conn.request("POST", f"/{RUNNING}/upload", body=iter([payload[i:i + 100000] for i in range(0, len(payload), 100000)]),
                 encode_chunked=True, headers={"Transfer-Encoding": "chunked"})
    resp = conn.getresponse()
    import zlib
    assert json.loads(resp.read()) == {"bytes": len(payload), "crc32": zlib.crc32(payload)}

    conn.request("POST", f"/{RUNNING}/echo", body=payload, headers={"Content-Length": str(len(payload))})
    resp = conn.getresponse()
    assert resp.read() == payload
    conn.close()


def test_server_sent_events_arrive_incrementally(env):
    with socket.create_connection(("127.0.0.1", env["proxy"].port), timeout=5) as s:
        s.sendall(f"GET /{RUNNING}/sse?n=5 HTTP/1.1\r\nHost: x\r\nAccept: text/event-stream\r\n\r\n".encode())
        data = b""
        while b"data: event 0" not in data:
            data += s.recv(4096)
        assert b"data: event 4" not in data  # the first event was relayed before the last was written
        while not data.endswith(b"0\r\n\r\n"):
            data += s.recv(4096)
    assert b"text/event-stream" in data
    assert all(f"data: event {i}".encode() in data for i in range(5))


def test_unknown_project_is_404_and_stopped_is_502_at_once(env):
    port = env["proxy"].port
    t = time.monotonic()
    assert get_json(port, f"/{uuid.uuid4()}/x")[0] == 404
    assert get_json(port, "/not-a-uuid/x")[0] == 404
    assert get_json(port, f"/{STOPPED}/x")[0] == 502
    assert time.monotonic() - t < 1.0


def test_refused_upstream_is_502_and_silent_upstream_is_504(env):
    port = env["proxy"].port
    assert get_json(port, f"/{REFUSED}/x")[0] == 502
    t = time.monotonic()
    assert get_json(port, f"/{RUNNING}/slow?delay=4")[0] == 504  # upstream_timeout is 1 s
    assert time.monotonic() - t < 3.5


def test_stopping_a_project_turns_the_next_request_on_an_open_connection_into_502(env):
    pid = str(uuid.uuid4())
    data_dir = env["work"] / "data"
    host_state(data_dir, {pid: env["backend"].port})
    conn = http.client.HTTPConnection("127.0.0.1", env["proxy"].port, timeout=5)
    conn.request("GET", f"/{pid}/info")
    assert conn.getresponse().read() and True
    host_state(data_dir, {pid: None})  # what `project stop` does: state stopped, http_port NULL
    t = time.monotonic()
    conn.request("GET", f"/{pid}/info")
    resp = conn.getresponse()
    resp.read()
    assert resp.status == 502
    assert time.monotonic() - t < 1.0
    conn.close()


def test_upstream_answering_early_does_not_hang_the_client(env):
    body = b"x" * (8 << 20)
    resp = raw_exchange(env["proxy"].port, f"POST /{RUNNING}/reject HTTP/1.1\r\nHost: x\r\nContent-Length: {len(body)}\r\n\r\n"
                        .encode() + body, timeout=10)
    assert status_of(resp) == 413


def test_healthz_metrics_and_json_access_log(env):
    port = env["proxy"].port
    # this test's own traffic (it must not depend on which tests ran before it): a forwarded request
    # with a token in its query string, and one to a refused upstream
    assert get_json(port, f"/{RUNNING}/port/8888/lab/info?token=abc")[0] == 200
    assert get_json(port, f"/{REFUSED}/x")[0] == 502
    assert get_json(port, "/healthz") == (200, {"text": "ok\n"})
    status, metrics = get_json(port, "/metrics")
    text = metrics["text"]
    assert status == 200
    assert '# TYPE cocalc_proxy_requests_total counter' in text
    assert 'cocalc_proxy_requests_total{status="200"}' in text
    assert 'cocalc_proxy_upstream_errors_total{kind="refused"}' in text
    assert 'cocalc_proxy_bytes_total{direction="downstream"}' in text
    assert "cocalc_proxy_active_websockets 0" in text
    deadline = time.monotonic() + 10  # a request's line is written once it has been answered
    while True:
        lines = [json.loads(x) for x in env["proxy"].log().splitlines() if x.startswith("{")]
        mine = [x for x in lines if x["path"] == f"/{RUNNING}/port/8888/lab/info"]
        if mine or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert mine and mine[0]["status"] == 200 and mine[0]["upstream"] == f"127.0.0.1:{env['backend'].port}"
    assert not any("token=" in x for x in env["proxy"].log().splitlines())  # query strings are not logged



def test_access_log_counts_the_body_of_the_proxys_own_error_answers(env):
    """A 502 (or 404) that the proxy writes itself has a body; the access log says how many bytes it was."""
    port = env["proxy"].port
    target = f"/{REFUSED}/bytes-{time.monotonic_ns()}"
    resp = raw_exchange(port, f"GET {target} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
    assert status_of(resp) == 502
    body = resp.partition(b"\r\n\r\n")[2]
    assert body
    deadline = time.monotonic() + 10
    while True:
        mine = [json.loads(x) for x in env["proxy"].log().splitlines()
                if x.startswith("{") and json.loads(x)["path"] == target]
        if mine or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert mine and mine[0]["status"] == 502 and mine[0]["bytes"] == len(body), mine

def test_client_half_close_after_request_still_gets_the_answer(env):
    resp = raw_exchange(env["proxy"].port, f"GET /{RUNNING}/info HTTP/1.1\r\nHost: x\r\n\r\n".encode(),
                        half_close=True)
    assert status_of(resp) == 200
    assert resp.endswith(b"}")  # the whole JSON body arrived before the proxy closed


def test_http10_client_gets_a_chunked_answer_unframed_then_close(env):
    resp = raw_exchange(env["proxy"].port, f"GET /{RUNNING}/chunked?n=3 HTTP/1.0\r\nHost: x\r\n\r\n".encode())
    head, _, body = resp.partition(b"\r\n\r\n")
    assert status_of(resp) == 200
    assert b"transfer-encoding" not in head.lower()
    assert body == b"chunk 0\nchunk 1\nchunk 2\n"


def test_timeouts_hold_on_reused_connections(env):
    """Timers are re-armed lazily on keep-alive connections: each exchange still gets its own limits."""
    port = env["proxy"].port
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    conn.request("GET", f"/{RUNNING}/info")
    assert conn.getresponse().read()
    time.sleep(0.6)  # the first exchange's upstream timer is now due in the middle of the next one
    t = time.monotonic()
    conn.request("GET", f"/{RUNNING}/slow?delay=4")
    resp = conn.getresponse()
    resp.read()
    assert resp.status == 504  # upstream_timeout is 1 s, counted from this request
    assert 0.9 < time.monotonic() - t < 2.5
    conn.close()

    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        for _ in range(2):  # the second request re-arms the idle timer set by the first
            s.sendall(f"GET /{RUNNING}/info HTTP/1.1\r\nHost: x\r\n\r\n".encode())
            data = b""
            while b"\r\n\r\n" not in data:
                data += s.recv(65536)
            time.sleep(1.5)
        t = time.monotonic()
        while s.recv(65536):
            pass  # the proxy closes the idle keep-alive connection after idle_timeout (3 s)
        waited = time.monotonic() - t
        assert 0.5 < waited < 3.0, waited  # 3 s after the last answer, 1.5 s of which already passed


def test_repeated_and_changed_requests_on_one_connection_are_each_forwarded_as_sent(env):
    # The fast path remembers a connection's last request and response head: a repeat, a change of
    # one field, and the same response head for a request with other framing (HEAD) must each be
    # answered from their own bytes.
    conn = http.client.HTTPConnection("127.0.0.1", env["proxy"].port, timeout=5)
    seen = []
    for value in ("a", "a", "b", "a"):
        conn.request("GET", f"/{RUNNING}/info", headers={"X-Probe": value})
        resp = conn.getresponse()
        assert resp.status == 200
        seen.append({k.lower(): v for k, v in json.loads(resp.read())["headers"]}["x-probe"])
    assert seen == ["a", "a", "b", "a"]
    for method, size in (("GET", 5), ("GET", 5), ("HEAD", 5), ("GET", 5), ("GET", 7), ("GET", 5)):
        conn.request(method, f"/{RUNNING}/download?size={size}")
        resp = conn.getresponse()
        body = resp.read()
        assert resp.status == 200
        assert resp.getheader("content-length") == str(size)
        assert len(body) == (0 if method == "HEAD" else size)
    # The pooled upstream connection answers an HTTP/1.0 client with the same head: the client's copy
    # must say close this time.
    out = raw_exchange(env["proxy"].port, f"GET /{RUNNING}/download?size=5 HTTP/1.0\r\nHost: x\r\n\r\n".encode())
    head, _, body = out.partition(b"\r\n\r\n")
    assert status_of(out) == 200 and body == bytes(range(5))
    assert b"\r\nconnection: close" in head.lower()
    conn.close()
