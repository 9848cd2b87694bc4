#!/usr/bin/env python3
"""Access control's cost in the hub proxy: hub -> host -> backend with `proxy.auth: builtin` (a Bearer
token on every request, decisions cached) against the same chain with `proxy.auth: none`, in
interleaved wrk rounds of one run; then the first request of fresh tokens (a cache miss: one decision
query) against a second request of each (a hit), with the hub holding --tokens tokens and grants; then
how long a removed grant takes to refuse the next request and to close an open WebSocket.

    python3 benchmarks/proxy/auth_bench.py [--duration 10] [--rounds 3] [--connections 64] \
        [--tokens 100000] [--cold 300] [--revocations 20]

Needs: wrk, PostgreSQL server binaries (as the tests). Prints the environment, then Markdown tables.
Target (issue 13): authenticated >= 0.9x the request rate of `none`; a cold miss p99 < 5 ms.
"""

from __future__ import annotations

import argparse
import http.client
import os
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

from benchenv import print_environment  # noqa: E402

PID = str(uuid.uuid4())
HOST = str(uuid.uuid4())


def fill_hub(dsn: str, n: int) -> None:
    """n accounts, each with a grant on its own project and a token (the decision query's worst size)."""
    from tests.support.postgres import sql

    if n <= 0:
        return
    sql(dsn, """INSERT INTO projects (project_id, host_id)
                SELECT md5('p' || i)::uuid, %s FROM generate_series(1, %s) i""", (HOST, n))
    sql(dsn, """INSERT INTO accounts (account_id, name)
                SELECT md5('a' || i)::uuid, 'bench' || i FROM generate_series(1, %s) i""", (n,))
    sql(dsn, """INSERT INTO project_grants (project_id, account_id, role)
                SELECT md5('p' || i)::uuid, md5('a' || i)::uuid, 'collaborator' FROM generate_series(1, %s) i""",
        (n,))
    sql(dsn, """INSERT INTO access_tokens (token_id, account_id, name, token_hash)
                SELECT md5('t' || i)::uuid, md5('a' || i)::uuid, 'bench', sha256(('bench' || i)::bytea)
                FROM generate_series(1, %s) i""", (n,))
    sql(dsn, "ANALYZE")


def timed_get(conn: http.client.HTTPConnection, path: str, headers: dict) -> tuple[int, float]:
    t = time.perf_counter()
    conn.request("GET", path, headers=headers)
    resp = conn.getresponse()
    resp.read()
    return resp.status, (time.perf_counter() - t) * 1000


def serve(work: Path, mode: str, config: dict):
    """`proxy serve` without an access log (as in production benchmarks), on a free port."""
    from tests.support.ports import free_port
    from tests.support.proxy import Service, write_config

    port = free_port()
    cfg = write_config(work / f"{mode}-{port}.yaml", config)
    env = {k: v for k, v in os.environ.items() if not k.startswith("COCALC_CTL_")}
    return Service([sys.executable, "-m", "cocalc_ctl", "--config", str(cfg), "proxy", "serve", "--mode", mode,
                    "--listen", f"127.0.0.1:{port}", "--no-access-log"], work / f"{mode}-{port}.log", port, env=env)


def open_websocket(port: int, path: str, headers: dict):
    import socket

    s = socket.create_connection(("127.0.0.1", port), timeout=10)
    extra = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
    s.sendall((f"GET {path} HTTP/1.1\r\nHost: bench\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
               f"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n{extra}\r\n").encode())
    head = b""
    while b"\r\n\r\n" not in head:
        head += s.recv(4096)
    assert head.startswith(b"HTTP/1.1 101"), head[:100]
    return s


def pct(values: list[float], p: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(round(p / 100 * (len(values) - 1))))]


