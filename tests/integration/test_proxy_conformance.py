"""Differential framing suite: the request and response corpus (tests/support/smuggling_corpus.py)
through `proxy serve --mode host`, hub -> host, and nginx, each in front of a recording backend.

Per case and cocalc-ctl path the invariant of tests/support/conformance.py must hold. nginx is the
reference: where what reached the backend differs, `DIFFERENCES` must say which side is stricter and
why (the same table is in the README's routing-safety section).
"""

from __future__ import annotations

import json
import threading
import time

import pytest

from tests.support.conformance import compare, run_case
from tests.support.framing_rig import P1, TIMEOUTS
from tests.support.http_wire import exchange
from tests.support.smuggling_corpus import REQUESTS, RESPONSES

pytestmark = pytest.mark.integration

PATHS = ("host", "hub", "nginx")

# case id or family -> (which side forwards less, why). An observed difference must be listed with
# the side observed; the README's routing-safety table says the same.
C, N = "cocalc stricter", "nginx stricter"
DIFFERENCES: dict[str, tuple[str, str]] = {
    "local": (C, "/healthz, /metrics, unknown projects and bad targets are answered by the proxy itself (nginx "
                 "here forwards every path); after such an answer to a request with a body the connection closes"),
    "head": (C, "bare LF, control characters, a line without a colon, a non-token name or several empty "
                "lines before the request line: 400 (nginx accepts and normalises)"),
    "conn": (C, "Connection naming Content-Length or Transfer-Encoding: 400 (nginx ignores the token)"),
    "conn-combo": (C, "Connection naming Content-Length or Transfer-Encoding: 400 (nginx ignores the token)"),
    "host": (C, "HTTP/1.0 without Host and Host with userinfo: 400 (nginx accepts)"),
    "upgrade": (C, "an upgrade request with a body is 400; after a refused upgrade the connection is closed "
                   "(nginx reads the bytes behind it as the next request)"),
    "line.lowercase-method": (N, "methods are RFC 9110 tokens (`get` is a method, not GET); nginx only takes "
                                 "upper-case letters"),
    "line": (C, "request-line spacing, HTTP/1.2, HTTP/0.9, `#` and absolute-form, dot segments and `//`: "
                "400/505 (nginx accepts, normalises or resolves them)"),
    "chunk.zero-then-data": (N, "the bytes behind the last chunk start `helloGET`, a valid method token to "
                                "cocalc-ctl (nginx: 400, upper-case methods only)"),
    "cl.underscore": (N, "`Content_Length` is an ordinary field (dropped: it has `_`); the body then starts a "
                         "`helloPOST` request, a valid method token (nginx: 400, upper-case methods only)"),
    "cl.many-leading-zeros": (C, "a Content-Length of more than 18 digits, even leading zeros: 400 (nginx reads 5)"),
    "cl.tab-value": (N, "a tab is optional whitespace before a field value (RFC 9110 §5.6.3); nginx 400s "
                        "`Content-Length:<TAB>5`"),
    "chunk": (C, "chunk extensions over 4 KiB, trailers over 16 KiB, bare LF in chunk framing or trailers, chunk "
                 "sizes of 16 digits or more: 400 (nginx accepts)"),
    "te-te.tab-value": (N, "`Transfer-Encoding:<TAB>chunked` is chunked (RFC 9110 optional whitespace); "
                           "nginx refuses it"),
    "te-te": (C, "a line with bare LF or a CR inside a value: 400 (nginx accepts bare LF)"),
}


def _difference_for(case_id: str, family: str):
    return DIFFERENCES.get(case_id) or DIFFERENCES.get(family)


@pytest.fixture(scope="module")
def request_results(framing_rig):
    """Every request case through the three paths (each path on its own thread, cases in order)."""
    results: dict[str, dict] = {p: {} for p in PATHS}

    def run(path):
        port, backend = framing_rig.paths()[path]
        flush = TIMEOUTS["idle_timeout"] + 0.5 if path == "hub" else 0.0
        for case in REQUESTS:
            results[path][case.id] = run_case(path, port, backend, case.id, case.data, flush_wait=flush)

    threads = [threading.Thread(target=run, args=(p,)) for p in PATHS]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    report = framing_rig.work / "conformance-requests.json"
    report.write_text(json.dumps({p: {c: {"forwarded": o.forwarded, "extra": o.extra, "statuses": o.statuses,
                                          "violations": o.violations, "seconds": round(o.seconds, 3)}
                                      for c, o in r.items()} for p, r in results.items()}, indent=1))
    return results


