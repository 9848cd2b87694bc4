"""Hub -> host -> backend: the whole chain with real PostgreSQL routes, NOTIFY re-routing, big streams
in both directions with the proxies' RSS measured, chunked, SSE and a 10,000-message WebSocket echo.

COCALC_PROXY_TEST_BYTES sets the streamed upload/download size (default 1 GiB each way, about 10 s
here; lower it on a slow machine).
"""

from __future__ import annotations

import http.client
import json
import os
import time
import uuid
import zlib

import pytest

from tests.support.access import add_account, add_token, grant
from tests.support.proxy import (RssSampler, get_json, host_identity, host_state, hub_secret, start_backend,
                                 start_proxy)

pytestmark = pytest.mark.integration

PID = str(uuid.uuid4())
UNPLACED = str(uuid.uuid4())
HOST_A = str(uuid.uuid4())
HOST_B = str(uuid.uuid4())
STREAM_BYTES = int(os.environ.get("COCALC_PROXY_TEST_BYTES", str(1 << 30)))
RSS_LIMIT_KB = 100 * 1024
AUTH: dict[str, str] = {}  # the Authorization header of the chain's account (set by the fixture)


def get(port: int, path: str, headers: dict | None = None):
    return get_json(port, path, {**AUTH, **(headers or {})})


@pytest.fixture(scope="module")
def chain(tmp_path_factory, postgres):
    import psycopg

    from cocalc_ctl.state import hub_db

    work = tmp_path_factory.mktemp("proxy-chain")
    dsn = postgres.new_database()
    hub_db.migrate(dsn)
    started = []
    try:
        backend_a = start_backend(work, name="a")
        started.append(backend_a)
        backend_b = start_backend(work, name="b")
        started.append(backend_b)
        host_state(work / "a", {PID: backend_a.port})
        host_state(work / "b", {PID: backend_b.port})
        # each host proxy accepts only requests its hub signed with that host's secret
        hub_secret(dsn, HOST_A, work / "a")
        hub_secret(dsn, HOST_B, work / "b")
        host_cfg = {"proxy": {"trust_forwarded": ["127.0.0.1"], "upstream_timeout": 5}}
        proxy_a = start_proxy(work, "host", {"data_dir": str(work / "a"), **host_identity(HOST_A, work / "a"),
                                             **host_cfg})
        started.append(proxy_a)
        proxy_b = start_proxy(work, "host", {"data_dir": str(work / "b"), **host_identity(HOST_B, work / "b"),
                                             **host_cfg})
        started.append(proxy_b)
        with psycopg.connect(dsn, autocommit=True) as conn:
            for hid, port in ((HOST_A, proxy_a.port), (HOST_B, proxy_b.port)):
                conn.execute("INSERT INTO project_hosts(id, name, internal_url) VALUES (%s, %s, %s)",
                             (hid, f"host-{port}", f"http://127.0.0.1:{port}"))
            conn.execute("INSERT INTO projects(project_id, host_id) VALUES (%s, %s)", (PID, HOST_A))
            conn.execute("INSERT INTO projects(project_id) VALUES (%s)", (UNPLACED,))
        # the hub lets only granted accounts through: this chain's requests carry a collaborator's token
        account = add_account(dsn, "chain")
        for pid in (PID, UNPLACED):
            grant(dsn, pid, account, "collaborator")
        AUTH["Authorization"] = "Bearer " + add_token(dsn, account)[0]
        hub = start_proxy(work, "hub", {"data_dir": str(work / "hub"), "hub_dsn": dsn,
                                        "proxy": {"route_cache_ttl": 3600, "upstream_timeout": 10}})
        started.append(hub)
        yield {"work": work, "dsn": dsn, "hub": hub, "a": proxy_a, "b": proxy_b, "backend_a": backend_a,
               "account": account}
    finally:
        for s in reversed(started):
            s.stop()


def _sql(chain, statement, params=()):
    import psycopg

    with psycopg.connect(chain["dsn"], autocommit=True) as conn:
        conn.execute(statement, params)


def test_get_through_hub_and_host_keeps_path_and_appends_forwarded_for(chain):
    status, info = get(chain["hub"].port, f"/{PID}/port/8888/api/info?x=1")
    assert status == 200 and info["name"] == "a"
    assert info["target"] == f"/{PID}/port/8888/api/info?x=1"
    h = {k.lower(): v for k, v in info["headers"]}
    assert h["x-forwarded-for"] == "127.0.0.1, 127.0.0.1"  # client (seen by hub), hub (seen by host)
    assert h["x-forwarded-port"] == str(chain["hub"].port)  # host trusts the hub's value


