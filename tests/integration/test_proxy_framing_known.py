"""The known instances of the framing class (issue: message framing that no client or project can
desynchronise), one named test each, on the host proxy and through hub -> host, with the recording
backend telling exactly what arrived.
"""

from __future__ import annotations

import re
import socket
import time

import pytest

from tests.support.framing_rig import P1, P2, TIMEOUTS, fd_count, wait_fds
from tests.support.http_wire import exchange, read_responses

pytestmark = pytest.mark.integration

A = ("/" + P1).encode()
B = ("/" + P2).encode()

def _path(rig, name):
    return {"host": (rig.host, rig.rec_host), "hub": (rig.hub, rig.rec_hub)}[name]

def _requests_total(port: int, status: int) -> int:
    view = exchange(port, b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n", [b"GET"], 1)
    m = re.search(rb'cocalc_proxy_requests_total\{status="%d"\} ([0-9]+)' % status, view.responses[0].body)
    return int(m.group(1)) if m else 0

def _no_traceback(*services):
    for s in services:
        assert "Traceback" not in s.log(), s.log()[-3000:]

# -- 1. request side: Connection naming Content-Length ------------------------------------------------

@pytest.mark.parametrize("path", ["host", "hub"])
def test_request_connection_content_length_is_refused_and_never_unframes_the_body(framing_rig, path):
    proxy, backend = _path(framing_rig, path)
    inner = b"GET %s/smuggled HTTP/1.1\r\nHost: x\r\n\r\n" % A
    mark = backend.mark()
    view = exchange(proxy.port, b"POST %s/up HTTP/1.1\r\nHost: x\r\nConnection: content-length\r\n"
                    b"Content-Length: %d\r\n\r\n%s" % (A, len(inner), inner), [b"POST"], 1)
    backend.settle()
    got = backend.since(mark)
    assert not any(r.target.endswith(b"/smuggled") for r in got), "the body became a request at the backend"
    assert [r.body for r in got] in ([], [inner])
    assert view.responses and view.responses[0].status == 400, view.raw[:300]
    backend.reset()

def test_host_mode_smuggled_request_cannot_skip_routing(framing_rig):
    backend = framing_rig.rec_host
    inner = b"GET /../../etc/passwd HTTP/1.1\r\nHost: x\r\n\r\n"
    mark = backend.mark()
    exchange(framing_rig.host.port, b"POST %s/up HTTP/1.1\r\nHost: x\r\nConnection: Content-Length\r\n"
             b"Content-Length: %d\r\n\r\n%s" % (A, len(inner), inner), [b"POST"], 1)
    backend.settle()
    assert not [r.target for r in backend.since(mark) if not r.target.startswith(A + b"/")]
    backend.reset()

def test_cross_user_capture_through_the_pooled_hub_connection_is_impossible(framing_rig):
    """An attacker leaves half a request on a hub->host connection; the next user's request to
    another project on the same host must not become its body."""
    hub, backend = framing_rig.hub, framing_rig.rec_hub
    half = b"POST %s/capture HTTP/1.1\r\nHost: x\r\nContent-Length: 120\r\n\r\n" % A
    mark = backend.mark()
    exchange(hub.port, b"POST %s/up HTTP/1.1\r\nHost: x\r\nConnection: content-length\r\n"
             b"Content-Length: %d\r\n\r\n%s" % (A, len(half), half), [b"POST"], 1)
    secret = b"Cookie: session=victim-secret\r\n"
    body = b"password=hunter2&" + b"x" * 200
    victim = exchange(hub.port, b"POST %s/secret HTTP/1.1\r\nHost: x\r\n%sContent-Length: %d\r\n\r\n%s"
                      % (B, secret, len(body), body), [b"POST"], 1, quiet=2.0)
    backend.settle()
    got = backend.since(mark)
    leaked = [r for r in got if (b"victim-secret" in r.body or b"hunter2" in r.body)
              and not r.target.endswith(b"/secret")]
    mine = [r for r in got if r.target == B + b"/secret"]
    backend.reset()
    if leaked or len(mine) != 1:
        time.sleep(TIMEOUTS["idle_timeout"] + 0.5)  # let the host close the poisoned hub connection
    assert not leaked, f"the victim's request was captured: {leaked[0].target!r} got {leaked[0].body[:120]!r}"
    assert len(mine) == 1 and mine[0].body == body and mine[0].header(b"cookie") == [b"session=victim-secret"]
    assert victim.responses and victim.responses[0].header(b"x-rec") == str(mine[0].seq).encode()

# -- 2. response side: Connection naming Content-Length -----------------------------------------------

def _script(rig, name, steps):
    for b in (rig.rec_host, rig.rec_hub, rig.rec_nginx):
        b.scripts[name] = list(steps)

@pytest.mark.parametrize("path", ["host", "hub"])
def test_response_connection_content_length_is_not_sent_unframed(framing_rig, path):
    proxy, backend = _path(framing_rig, path)
    _script(framing_rig, "conn-cl", [b"HTTP/1.1 200 OK\r\nConnection: content-length\r\nContent-Length: 5\r\n\r\nhello"])
    t = time.monotonic()
    view = exchange(proxy.port, b"GET %s/script/conn-cl HTTP/1.1\r\nHost: x\r\n\r\nGET %s/second HTTP/1.1\r\n"
                    b"Host: x\r\n\r\n" % (A, A), [b"GET", b"GET"], 2, quiet=4.0, total=8)
    elapsed = time.monotonic() - t
    assert not view.error, (view.error, view.raw[:300])
    assert view.responses and view.responses[0].framing != "close" or view.closed
    first = view.responses[0]
    assert first.status == 502 or (first.status == 200 and first.body == b"hello")
    if len(view.responses) > 1:
        assert view.responses[1].body.split(b" ")[2] == A + b"/second"
    assert elapsed < TIMEOUTS["idle_timeout"] - 0.5, f"the exchange took {elapsed:.1f} s (a hang until a timeout)"
    backend.reset()

# -- 3. pooled upstream connections with unread bytes (stream path: requests with a body) ----------------

@pytest.mark.parametrize("kind", ["204-with-body", "unasked-101", "cl-short"])
@pytest.mark.parametrize("path", ["host", "hub"])
def test_stream_path_never_reuses_an_upstream_connection_holding_stale_bytes(framing_rig, path, kind):
    proxy, backend = _path(framing_rig, path)
    fake = b"HTTP/1.1 200 OK\r\nx-rec: fake\r\nContent-Length: 4\r\n\r\nfake"
    head = {"204-with-body": b"HTTP/1.1 204 No Content\r\n\r\n",
            "unasked-101": b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n",
            "cl-short": b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"}[kind]
    _script(framing_rig, f"stale-{kind}", [head + fake])
    post = b"POST %s/script/stale-%s HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\nabc" % (A, kind.encode())
    exchange(proxy.port, post, [b"POST"], 1, quiet=1.0)
    for i in range(3):  # the next requests of this project, each on a fresh client connection
        mark = backend.mark()
        view = exchange(proxy.port, b"POST %s/next-%d HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\n\r\nz" % (A, i),
                        [b"POST"], 1, quiet=2.0)
        assert view.responses, view.raw[:200]
        r = view.responses[0]
        assert r.header(b"x-rec") != b"fake", f"request {i} got the stale bytes of the earlier response"
        recs = [x for x in backend.since(mark) if x.target == A + b"/next-%d" % i]
        assert recs and r.header(b"x-rec") == str(recs[0].seq).encode(), (r.status, r.headers)
    backend.reset()

# -- 4. oversized upstream heads --------------------------------------------------------------------

HUGE = {"fields": b"HTTP/1.1 200 OK\r\n" + b"X-A: b\r\n" * 300 + b"Content-Length: 2\r\n\r\nok",
        "line": b"HTTP/1.1 200 OK\r\nX-A: " + b"a" * 70000 + b"\r\nContent-Length: 2\r\n\r\nok",
        "bytes": b"HTTP/1.1 200 OK\r\n" + b"".join(b"X-%d: %s\r\n" % (i, b"v" * 1000) for i in range(90))
                 + b"Content-Length: 2\r\n\r\nok"}

@pytest.mark.parametrize("kind", sorted(HUGE))
@pytest.mark.parametrize("method", ["GET", "POST"], ids=["fast-path", "stream-path"])
def test_oversized_upstream_head_is_a_logged_502_on_both_paths(framing_rig, method, kind):
    proxy, backend = framing_rig.host, framing_rig.rec_host
    _script(framing_rig, f"huge-{kind}", [HUGE[kind]])
    base_fds = fd_count(proxy.pid)
    before = _requests_total(proxy.port, 502)
    body = b"Content-Length: 3\r\n\r\nabc" if method == "POST" else b"\r\n"
    t = time.monotonic()
    view = exchange(proxy.port, b"%s %s/script/huge-%s HTTP/1.1\r\nHost: x\r\n%s" % (method.encode(), A, kind.encode(),
                                                                                     body), [method.encode()], 1,
                    quiet=TIMEOUTS["upstream_timeout"] + 1, total=10)
    assert time.monotonic() - t < TIMEOUTS["upstream_timeout"] + 1
    assert view.responses and view.responses[0].status == 502, view.raw[:200]
    assert _requests_total(proxy.port, 502) == before + 1, "the 502 was not counted"
    backend.reset()
    assert wait_fds(proxy.pid, base_fds) <= base_fds, "an upstream socket leaked"
    _no_traceback(proxy)

# -- 5. hop inconsistencies ------------------------------------------------------------------------------

@pytest.mark.parametrize("what", ["fields", "bytes"])
def test_what_the_hub_accepts_the_host_accepts(framing_rig, what):
    """The hub adds its x-forwarded-* fields: a request just inside the hub's limits must not become
    a 431 at the host."""
    hub, host, backend = framing_rig.hub, framing_rig.hub_host, framing_rig.rec_hub
    if what == "fields":
        extra = b"".join(b"X-F%d: v\r\n" % i for i in range(99))   # + Host = 100 fields
    else:  # a head of 32760 bytes, just under the hub's proxy.max_header_bytes (32768)
        line = b"X-Big: " + b"b" * 8000 + b"\r\n"
        start = b"GET %s/limits HTTP/1.1\r\nHost: x\r\n" % A
        pad = 32760 - len(start) - 3 * len(line) - len(b"X-Pad: \r\n\r\n")
        extra = line * 3 + b"X-Pad: " + b"p" * pad + b"\r\n"
    req = b"GET %s/limits HTTP/1.1\r\nHost: x\r\n%s\r\n" % (A, extra)
    if what == "bytes":
        assert len(req) == 32760
    host_431 = _requests_total(host.port, 431)
    mark = backend.mark()
    view = exchange(hub.port, req, [b"GET"], 1)
    assert view.responses, view.raw[:200]
    if view.responses[0].status == 431:
        assert _requests_total(host.port, 431) == host_431, "the hub accepted it and the host refused it"
    else:
        assert [r.target for r in backend.since(mark)] == [A + b"/limits"]

@pytest.mark.parametrize("path", ["host", "hub"])
def test_http10_without_host_is_never_forwarded_without_host(framing_rig, path):
    proxy, backend = _path(framing_rig, path)
    mark = backend.mark()
    view = exchange(proxy.port, b"GET %s/h10 HTTP/1.0\r\n\r\n" % A, [b"GET"], 1)
    backend.settle()
    got = backend.since(mark)
    assert view.responses and (view.responses[0].status == 400 or len(got) == 1), view.raw[:200]
    for r in got:
        assert len(r.header(b"host")) == 1 and r.header(b"host")[0], r.raw_head

@pytest.mark.parametrize("path", ["host", "hub"])
def test_connection_host_does_not_remove_host(framing_rig, path):
    proxy, backend = _path(framing_rig, path)
    mark = backend.mark()
    view = exchange(proxy.port, b"GET %s/ch HTTP/1.1\r\nHost: example\r\nConnection: host\r\n\r\n" % A, [b"GET"], 1)
    backend.settle()
    got = backend.since(mark)
    assert view.responses
    for r in got:
        assert r.header(b"host") == [b"example"], r.raw_head

@pytest.mark.parametrize("value", [b"", b"   "], ids=["empty", "blank"])
@pytest.mark.parametrize("path", ["host", "hub"])
def test_empty_host_is_refused(framing_rig, path, value):
    proxy, backend = _path(framing_rig, path)
    mark = backend.mark()
    view = exchange(proxy.port, b"GET %s/eh HTTP/1.1\r\nHost:%s\r\n\r\n" % (A, value), [b"GET"], 1)
    backend.settle()
    assert view.responses and view.responses[0].status == 400
    assert backend.since(mark) == []

@pytest.mark.parametrize("method", [b"CONNECT", b"TRACE"])
@pytest.mark.parametrize("path", ["host", "hub"])
def test_connect_and_trace_are_405(framing_rig, path, method):
    proxy, backend = _path(framing_rig, path)
    mark = backend.mark()
    view = exchange(proxy.port, b"%s %s/m HTTP/1.1\r\nHost: x\r\n\r\n" % (method, A), [method], 1)
    backend.settle()
    assert view.responses and view.responses[0].status == 405, view.raw[:200]
    assert backend.since(mark) == []

# -- 6. forwarded-field trust ------------------------------------------------------------------------

SPOOF = (b"X-Forwarded-For: 6.6.6.6\r\nX-Forwarded-Host: evil.example\r\nX-Forwarded-Proto: https\r\n"
         b"X-Forwarded-Port: 6666\r\nForwarded: for=6.6.6.6;host=evil.example\r\nX-Real-IP: 6.6.6.6\r\n"
         b"X_Forwarded_Host: evil.example\r\nX_Forwarded_For: 6.6.6.6\r\nX-Real_IP: 6.6.6.6\r\n"
         b"x-FORWARDED-for: 7.7.7.7\r\nFORWARDED: for=7.7.7.7\r\nx-real-ip: 7.7.7.7\r\nX-FORWARDED-HOST: evil2\r\n")

def _spoofed(framing_rig, path):
    proxy, backend = _path(framing_rig, path)
    mark = backend.mark()
    view = exchange(proxy.port, b"GET %s/fwd HTTP/1.1\r\nHost: real.example\r\n%s\r\n" % (A, SPOOF), [b"GET"], 1)
    assert view.responses and view.responses[0].status == 200, view.raw[:200]
    (rec,) = backend.since(mark)
    return rec

@pytest.mark.parametrize("path", ["host", "hub"])
def test_client_x_forwarded_fields_are_replaced_not_appended(framing_rig, path):
    rec = _spoofed(framing_rig, path)
    xff = rec.header(b"x-forwarded-for")
    assert len(xff) == 1 and b"6.6.6.6" not in xff[0] and b"7.7.7.7" not in xff[0], xff
    assert xff[0] == (b"127.0.0.1" if path == "host" else b"127.0.0.1, 127.0.0.1")
    assert rec.header(b"x-forwarded-host") == [b"real.example"]
    assert rec.header(b"x-forwarded-proto") == [b"http"]
    assert b"6666" not in b"".join(rec.header(b"x-forwarded-port"))

@pytest.mark.parametrize("path", ["host", "hub"])
def test_forwarded_and_x_real_ip_are_dropped(framing_rig, path):
    rec = _spoofed(framing_rig, path)
    assert rec.header(b"forwarded") == [] and rec.header(b"x-real-ip") == []

@pytest.mark.parametrize("path", ["host", "hub"])
def test_field_names_with_underscores_are_dropped(framing_rig, path):
    rec = _spoofed(framing_rig, path)
    assert [k for k, _ in rec.headers if b"_" in k] == []

# -- beyond the issue ----------------------------------------------------------------------------------

@pytest.mark.parametrize("path", ["host", "hub"])
def test_websocket_frames_sent_before_the_101_are_not_a_request(framing_rig, path):
    """A client pipelines WebSocket frames right behind its upgrade request; the backend refuses the
    upgrade (200): those bytes must never be read as a request."""
    proxy, backend = _path(framing_rig, path)
    mark = backend.mark()
    frame_that_looks_like_http = b"GET %s/smuggled-after-upgrade HTTP/1.1\r\nHost: x\r\n\r\n" % A
    exchange(proxy.port, b"GET %s/ws HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n"
             b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n%s"
             % (A, frame_that_looks_like_http), [b"GET", b"GET"], 2)
    backend.settle()
    assert not [r for r in backend.since(mark) if r.target.endswith(b"smuggled-after-upgrade")]
    backend.reset()

@pytest.mark.parametrize("path", ["host", "hub"])
def test_trailers_never_reach_the_backend(framing_rig, path):
    """Trailer fields (Content-Length, Host, Transfer-Encoding in a trailer) are dropped."""
    proxy, backend = _path(framing_rig, path)
    mark = backend.mark()
    view = exchange(proxy.port, b"POST %s/tr HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
                    b"5\r\nhello\r\n0\r\nContent-Length: 99\r\nHost: evil\r\nTransfer-Encoding: chunked\r\n\r\n" % A,
                    [b"POST"], 1)
    backend.settle()
    got = backend.since(mark)
    assert len(got) == 1, view.raw[:300]
    rec = got[0]
    assert rec.body == b"hello" and "trailer field" not in rec.ambiguous, rec.ambiguous
    assert view.responses[0].header(b"x-rec") == str(rec.seq).encode()

@pytest.mark.parametrize("framing", ["length", "chunked"])
@pytest.mark.parametrize("path", ["host", "hub"])
def test_slow_client_body_on_a_pooled_connection_does_not_mix_with_the_next_client(framing_rig, path, framing):
    """A client stops halfway through its body; the upstream connection that carried the first half
    must not go back to the pool."""
    proxy, backend = _path(framing_rig, path)
    partial = (b"Content-Length: 100\r\n\r\n" + b"h" * 50 if framing == "length"
               else b"Transfer-Encoding: chunked\r\n\r\n7fffffff\r\n" + b"h" * 50)
    with socket.create_connection(("127.0.0.1", proxy.port), timeout=10) as s:
        s.sendall(b"POST %s/half HTTP/1.1\r\nHost: x\r\n" % A + partial)
        time.sleep(0.3)
    time.sleep(0.3)
    mark = backend.mark()
    view = exchange(proxy.port, b"POST %s/whole HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nwhole" % A,
                    [b"POST"], 1, quiet=2.0)
    backend.settle()
    got = backend.since(mark)
    assert [(r.target, r.body) for r in got if r.target.endswith(b"/whole")] == [(A + b"/whole", b"whole")]
    assert not [r for r in got if r.target.endswith(b"/half")]
    assert view.responses and view.responses[0].status == 200
    backend.reset()

def test_no_traceback_in_any_proxy_log(framing_rig):
    _no_traceback(*framing_rig.proxies())


@pytest.mark.parametrize("path", ["host", "hub"])
def test_three_hundred_pipelined_requests_are_answered_in_order(framing_rig, path):
    proxy, backend = _path(framing_rig, path)
    mark = backend.mark()
    reqs = b"".join(b"GET %s/pipe/%d HTTP/1.1\r\nHost: x\r\n\r\n" % (A, i) if i % 3 else
                    b"POST %s/pipe/%d HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\n%03d" % (A, i, i)
                    for i in range(300))
    view = exchange(proxy.port, reqs, [b"GET"] * 300, 300, quiet=3.0, total=30)
    assert not view.error, view.error
    got = {r.seq: r for r in backend.since(mark)}
    assert [got[int(r.header(b"x-rec"))].target for r in view.responses] == [A + b"/pipe/%d" % i for i in range(300)]


@pytest.mark.parametrize("path", ["host", "hub"])
def test_http10_client_gets_a_chunked_answer_raw_then_close(framing_rig, path):
    proxy, _ = _path(framing_rig, path)
    _script(framing_rig, "chunked-answer", [b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
                                            b"5;x=y\r\nhello\r\n6\r\n world\r\n0\r\nX-T: 1\r\n\r\n"])
    with socket.create_connection(("127.0.0.1", proxy.port), timeout=10) as s:
        s.sendall(b"GET %s/script/chunked-answer HTTP/1.0\r\nHost: x\r\n\r\n" % A)
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    assert body == b"hello world", data
    assert b"transfer-encoding" not in head.lower()


@pytest.mark.parametrize("path", ["host", "hub"])
def test_an_upstream_that_says_close_is_not_reused_even_if_it_stays_open(framing_rig, path):
    proxy, backend = _path(framing_rig, path)
    backend.reset()
    _script(framing_rig, "says-close", [b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 2\r\n\r\nok"])
    mark = backend.mark()
    exchange(proxy.port, b"GET %s/script/says-close HTTP/1.1\r\nHost: x\r\n\r\n" % A, [b"GET"], 1)
    exchange(proxy.port, b"GET %s/after-close HTTP/1.1\r\nHost: x\r\n\r\n" % A, [b"GET"], 1)
    got = backend.since(mark)
    first = next(r for r in got if r.target.endswith(b"/says-close"))
    after = next(r for r in got if r.target.endswith(b"/after-close"))
    # (through the hub, the hub->host connection may stay; the host->backend one must not be reused)
    assert first.conn != after.conn, "the proxy sent another request on a connection the upstream closed"
    backend.reset()


@pytest.mark.parametrize("method", [b"GET", b"POST"], ids=["fast-path", "stream-path"])
def test_a_project_cannot_answer_another_projects_requests_through_the_hub(framing_rig, method):
    """Project P1 answers with extra bytes (a forged response) behind its own; requests to P2 on the
    same host, through the same hub, get only P2's answers."""
    hub, backend = framing_rig.hub, framing_rig.rec_hub
    forged = b"HTTP/1.1 200 OK\r\nx-rec: fake\r\nContent-Length: 4\r\n\r\nfake"
    _script(framing_rig, "forge", [b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok" + forged * 3])
    body = b"Content-Length: 1\r\n\r\nz" if method == b"POST" else b"\r\n"
    for _ in range(2):
        exchange(hub.port, b"%s %s/script/forge HTTP/1.1\r\nHost: x\r\n%s" % (method, A, body), [method], 1)
    for i in range(3):
        mark = backend.mark()
        view = exchange(hub.port, b"%s %s/victim-%d HTTP/1.1\r\nHost: x\r\n%s" % (method, B, i, body), [method], 1)
        assert view.responses, view.raw[:200]
        recs = {r.seq: r for r in backend.since(mark)}
        marker = view.responses[0].header(b"x-rec") or b"-"
        assert marker.isdigit() and recs[int(marker)].target == B + b"/victim-%d" % i, view.raw[:200]
    backend.reset()


@pytest.mark.parametrize("path", ["host", "hub"])
def test_a_pipeline_sent_one_byte_at_a_time_is_read_the_same(framing_rig, path):
    """Every head and body boundary split across TCP segments (the fast path's buffer scan, the hand-over
    to the stream path, the chunk parser)."""
    proxy, backend = _path(framing_rig, path)
    data = (b"GET %s/b1 HTTP/1.1\r\nHost: x\r\n\r\n"
            b"POST %s/b2 HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello"
            b"PUT %s/b3 HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n3;e=1\r\nabc\r\n0\r\nT: 1\r\n\r\n"
            b"HEAD %s/b4 HTTP/1.1\r\nHost: x\r\n\r\n" % (A, A, A, A))
    mark = backend.mark()
    with socket.create_connection(("127.0.0.1", proxy.port), timeout=10) as s:
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        for i in range(len(data)):
            s.sendall(data[i:i + 1])
            if i % 16 == 0:
                time.sleep(0.001)
        view = read_responses(s, [b"GET", b"POST", b"PUT", b"HEAD"], 4, quiet=3.0)
    backend.settle()
    got = backend.since(mark)
    assert [(r.method, r.target, r.body) for r in got] == [
        (b"GET", A + b"/b1", b""), (b"POST", A + b"/b2", b"hello"), (b"PUT", A + b"/b3", b"abc"),
        (b"HEAD", A + b"/b4", b"")]
    assert [r.header(b"x-rec") for r in view.responses] == [str(r.seq).encode() for r in got]


@pytest.mark.parametrize("path", ["host", "hub"])
def test_bytes_sent_before_an_accepted_101_reach_the_new_protocol_once_in_order(framing_rig, path):
    """A client sends data right behind its upgrade request. When the project switches, those bytes
    belong to the new protocol: relayed once, in order, on the same upstream connection, after the 101
    (the recording backend keeps reading them as HTTP, which makes them visible)."""
    proxy, backend = _path(framing_rig, path)
    _script(framing_rig, "ws101", [b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                                   b"Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\r\n"])
    early = b"GET %s/inside-the-tunnel HTTP/1.1\r\nHost: x\r\n\r\n" % A
    mark = backend.mark()
    with socket.create_connection(("127.0.0.1", proxy.port), timeout=10) as s:
        s.sendall(b"GET %s/script/ws101 HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n"
                  b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n%s" % (A, early))
        data = b""
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and b"inside-the-tunnel 0" not in data:
            s.settimeout(max(0.1, deadline - time.monotonic()))
            try:
                chunk = s.recv(65536)
            except socket.timeout:
                break
            if not chunk:
                break
            data += chunk
    backend.settle()
    got = backend.since(mark)
    assert [r.target for r in got] == [A + b"/script/ws101", A + b"/inside-the-tunnel"], data[:300]
    assert got[0].conn == got[1].conn
    assert data.startswith(b"HTTP/1.1 101 ") and data.count(b"HTTP/1.1 101 ") == 1, data[:300]
    assert data.split(b"\r\n\r\n", 1)[1].startswith(b"HTTP/1.1 200 OK"), data[:300]
    backend.reset()