def test_corpus_is_large_enough():
    assert len(REQUESTS) >= 300 and len(RESPONSES) >= 100
    assert len({c.id for c in REQUESTS}) == len(REQUESTS)


@pytest.mark.parametrize("case", REQUESTS, ids=[c.id for c in REQUESTS])
def test_request_case_keeps_message_boundaries(request_results, case):
    problems = [f"{path}: {v}" for path in ("host", "hub") for v in request_results[path][case.id].violations]
    assert not problems, "\n".join(problems)


def test_every_difference_from_nginx_is_documented(request_results, capsys):
    undocumented, wrong = [], []
    table: dict[str, list] = {}
    for case in REQUESTS:
        ngx = request_results["nginx"][case.id]
        for path in ("host", "hub"):
            verdict = compare(request_results[path][case.id], ngx)
            if verdict == "same":
                continue
            table.setdefault(case.family, []).append((case.id, path, verdict))
            doc = _difference_for(case.id, case.family)
            if doc is None:
                undocumented.append(f"{case.id} ({path}): {verdict}: ours {request_results[path][case.id].summary()}"
                                    f" nginx {ngx.summary()}")
            elif doc[0] != verdict:
                wrong.append(f"{case.id} ({path}): documented {doc[0]!r}, observed {verdict!r}")
    with capsys.disabled():
        for family, rows in sorted(table.items()):
            print(f"\n[{family}] " + ", ".join(f"{c}/{p}: {v}" for c, p, v in rows))
    differing = {c for rows in table.values() for c, _, _ in rows}
    stale = [f"{k}: documented as a difference, but both behave alike now" for k in DIFFERENCES
             if k not in {c.family for c in REQUESTS} and k not in differing]
    assert not undocumented and not wrong and not stale, "\n".join(undocumented + wrong + stale)


# -- responses --------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def response_results(framing_rig):
    for backend in (framing_rig.rec_host, framing_rig.rec_hub, framing_rig.rec_nginx):
        for case in RESPONSES:
            backend.scripts[case.id] = list(case.steps)
    results: dict[str, dict] = {p: {} for p in PATHS}

    def run(path):
        port, backend = framing_rig.paths()[path]
        for case in RESPONSES:
            # (nginx leaves some connections open after a 502 without answering the request behind it:
            # wait less there, its own invariants are not asserted)
            results[path][case.id] = response_case(port, backend, case, flush=path == "hub",
                                                   quiet=0.5 if path == "nginx" else 1.5)

    threads = [threading.Thread(target=run, args=(p,)) for p in PATHS]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return results


def response_case(port, backend, case, flush: bool = False, quiet: float = 1.5):
    """The scripted response, then a pipelined request on the same connection, then a fresh
    connection: the client must get one framed answer to each, and the later ones must be the
    backend's real answers (no stale bytes of the scripted one)."""
    pid = ("/" + P1).encode()
    first = b"%s %s/script/%s HTTP/1.1\r\nHost: x\r\n\r\n" % (case.method, pid, case.id.encode())
    after = b"GET %s/after-%s HTTP/1.1\r\nHost: x\r\n\r\n" % (pid, case.id.encode())
    mark = backend.mark()
    view = exchange(port, first + after, [case.method, b"GET"], 2, quiet=quiet, total=8)
    problems = []
    if view.error and not (view.closed and view.error.startswith("incomplete")):
        problems.append(f"client stream: {view.error}: {view.garbage[:160]!r}")
    elif not view.responses and not view.closed:
        problems.append("no response and the connection stays open")
    if view.responses:
        r0 = view.responses[0]
        if r0.header(b"x-rec") == b"fake":
            problems.append("the injected fake response reached the client as the answer")
        if case.body is not None and r0.status == 200 and r0.body != case.body:
            problems.append(f"body {r0.body[:60]!r} != {case.body!r}")
    for j, r in enumerate(view.responses[1:], start=1):
        if not _answers(r, backend.since(mark), b"/after-" + case.id.encode()):
            problems.append(f"response {j} is not the backend's answer to /after: {r.status} {r.headers!r} {r.body[:80]!r}")
    if len(view.responses) > 2:
        problems.append(f"{len(view.responses)} responses to 2 requests")
    # a fresh client on the same project is served correctly (the pooled upstream holds no stale bytes)
    mark = backend.mark()
    fresh_target = b"/fresh-" + case.id.encode()
    fresh = exchange(port, b"GET %s%s HTTP/1.1\r\nHost: x\r\n\r\n" % (pid, fresh_target), [b"GET"], 1,
                     quiet=quiet, total=8)
    if not fresh.responses or not _answers(fresh.responses[0], backend.since(mark), fresh_target):
        problems.append(f"the next client got {fresh.raw[:200]!r}")
    else:  # and the one after it (a pool hands out its newest connection first, but which is which varies)
        mark = backend.mark()
        again = exchange(port, b"GET %s%s HTTP/1.1\r\nHost: x\r\n\r\n" % (pid, fresh_target), [b"GET"], 1,
                         quiet=quiet, total=8)
        if not again.responses or not _answers(again.responses[0], backend.since(mark), fresh_target):
            problems.append(f"the client after that got {again.raw[:200]!r}")
    backend.reset()
    if problems and flush:
        time.sleep(TIMEOUTS["idle_timeout"] + 0.5)  # the host closes the hub's pooled connection
    refused = not view.responses or view.responses[0].status in (502, 504)
    return problems, "refused" if refused else "passed"


