"""A malicious project server: every response trick below, on the fast path (GET) and the stream
path (POST with a body), on the host proxy and through hub -> host.

Each case is answered or closed within the configured timeouts (tests/support/framing_rig.py sets
them to a few seconds), the client never sees a second or unframed response, the next request of
the same project is served by the backend (no stale bytes), no proxy logs a traceback, and the
proxies' fd counts are back to their baseline afterwards.
"""

from __future__ import annotations

import time

import pytest

from tests.support.framing_rig import P1, TIMEOUTS, fd_count, wait_fds
from tests.support.http_wire import exchange

pytestmark = pytest.mark.integration

A = ("/" + P1).encode()
OK = b"HTTP/1.1 200 OK\r\n"
FAKE = b"HTTP/1.1 200 OK\r\nx-rec: fake\r\nContent-Length: 4\r\n\r\nfake"
BOUND = TIMEOUTS["upstream_timeout"] + 2.5  # seconds a case may take at most (with a loaded machine's slack)

CASES = {
    "connection-content-length": [OK + b"Connection: content-length\r\nContent-Length: 5\r\n\r\nhello" + FAKE],
    "connection-transfer-encoding": [OK + b"Connection: Transfer-Encoding\r\nTransfer-Encoding: chunked\r\n\r\n"
                                     b"5\r\nhello\r\n0\r\n\r\n" + FAKE],
    "204-with-body": [b"HTTP/1.1 204 No Content\r\nContent-Length: 4\r\n\r\nbody" + FAKE],
    "304-with-body": [b"HTTP/1.1 304 Not Modified\r\n\r\n" + FAKE],
    "unasked-101": [b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n" + FAKE],
    "unasked-100": [b"HTTP/1.1 100 Continue\r\n\r\n" + OK + b"Content-Length: 2\r\n\r\nok"],
    "103-hints": [b"HTTP/1.1 103 Early Hints\r\nLink: </x>\r\n\r\n" + OK + b"Content-Length: 2\r\n\r\nok"],
    "1xx-flood": [b"HTTP/1.1 102 Processing\r\n\r\n" * 5000 + OK + b"Content-Length: 2\r\n\r\nok"],
    "1xx-slow-flood": [("drip", b"HTTP/1.1 102 Processing\r\n\r\n" * 3, 0.05), ("hold", 20)],
    "cl-longer-then-close": [OK + b"Content-Length: 100\r\n\r\nshort", ("close",)],
    "cl-longer-then-hold": [OK + b"Content-Length: 100\r\n\r\nshort", ("hold", 20)],
    "cl-shorter": [OK + b"Content-Length: 2\r\n\r\nokEXTRA" + FAKE],
    "chunked-then-extra": [OK + b"Transfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n" + FAKE],
    "chunked-unfinished-close": [OK + b"Transfer-Encoding: chunked\r\n\r\n2\r\nok\r\n", ("close",)],
    "chunked-bad-size": [OK + b"Transfer-Encoding: chunked\r\n\r\nzz\r\nok\r\n0\r\n\r\n"],
    "cl-and-te": [OK + b"Content-Length: 2\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n" + FAKE],
    "conflicting-cl": [OK + b"Content-Length: 2\r\nContent-Length: 7\r\n\r\nokEXTRA"],
    "close-before-head": [("close",)],
    "close-mid-head": [OK + b"Content-Le", ("close",)],
    "garbage-head": [b"SSH-2.0-OpenSSH_9.2\r\n\r\n", ("close",)],
    "silent": [("hold", 20)],
    "slow-head": [("drip", OK + b"Content-Length: 2\r\n\r\nok", 0.5)],
    "huge-head-fields": [OK + b"X-A: b\r\n" * 1000 + b"Content-Length: 2\r\n\r\nok"],
    "huge-head-line": [OK + b"X-A: " + b"a" * 100_000 + b"\r\nContent-Length: 2\r\n\r\nok"],
    "huge-head-bytes": [OK + b"".join(b"X-%d: %s\r\n" % (i, b"v" * 1000) for i in range(150))
                        + b"Content-Length: 2\r\n\r\nok"],
    "cr-injection": [OK + b"X-A: a\rSet-Cookie: evil=1\r\nContent-Length: 2\r\n\r\nok"],
    "nul-in-head": [OK + b"X-A: a\x00\r\nContent-Length: 2\r\n\r\nok"],
}
# the slow ones (each costs a timeout) run on one path each, the stream path of the host or the
# fast path through the hub
SLOW = {"1xx-slow-flood": ("host", "POST"), "silent": ("host", "POST"), "cl-longer-then-hold": ("hub", "GET"),
        "slow-head": ("hub", "GET")}


def _params():
    out = []
    for name in CASES:
        for path in ("host", "hub"):
            for method in ("GET", "POST"):
                if name in SLOW and SLOW[name] != (path, method):
                    continue
                out.append(pytest.param(name, path, method, id=f"{name}-{path}-{method}"))
    return out


@pytest.fixture(scope="module")
def hostile(framing_rig):
    for b in (framing_rig.rec_host, framing_rig.rec_hub):
        for name, steps in CASES.items():
            b.scripts["up-" + name] = steps
        b.reset()
    procs = framing_rig.proxies()
    base = {p.pid: fd_count(p.pid) for p in procs}
    yield framing_rig
    for b in (framing_rig.rec_host, framing_rig.rec_hub):
        b.reset()
    after = {p.pid: wait_fds(p.pid, base[p.pid], timeout=10) for p in procs}
    assert after == base or all(after[k] <= base[k] for k in base), f"fds before {base}, after {after}"


@pytest.mark.parametrize("name,path,method", _params())
def test_malicious_response_is_contained(hostile, name, path, method):
    proxy, backend = {"host": (hostile.host, hostile.rec_host), "hub": (hostile.hub, hostile.rec_hub)}[path]
    body = b"Content-Length: 3\r\n\r\nabc" if method == "POST" else b"\r\n"
    req = b"%s %s/script/up-%s HTTP/1.1\r\nHost: x\r\n%s" % (method.encode(), A, name.encode(), body)
    nxt = b"GET %s/next-%s HTTP/1.1\r\nHost: x\r\n\r\n" % (A, name.encode())
    logs = {svc.pid: len(svc.log()) for svc in hostile.proxies()}
    t = time.monotonic()
    view = exchange(proxy.port, req + nxt, [method.encode(), b"GET"], 2, quiet=BOUND, total=BOUND + 2)
    elapsed = time.monotonic() - t
    assert elapsed < BOUND, f"{elapsed:.1f} s: neither answered nor closed within the timeouts"
    assert not (view.error and not view.error.startswith("incomplete")), (view.error, view.raw[:300])
    assert all(r.header(b"x-rec") != b"fake" for r in view.responses), "injected response reached the client"
    for r in view.responses[1:]:
        assert r.body.split(b" ")[2] == A + b"/next-" + name.encode(), r
    # the next request of this project, on a new connection, is the backend's answer to it
    target = b"/after-%s-%s-%s" % (name.encode(), path.encode(), method.encode())
    for i in range(2):
        mark = backend.mark()
        fresh = exchange(proxy.port, b"GET %s%s HTTP/1.1\r\nHost: x\r\n\r\n" % (A, target), [b"GET"], 1, quiet=BOUND)
        assert fresh.responses, fresh.raw[:200]
        recs = {r.seq: r for r in backend.since(mark)}
        marker = fresh.responses[0].header(b"x-rec") or b"-"
        assert marker.isdigit() and recs.get(int(marker)) and recs[int(marker)].target == A + target, \
            f"the next request got {fresh.raw[:200]!r}"
    for svc in hostile.proxies():
        new = svc.log()[logs[svc.pid]:]
        assert "Traceback" not in new, new[-3000:]
    backend.reset()
