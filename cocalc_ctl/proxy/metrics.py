"""Counters for `/metrics` (Prometheus text exposition format 0.0.4) and the access log line."""

from __future__ import annotations

import json
import re
import sys
import time
from collections import Counter


class Metrics:
    def __init__(self):
        self.requests: Counter[int] = Counter()
        self.upstream_errors: Counter[str] = Counter()
        self.bytes_upstream = 0    # request body bytes sent to upstreams (and tunnel bytes client -> upstream)
        self.bytes_downstream = 0  # response body bytes sent to clients (and tunnel bytes upstream -> client)
        self.active_connections = 0
        self.active_websockets = 0
        self.websockets_total = 0
        self.fast_path = 0         # exchanges finished on the Protocol fast path
        self.stream_path = 0       # exchanges finished on the stream relay
        self.event_loop = ""       # "uvloop" or "asyncio", set by serve()
        self.lookup_seconds: dict[str, Histogram] = {}  # hub mode: "route", "decision" (set by the server)
        self.started = time.time()

    def render(self, extra: dict[str, tuple[str, str, float]] | None = None) -> bytes:
        out = [
            "# HELP cocalc_proxy_requests_total Requests answered, by HTTP status.",
            "# TYPE cocalc_proxy_requests_total counter",
        ]
        out += [f'cocalc_proxy_requests_total{{status="{s}"}} {n}' for s, n in sorted(self.requests.items())]
        out += [
            "# HELP cocalc_proxy_upstream_errors_total Failures talking to upstreams, by kind.",
            "# TYPE cocalc_proxy_upstream_errors_total counter",
        ]
        out += [f'cocalc_proxy_upstream_errors_total{{kind="{k}"}} {n}'
                for k, n in sorted(self.upstream_errors.items())]
        out += [
            "# HELP cocalc_proxy_bytes_total Body and tunnel bytes relayed, by direction.",
            "# TYPE cocalc_proxy_bytes_total counter",
            f'cocalc_proxy_bytes_total{{direction="upstream"}} {self.bytes_upstream}',
            f'cocalc_proxy_bytes_total{{direction="downstream"}} {self.bytes_downstream}',
            "# HELP cocalc_proxy_active_connections Open client connections.",
            "# TYPE cocalc_proxy_active_connections gauge",
            f"cocalc_proxy_active_connections {self.active_connections}",
            "# HELP cocalc_proxy_active_websockets Open upgraded (WebSocket) tunnels.",
            "# TYPE cocalc_proxy_active_websockets gauge",
            f"cocalc_proxy_active_websockets {self.active_websockets}",
            "# HELP cocalc_proxy_websockets_total Upgraded tunnels opened.",
            "# TYPE cocalc_proxy_websockets_total counter",
            f"cocalc_proxy_websockets_total {self.websockets_total}",
            "# HELP cocalc_proxy_path_requests_total Requests answered, by the path that served them.",
            "# TYPE cocalc_proxy_path_requests_total counter",
            f'cocalc_proxy_path_requests_total{{path="fast"}} {self.fast_path}',
            f'cocalc_proxy_path_requests_total{{path="stream"}} {self.stream_path}',
            "# HELP cocalc_proxy_event_loop_info The event loop the proxy runs on.",
            "# TYPE cocalc_proxy_event_loop_info gauge",
            f'cocalc_proxy_event_loop_info{{loop="{self.event_loop or "unknown"}"}} 1',
            "# HELP cocalc_proxy_start_time_seconds Unix time the proxy started.",
            "# TYPE cocalc_proxy_start_time_seconds gauge",
            f"cocalc_proxy_start_time_seconds {self.started:.3f}",
        ]
        for name, (kind, help_, value) in (extra or {}).items():
            out += [f"# HELP {name} {help_}", f"# TYPE {name} {kind}", f"{name} {value:g}"]
        if self.lookup_seconds:
            out += render_histograms("cocalc_proxy_hub_lookup_seconds", "Hub lookups from the cache miss to the "
                                     "answer, measured in the proxy (route; decision, with the route beside it).",
                                     "kind", self.lookup_seconds)
        return ("\n".join(out) + "\n").encode()