def test_unknown_unplaced_and_stopped_projects(chain):
    hub = chain["hub"].port
    # an unknown project is one the account has no grant on: 403, like any project not granted
    assert get(hub, f"/{uuid.uuid4()}/x")[0] == 403
    t = time.monotonic()
    assert get(hub, f"/{UNPLACED}/x")[0] == 502
    stopped = str(uuid.uuid4())
    host_state(chain["work"] / "a", {stopped: None})
    _sql(chain, "INSERT INTO projects(project_id, host_id) VALUES (%s, %s)", (stopped, HOST_A))
    grant(chain["dsn"], stopped, chain["account"], "collaborator")
    assert get(hub, f"/{stopped}/x")[0] == 502
    assert time.monotonic() - t < 2


def test_streamed_upload_and_download_keep_proxy_memory_flat(chain):
    hub = chain["hub"].port
    block = bytes(range(256)) * 4096  # 1 MiB
    n_blocks = STREAM_BYTES // len(block)
    with RssSampler(chain["hub"], chain["a"]) as rss:
        conn = http.client.HTTPConnection("127.0.0.1", hub, timeout=60)
        conn.request("POST", f"/{PID}/upload", body=(block for _ in range(n_blocks)),
                     headers={"Content-Length": str(n_blocks * len(block)), **AUTH})
        answer = json.loads(conn.getresponse().read())
        crc = 0
        for _ in range(n_blocks):
            crc = zlib.crc32(block, crc)
        assert answer == {"bytes": n_blocks * len(block), "crc32": crc}
        after_upload = dict(rss.peak_kb)

        conn.request("GET", f"/{PID}/download?size={STREAM_BYTES}", headers=AUTH)
        resp = conn.getresponse()
        got = 0
        buf = bytearray(1 << 20)
        while True:
            n = resp.readinto(buf)
            if not n:
                break
            got += n
        assert got == STREAM_BYTES
        conn.close()
    peaks = {"hub": rss.peak_kb[chain["hub"].pid], "host": rss.peak_kb[chain["a"].pid]}
    print(f"peak RSS during {STREAM_BYTES} B up + down: {peaks} kB (after the upload: {after_upload})")
    assert all(0 < v < RSS_LIMIT_KB for v in peaks.values()), peaks
    assert chain["hub"].status_kb("VmHWM") < RSS_LIMIT_KB


def test_chunked_and_server_sent_events_through_the_chain(chain):
    conn = http.client.HTTPConnection("127.0.0.1", chain["hub"].port, timeout=10)
    conn.request("GET", f"/{PID}/chunked?n=20", headers=AUTH)
    resp = conn.getresponse()
    assert resp.getheader("transfer-encoding") == "chunked"
    assert resp.read() == b"".join(f"chunk {i}\n".encode() for i in range(20))
    conn.request("GET", f"/{PID}/sse?n=5", headers={"Accept": "text/event-stream", **AUTH})
    resp = conn.getresponse()
    assert resp.getheader("content-type") == "text/event-stream"
    first = resp.read1(4096) if hasattr(resp, "read1") else resp.read(1)
    assert b"data: event 0" in first
    rest = first + resp.read()
    assert all(f"data: event {i}".encode() in rest for i in range(5))
    conn.close()


def test_websocket_echo_of_10000_messages_through_the_chain(chain):
    from websockets.sync.client import connect

    with connect(f"ws://127.0.0.1:{chain['hub'].port}/{PID}/ws", open_timeout=10, max_size=None,
                 additional_headers=AUTH) as ws:
        for i in range(10_000):
            msg = f"message {i}" if i % 2 else os.urandom(64)
            ws.send(msg)
            assert ws.recv(timeout=10) == msg
        big = os.urandom(1 << 20)
        ws.send(big)
        assert ws.recv(timeout=10) == big
    _, metrics = get_json(chain["hub"].port, "/metrics")
    assert "cocalc_proxy_websockets_total 1" in metrics["text"] or "cocalc_proxy_websockets_total" in metrics["text"]


