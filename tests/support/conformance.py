"""Run a corpus case through one proxy path and judge what the client and the backend saw.

The invariant (routing-safety section of the README): for every request the proxy accepts, the
backend receives exactly one request with the same method, target and body, the client receives
exactly one correctly framed response per request, in order, and nothing is left half-sent on an
upstream connection the proxy keeps.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from tests.support.http_wire import ClientView, Reference, exchange, reference_requests
from tests.support.recording_backend import Record, RecordingBackend

# notes of the backend's that are not a framing hazard by themselves
_BENIGN = ("trailer field",)


@dataclass
class Outcome:
    case: str
    path: str
    forwarded: list[int]                 # indices of the reference requests the backend received
    statuses: list[int]
    violations: list[str] = field(default_factory=list)
    extra: int = 0                       # backend requests that match no client request
    seconds: float = 0.0

    def summary(self) -> str:
        return f"fwd={self.forwarded} extra={self.extra} status={self.statuses}"


def judge(ref: Reference, view: ClientView, got: list[Record], stale: dict[int, bytes]) -> tuple[list[int], int, list[str]]:
    """`ref` is the lenient reading of the client's bytes (http_wire.reference_requests)."""
    violations: list[str] = []
    forwarded: list[int] = []
    index_of: dict[int, int] = {}      # backend seq -> index of the client request it is
    cursor = 0
    extra = 0
    for rec in got:
        i = next((k for k in range(cursor, len(ref.requests)) if ref.requests[k].key() == rec.key()), None)
        if i is None:
            extra += 1
            violations.append(f"backend received {rec.method!r} {rec.target[:60]!r} body {rec.body[:40]!r} "
                              "which is not the next request the client sent")
            continue
        forwarded.append(i)
        index_of[rec.seq] = i
        cursor = i + 1
        hazards = [a for a in rec.ambiguous if a not in _BENIGN]
        if hazards:
            violations.append(f"backend received an ambiguous message ({', '.join(hazards)}): {rec.raw_head[:200]!r}")
    seen = [r.seq for r in got]
    answered = []
    for j, resp in enumerate(view.responses):
        marker = resp.header(b"x-rec")
        if marker is None:
            continue
        seq = int(marker) if marker.isdigit() else None
        answered.append(seq)
        if seq not in seen:
            violations.append(f"response {j} carries x-rec {marker!r} of no request of this connection")
        elif seq in index_of and index_of[seq] != j:
            violations.append(f"response {j} is the answer to request {index_of[seq]}")
    if answered != seen[:len(answered)]:
        violations.append(f"responses {answered} do not follow the backend's order {seen}")
    if len(view.responses) > len(ref.requests) + 1:
        violations.append(f"{len(view.responses)} responses to {len(ref.requests)} requests")
    if view.error and not (view.closed and view.error.startswith("incomplete") and not view.garbage.strip()):
        violations.append(f"client stream: {view.error} (closed={view.closed}): {view.garbage[:120]!r}")
    if not ref.rest and not view.closed and len(view.responses) < len(ref.requests):
        violations.append(f"{len(view.responses)} responses to {len(ref.requests)} complete requests and the "
                          "connection stays open")
    for conn, rest in stale.items():
        violations.append(f"upstream connection {conn} is kept with a partial request in it: {rest[:120]!r}")
    return forwarded, extra, violations


def run_case(path: str, port: int, backend: RecordingBackend, case_id: str, data: bytes, *,
             flush_wait: float = 0.0) -> Outcome:
    """`flush_wait`: after a failed case, how long until the proxy's own pooled connections that
    do not end at `backend` are closed (hub path: the host's idle timeout closes hub->host)."""
    t = time.monotonic()
    ref = reference_requests(data, lenient=True)
    mark = backend.mark()
    methods = [r.method for r in ref.requests] + [b"GET"] * 4
    expect = len(ref.requests) + (1 if ref.rest and not ref.closes else 0)
    # a complete, valid pipeline is answered in full: allow a loaded machine time between answers;
    # otherwise the proxy may rightly wait for bytes that never come, and we stop listening sooner
    view = exchange(port, data, methods, expect, quiet=0.5 if ref.rest else 1.5)
    backend.settle(quiet=0.03)
    got = backend.since(mark)
    stale = {c.id: c.leftover() for c in backend.conns_since((0, 0)) if c.open and c.leftover()}
    forwarded, extra, violations = judge(ref, view, got, stale)
    if stale or violations:
        # A desynchronised upstream connection may hold a stale response or half a request: close
        # every backend connection so this case's damage is not blamed on the next one.
        backend.reset()
        time.sleep(flush_wait)
    return Outcome(case_id, path, forwarded, [r.status for r in view.responses], violations, extra,
                   time.monotonic() - t)


def compare(ours: Outcome, nginx: Outcome) -> str:
    """'same', 'cocalc stricter', 'nginx stricter' or 'different' (by what reached the backend)."""
    a, b = set(ours.forwarded), set(nginx.forwarded)
    if a == b and ours.extra == nginx.extra:
        return "same"
    if a <= b and ours.extra <= nginx.extra:
        return "cocalc stricter"
    if b <= a and nginx.extra <= ours.extra:
        return "nginx stricter"
    return "different"