# Seconds: from a cache miss to its answer, for lookups that take a hub round trip (0.25 ms .. 5 s).
LOOKUP_BUCKETS = (0.00025, 0.0005, 0.001, 0.0015, 0.002, 0.003, 0.005, 0.0075, 0.01, 0.015, 0.025, 0.05,
                  0.1, 0.25, 0.5, 1.0, 2.5, 5.0)


class Histogram:
    """A Prometheus histogram (cumulative `_bucket{le=…}`, `_sum`, `_count`) of one labelled series."""

    __slots__ = ("bounds", "counts", "sum", "count")

    def __init__(self, bounds: tuple = LOOKUP_BUCKETS):
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)  # the last one: above every bound (+Inf)
        self.sum = 0.0
        self.count = 0

    def observe(self, value: float) -> None:
        i = 0
        bounds = self.bounds
        n = len(bounds)
        while i < n and value > bounds[i]:
            i += 1
        self.counts[i] += 1
        self.sum += value
        self.count += 1

    def samples(self, name: str, labels: str) -> list[str]:
        out, total = [], 0
        for bound, n in zip((*self.bounds, "+Inf"), self.counts):
            total += n
            le = bound if isinstance(bound, str) else f"{bound:g}"
            out.append(f'{name}_bucket{{{labels},le="{le}"}} {total}')
        out += [f"{name}_sum{{{labels}}} {self.sum:.6f}", f"{name}_count{{{labels}}} {self.count}"]
        return out


def render_histograms(name: str, help_: str, label: str, series: dict) -> list[str]:
    """One histogram family with a series per label value ({value: Histogram})."""
    out = [f"# HELP {name} {help_}", f"# TYPE {name} histogram"]
    for value, h in series.items():
        out += h.samples(name, f'{label}="{value}"')
    return out


# A token or session value anywhere in a logged path (`/<p>/x;token=cct_...`, `/<p>/cct_...`): never logged.
_SECRET_IN_PATH = re.compile(r"(cc[ts]_)[A-Za-z0-9_-]+", re.ASCII)


class AccessLog:
    """One line per request on stderr; the query string is never logged (it carries tokens), nor anything
    shaped like a token or session value elsewhere in the path."""

    def __init__(self, enabled: bool, as_json: bool, stream=None, worker: int | None = None):
        self.enabled = enabled
        self.as_json = as_json
        self.stream = stream or sys.stderr
        self.worker = worker  # `--workers N`: which worker served the request (a field of every line)

    def log(self, *, peer: str, method: bytes, target: bytes, status: int, bytes_out: int, seconds: float,
            upstream: str | None, note: str | None = None) -> None:
        if not self.enabled:
            return
        path = target.split(b"?", 1)[0].decode("ascii", "replace")
        if "cct_" in path or "ccs_" in path:
            path = _SECRET_IN_PATH.sub(r"\1...", path)
        path = path[:512]
        if self.as_json:
            line = json.dumps({"ts": round(time.time(), 3), "peer": peer, "method": method.decode("ascii", "replace"),
                               "path": path, "status": status, "bytes": bytes_out, "ms": round(seconds * 1000, 2),
                               "upstream": upstream, **({"note": note} if note else {}),
                               **({"worker": self.worker} if self.worker is not None else {})}, separators=(",", ":"))
        else:
            line = (f'{peer} "{method.decode("ascii", "replace")} {path}" {status} {bytes_out} '
                    f'{seconds * 1000:.1f}ms {upstream or "-"}' + (f" ({note})" if note else "")
                    + (f" worker={self.worker}" if self.worker is not None else ""))
        try:
            self.stream.write(line + "\n")
            self.stream.flush()
        except (OSError, ValueError):
            pass