def test_websocket_half_close_is_relayed(chain):
    """The client shuts its sending side: the backend sees EOF and its close reaches the client."""
    import socket

    hub = chain["hub"].port
    with socket.create_connection(("127.0.0.1", hub), timeout=5) as s:
        s.sendall((f"GET /{PID}/ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                   "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n"
                   f"Authorization: {AUTH['Authorization']}\r\n\r\n").encode())
        head = b""
        while b"\r\n\r\n" not in head:
            head += s.recv(4096)
        assert head.startswith(b"HTTP/1.1 101")
        s.sendall(b"\x81\x82\x00\x00\x00\x00hi")  # masked text frame "hi" (zero mask)
        s.shutdown(socket.SHUT_WR)                  # half-close: we still read
        data = head.split(b"\r\n\r\n", 1)[1]
        while True:
            chunk = s.recv(4096)
            if not chunk:
                break
            data += chunk
        assert data == b"\x81\x02hi"  # the echo arrived after our FIN, then the backend's EOF


def test_notify_reroutes_a_moved_project_on_the_next_request(chain):
    hub = chain["hub"].port
    assert get(hub, f"/{PID}/info")[1]["name"] == "a"  # cached now (ttl is an hour)
    try:
        _sql(chain, "UPDATE projects SET host_id=%s WHERE project_id=%s", (HOST_B, PID))
        # the route cache lives an hour: only the NOTIFY can make the answer change within the deadline
        # (generous for a loaded machine); an error page while it switches has no "name" yet
        deadline = time.monotonic() + 10
        while get(hub, f"/{PID}/info")[1].get("name") != "b":
            assert time.monotonic() < deadline, "the move did not take effect"
            time.sleep(0.02)
        # a changed internal_url of a host re-routes every project on it: here to host A's proxy, which
        # refuses what the hub signs for host B (another host's key)
        _sql(chain, "UPDATE project_hosts SET internal_url=%s WHERE id=%s",
             (f"http://127.0.0.1:{chain['a'].port}", HOST_B))
        deadline = time.monotonic() + 10
        while get(hub, f"/{PID}/info")[0] != 401:
            assert time.monotonic() < deadline, "the host change did not take effect"
            time.sleep(0.02)
        assert "unknown hub credential key" in chain["a"].log()
    finally:
        _sql(chain, "UPDATE project_hosts SET internal_url=%s WHERE id=%s",
             (f"http://127.0.0.1:{chain['b'].port}", HOST_B))
        _sql(chain, "UPDATE projects SET host_id=%s WHERE project_id=%s", (HOST_A, PID))
    _, metrics = get_json(hub, "/metrics")
    assert "cocalc_proxy_route_notifications_total" in metrics["text"]


def test_client_forwarded_fields_are_replaced_at_the_hub_and_trusted_by_the_host(chain):
    """The hub does not trust its client: it sets X-Forwarded-*; the host lists the hub's address in
    proxy.trust_forwarded, so it keeps the hub's values and appends the hub's address."""
    hub = chain["hub"].port
    status, info = get(hub, f"/{PID}/info", headers={
        "X-Forwarded-For": "6.6.6.6", "X-Forwarded-Host": "evil.example", "X-Forwarded-Proto": "https",
        "X_Forwarded_Host": "evil.example", "Forwarded": "for=6.6.6.6", "X-Real-IP": "6.6.6.6"})
    assert status == 200
    h = {k.lower(): v for k, v in info["headers"]}
    assert h["x-forwarded-for"] == "127.0.0.1, 127.0.0.1"
    assert h["x-forwarded-host"] == f"127.0.0.1:{hub}" and h["x-forwarded-proto"] == "http"
    assert "6.6.6.6" not in json.dumps(info) and "evil" not in json.dumps(info)
    assert not any("_" in k for k in h) and "forwarded" not in h and "x-real-ip" not in h


def test_a_request_head_the_hub_accepts_the_host_accepts(chain):
    """At the hub's limits (100 fields, proxy.max_header_bytes) plus the four fields the hub adds."""
    from tests.support.proxy import raw_exchange, status_of

    lines = [f"GET /{PID}/info HTTP/1.1".encode(), b"Host: h", b"Connection: close",
             f"Authorization: {AUTH['Authorization']}".encode()]
    while len(lines) < 101:
        lines.append(b"X-Pad-%d: v" % len(lines))
    lines[-1] += b"v" * (32768 - sum(len(x) + 2 for x in lines) - 2)
    head = b"\r\n".join(lines) + b"\r\n\r\n"
    assert len(head) == 32768
    resp = raw_exchange(chain["hub"].port, head, timeout=10)
    assert status_of(resp) == 200, resp[:300]
    too_big = head[:-2] + b"X-One-More: x\r\n\r\n"
    assert status_of(raw_exchange(chain["hub"].port, too_big, timeout=10)) == 431