def main() -> int:
    from bench import wrk  # benchmarks/proxy/bench.py

    from cocalc_ctl.state import hub_db
    from tests.support.access import add_account, add_token, grant
    from tests.support.postgres import Postgres, sql
    from tests.support.proxy import host_identity, host_state, hub_secret, start_backend

    ap = argparse.ArgumentParser()
    ap.add_argument("--duration", type=int, default=10)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--connections", type=int, default=64)
    ap.add_argument("--tokens", type=int, default=100_000, help="tokens and grants in the hub besides ours")
    ap.add_argument("--cold", type=int, default=300, help="fresh tokens for the cache-miss figure")
    ap.add_argument("--revocations", type=int, default=20, help="grants removed under an open WebSocket")
    args = ap.parse_args()
    print_environment()

    work = Path(tempfile.mkdtemp(prefix="auth-bench-", dir="/var/tmp"))
    pg = Postgres().start()
    started = []
    try:
        pg.wait_ready()
        dsn = pg.new_database()
        hub_db.migrate(dsn)
        backend = start_backend(work)
        started.append(backend)
        host_state(work / "host", {PID: backend.port})
        # the host checks the hub credential (both hubs sign with its secret), as in production
        hub_secret(dsn, HOST, work / "host")
        host = serve(work, "host", {"data_dir": str(work / "host"), **host_identity(HOST, work / "host"),
                                    "proxy": {"trust_forwarded": ["127.0.0.1"]}})
        started.append(host)
        sql(dsn, "INSERT INTO project_hosts(id, name, internal_url) VALUES (%s, %s, %s)",
            (HOST, "bench", f"http://127.0.0.1:{host.port}"))
        sql(dsn, "INSERT INTO projects(project_id, host_id) VALUES (%s, %s)", (PID, HOST))
        t = time.monotonic()
        fill_hub(dsn, args.tokens)
        print(f"hub filled with {args.tokens} accounts, grants and tokens in {time.monotonic() - t:.1f} s")
        account = add_account(dsn, "bench-user")
        grant(dsn, PID, account, "collaborator")
        token, _ = add_token(dsn, account)
        hubs = {}
        for auth in ("builtin", "none"):
            hubs[auth] = serve(work, "hub", {"data_dir": str(work / f"hub-{auth}"), "hub_dsn": dsn,
                                                   "proxy": {"auth": auth}})
            started.append(hubs[auth])
        auth_header = {"Authorization": f"Bearer {token}"}
        for port in (h.port for h in hubs.values()):  # warm: routes and the decision cached
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
            status, _ = timed_get(conn, f"/{PID}/info", auth_header)
            conn.close()
            assert status == 200, status

        results = {name: [] for name in hubs}
        order = list(hubs)
        for r in range(args.rounds):
            for name in (order if r % 2 == 0 else order[::-1]):
                res = wrk(f"http://127.0.0.1:{hubs[name].port}/{PID}/info", args.duration, args.connections,
                          headers=auth_header)
                assert res["non2xx"] == 0 and not res["socket_errors"], res
                results[name].append(res)
                print(f"round {r + 1} {name}: {res['rps']:.0f} req/s p50 {res['p50']:.2f} ms p99 {res['p99']:.2f} ms",
                      flush=True)
        base = statistics.median(x["rps"] for x in results["none"])
        print(f"\nunder load (shared machine), hub -> host -> backend, wrk -c{args.connections} -d{args.duration}s, "
              f"{args.rounds} interleaved rounds, medians:\n")
        print("| hub proxy | req/s | ratio | p50 ms | p99 ms |")
        print("|---|---:|---:|---:|---:|")
        for name in ("none", "builtin"):
            rps = statistics.median(x["rps"] for x in results[name])
            print(f"| proxy.auth: {name} | {rps:.0f} | {rps / base:.2f} | "
                  f"{statistics.median(x['p50'] for x in results[name]):.2f} | "
                  f"{statistics.median(x['p99'] for x in results[name]):.2f} |")
        paired = [b["rps"] / n["rps"] for b, n in zip(results["builtin"], results["none"])]
        print(f"\nper round (the two measured back to back), builtin / none: "
              f"{', '.join(f'{x:.2f}' for x in paired)}; median {statistics.median(paired):.2f}")

        # cold misses: the first request of each fresh token is a decision query, the second a cache hit
        fresh = [add_token(dsn, account)[0] for _ in range(args.cold)]
        cold, warm = [], []
        conn = http.client.HTTPConnection("127.0.0.1", hubs["builtin"].port, timeout=10)
        for tok in fresh:
            h = {"Authorization": f"Bearer {tok}"}
            status, ms = timed_get(conn, f"/{PID}/info", h)
            assert status == 200, status
            cold.append(ms)
            status, ms = timed_get(conn, f"/{PID}/info", h)
            warm.append(ms)
        conn.close()
        print(f"\nfirst request of {args.cold} fresh tokens (a decision query; {args.tokens} tokens and grants in "
              "the hub) against the second (cached), one keep-alive connection, whole request through "
              "hub -> host -> backend, under load:\n")
        print("| request | p50 ms | p99 ms | max ms |")
        print("|---|---:|---:|---:|")
        for name, xs in (("cold (cache miss)", cold), ("warm (cache hit)", warm)):
            print(f"| {name} | {pct(xs, 50):.2f} | {pct(xs, 99):.2f} | {max(xs):.2f} |")
        print(f"\nmiss overhead (p50 cold - p50 warm): {pct(cold, 50) - pct(warm, 50):.2f} ms; "
              f"(p99 cold - p99 warm): {pct(cold, 99) - pct(warm, 99):.2f} ms")

        # revocation: a grant removed (committed) -> next HTTP request refused, open WebSocket closed
        http_ms, ws_ms = [], []
        port = hubs["builtin"].port
        for i in range(args.revocations):
            aid = add_account(dsn, f"revoked{i}")
            grant(dsn, PID, aid, "collaborator")
            tok, _ = add_token(dsn, aid)
            h = {"Authorization": f"Bearer {tok}"}
            ws = open_websocket(port, f"/{PID}/ws", h)
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
            assert timed_get(conn, f"/{PID}/info", h)[0] == 200
            t0 = time.perf_counter()
            sql(dsn, "DELETE FROM project_grants WHERE project_id = %s AND account_id = %s", (PID, aid))
            while timed_get(conn, f"/{PID}/info", h)[0] != 403:
                pass
            http_ms.append((time.perf_counter() - t0) * 1000)
            ws.settimeout(10)
            assert ws.recv(4096) == b""
            ws_ms.append((time.perf_counter() - t0) * 1000)
            ws.close()
            conn.close()
        print(f"\n{args.revocations} grants removed (from the commit returning to the client), under load:\n")
        print("| refused | median ms | max ms |")
        print("|---|---:|---:|")
        print(f"| next HTTP request (403) | {statistics.median(http_ms):.1f} | {max(http_ms):.1f} |")
        print(f"| open WebSocket closed | {statistics.median(ws_ms):.1f} | {max(ws_ms):.1f} |")
    finally:
        for s in reversed(started):
            s.stop()
        pg.stop()
        import shutil

        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    os.environ.pop("COCALC_CTL_CONFIG", None)
    sys.exit(main())