def _answers(resp, records, target_end: bytes) -> bool:
    """`resp` is the backend's answer to the request (among `records`) whose target ends so."""
    marker = resp.header(b"x-rec") or b""
    rec = next((r for r in records if marker.isdigit() and r.seq == int(marker)), None)
    return rec is not None and rec.target.endswith(target_end) and resp.body.split(b" ")[2].endswith(target_end)


@pytest.mark.parametrize("case", RESPONSES, ids=[c.id for c in RESPONSES])
def test_response_case_reaches_the_client_framed(response_results, case):
    problems = [f"{p}: {x}" for p in ("host", "hub") for x in response_results[p][case.id][0]]
    assert not problems, "\n".join(problems)


# response case id or family -> (which side passes less on to the client, why)
RESP_DIFFERENCES: dict[str, tuple[str, str]] = {
    "valid.gzip-te-close": (C, "a response transfer coding other than exactly `chunked` is a 502 (nginx relays "
                               "it, delimited by close)"),
    "valid.cl-list-equal": (N, "`Content-Length: 5, 5` is one length, re-emitted as `content-length: 5` "
                               "(nginx 1.22: 502)"),
    "conn": (C, "a response whose Connection names Content-Length or Transfer-Encoding is a 502 (nginx "
                "ignores the token)"),
    "framing.cl-conflict": (C, "two different Content-Length values: 502 (nginx 1.22 relays the first)"),
    "framing.cl-negative": (C, "a non-numeric Content-Length: 502 (nginx 1.22 reads to close)"),
    "framing.cl-huge": (C, "a Content-Length over 18 digits: 502 (nginx 1.22 relays)"),
    "head.reason-ctl": (C, "a control character in the reason phrase: 502 (nginx relays)"),
    "head.too-many-fields": (C, "a response head over 200 fields: 502 (nginx counts bytes only, "
                                "proxy_buffer_size)"),
}


def test_every_response_difference_from_nginx_is_documented(response_results, capsys):
    seen, bad = [], []
    for case in RESPONSES:
        ngx = response_results["nginx"][case.id][1]
        for path in ("host", "hub"):
            ours = response_results[path][case.id][1]
            if ours == ngx:
                continue
            verdict = C if ours == "refused" else N
            seen.append(f"{case.id}/{path}: {verdict}")
            doc = RESP_DIFFERENCES.get(case.id) or RESP_DIFFERENCES.get(case.family)
            if doc is None or doc[0] != verdict:
                bad.append(f"{case.id} ({path}): ours {ours}, nginx {ngx}: {verdict}, documented {doc and doc[0]}")
    with capsys.disabled():
        print("\nresponse differences: " + ", ".join(seen))
    differing = {x.split("/")[0] for x in seen}
    stale = [f"{k}: documented as a difference, but both behave alike now" for k in RESP_DIFFERENCES
             if k not in {c.family for c in RESPONSES} and k not in differing]
    assert not bad and not stale, "\n".join(bad + stale)
