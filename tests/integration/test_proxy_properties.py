"""Property tests on the hub -> host chain: random pipelines of requests with random bodies, framing
and `Connection` fields, on one client connection and on several clients interleaved byte-wise over
two projects of one host (so they share the hub's upstream pool and the host's).

Model (README, "Message framing" and "Routing safety"): a request whose `Connection` names
Content-Length or Transfer-Encoding is refused with 400 and closes the connection; `close` ends the
connection after its answer; every other request reaches the backend once, with its method, target
and body byte for byte, in order, and its answer reaches the client that sent it, in order.
"""

from __future__ import annotations

import itertools
import random
import socket
import time

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from tests.support.framing_rig import P1, P2
from tests.support.http_wire import read_responses

pytestmark = pytest.mark.integration

TOKENS = ["keep-alive", "cookie", "x-private", "te", "upgrade", "host", "x-forwarded-for", "content-length",
          "transfer-encoding", "close"]
_ids = itertools.count()


@st.composite
def a_request(draw):
    method = draw(st.sampled_from(["GET", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"]))
    framing = draw(st.sampled_from(["none", "cl", "chunked"]))
    body = b"" if framing == "none" else draw(st.binary(max_size=300))
    cuts = sorted(draw(st.lists(st.integers(0, len(body)), max_size=4)))
    tokens = draw(st.lists(st.sampled_from(TOKENS), max_size=3, unique=True))
    spelled = [draw(st.sampled_from([t, t.upper(), t.title()])) for t in tokens]
    two_lines = draw(st.booleans())
    return {"method": method, "framing": framing, "body": body, "cuts": cuts, "tokens": tokens,
            "spelled": spelled, "two_lines": two_lines}


def encode(req, target: bytes) -> bytes:
    head = [b"%s %s HTTP/1.1" % (req["method"].encode(), target), b"Host: prop.example",
            b"Cookie: c=%s" % target[-12:], b"X-Private: p"]
    if req["spelled"]:
        if req["two_lines"] and len(req["spelled"]) > 1:
            head += [b"Connection: " + s.encode() for s in req["spelled"]]
        else:
            head.append(b"Connection: " + b", ".join(s.encode() for s in req["spelled"]))
    body = req["body"]
    if req["framing"] == "cl":
        head.append(b"Content-Length: %d" % len(body))
        payload = body
    elif req["framing"] == "chunked":
        head.append(b"Transfer-Encoding: chunked")
        pieces, start = [], 0
        for cut in req["cuts"] + [len(body)]:
            if cut > start:
                pieces.append(b"%x\r\n%s\r\n" % (cut - start, body[start:cut]))
                start = cut
        payload = b"".join(pieces) + b"0\r\n\r\n"
    else:
        payload = b""
    return b"\r\n".join(head) + b"\r\n\r\n" + payload


def model(reqs) -> tuple[int, bool]:
    """(how many requests reach the backend, whether a 400 follows them)."""
    for i, r in enumerate(reqs):
        if {"content-length", "transfer-encoding"} & set(r["tokens"]):
            return i, True
        if "close" in r["tokens"]:
            return i + 1, False
    return len(reqs), False


def check_client(backend, mark, tag: bytes, reqs, targets, view) -> None:
    n, refused = model(reqs)
    mine = [r for r in backend.since(mark) if tag in r.target]
    assert [(r.method, r.target, r.body) for r in mine] == \
        [(q["method"].encode(), t, q["body"]) for q, t in zip(reqs[:n], targets[:n])]
    for rec, q in zip(mine, reqs):
        assert rec.header(b"host") == [b"prop.example"], rec.raw_head
        assert (rec.header(b"cookie") == []) == ("cookie" in q["tokens"]), rec.raw_head
        assert (rec.header(b"x-private") == []) == ("x-private" in q["tokens"]), rec.raw_head
        assert not [a for a in rec.ambiguous], rec.ambiguous
    assert not view.error or (view.closed and view.error.startswith("incomplete")), (view.error, view.raw[-300:])
    assert len(view.responses) == n + (1 if refused else 0), [r.status for r in view.responses]
    for resp, rec in zip(view.responses, mine):
        assert resp.header(b"x-rec") == str(rec.seq).encode(), "a response reached the wrong request"
    if refused:
        assert view.responses[n].status == 400 and view.closed


SETTINGS = settings(max_examples=25, deadline=None, derandomize=True,
                    suppress_health_check=list(HealthCheck))


@SETTINGS
@given(reqs=st.lists(a_request(), min_size=1, max_size=5), projects=st.lists(st.booleans(), min_size=5, max_size=5))
def test_one_client_pipeline_reaches_the_backend_byte_for_byte(framing_rig, reqs, projects):
    """One connection, each request to either project (so the hub uses both per-project pools)."""
    hub, backend = framing_rig.hub, framing_rig.rec_hub
    tag = b"p%d" % next(_ids)
    targets = [b"/%s/prop/%s/%d" % ((P1 if projects[i] else P2).encode(), tag, i) for i in range(len(reqs))]
    mark = backend.mark()
    with socket.create_connection(("127.0.0.1", hub.port), timeout=10) as s:
        s.sendall(b"".join(encode(q, t) for q, t in zip(reqs, targets)))
        view = read_responses(s, [q["method"].encode() for q in reqs], model(reqs)[0] + model(reqs)[1],
                              quiet=2.0, total=10)
    backend.settle(quiet=0.03)
    check_client(backend, mark, b"/" + tag + b"/", reqs, targets, view)


@SETTINGS
@given(clients=st.lists(st.lists(a_request(), min_size=1, max_size=4), min_size=2, max_size=4),
       seed=st.integers(0, 2**32 - 1))
def test_interleaved_clients_on_two_projects_get_only_their_own_answers(framing_rig, clients, seed):
    hub, backend = framing_rig.hub, framing_rig.rec_hub
    rnd = random.Random(seed)
    mark = backend.mark()
    socks, plans = [], []
    try:
        for k, reqs in enumerate(clients):
            tag = b"i%d" % next(_ids)
            pid = (P1 if k % 2 == 0 else P2).encode()
            targets = [b"/%s/prop/%s/%d" % (pid, tag, i) for i in range(len(reqs))]
            data = b"".join(encode(q, t) for q, t in zip(reqs, targets))
            cuts = sorted(rnd.sample(range(1, len(data)), min(rnd.randint(1, 12), len(data) - 1)))
            pieces = [data[a:b] for a, b in zip([0] + cuts, cuts + [len(data)])]
            socks.append(socket.create_connection(("127.0.0.1", hub.port), timeout=10))
            plans.append((tag, reqs, targets, pieces))
        # byte-wise interleaving: a piece of one client, then of another, ...
        while any(p[3] for p in plans):
            k = rnd.choice([i for i, p in enumerate(plans) if p[3]])
            try:
                socks[k].sendall(plans[k][3].pop(0))
            except OSError:
                plans[k][3].clear()  # refused and closed: the rest is never read anyway
            time.sleep(rnd.choice([0, 0, 0.005]))
        views = [read_responses(s, [q["method"].encode() for q in p[1]], sum(model(p[1])), quiet=2.0, total=10)
                 for s, p in zip(socks, plans)]
    finally:
        for s in socks:
            s.close()
    backend.settle(quiet=0.03)
    for (tag, reqs, targets, _), view in zip(plans, views):
        check_client(backend, mark, b"/" + tag + b"/", reqs, targets, view)
