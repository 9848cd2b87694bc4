#!/usr/bin/env python3
"""The hub proxy at fleet scale: cold route lookups with 64 concurrent clients over 10,000 distinct
projects, and its memory under a flood of random unknown project ids (issue 16, "Prove it").

A throwaway PostgreSQL (unix socket, fsync off; removed at the end) holds --hosts hosts (all with an
internal_url pointing at one nginx that answers every path with 200) and --projects projects spread
over them; --hit of them are requested. `proxy serve --mode hub --workers 1 --no-access-log` runs in
front, once with `proxy.auth: none` and once with `proxy.auth: builtin` (one account with a grant on
each of the --hit projects and one unscoped token; the hub also holds --projects other accounts, each
with a grant and a token, so the decision query runs at that scale).

1. Cold vs warm: --clients concurrent keep-alive connections (one asyncio client process) share the
   --hit projects; for each project the client sends its FIRST request (cold: route, and with builtin
   the decision, not cached; a database lookup each) and at once the same request again (warm: both
   cached), so the baseline is interleaved with what it is compared to. Target: cold p99 < 5 ms.
2. RSS under random unknown ids: wrk (a Lua script makes a fresh random uuid path per request) sends
   --requests requests in total (in 5 s slices) to a fresh hub proxy; VmRSS of the proxy
   (/proc/PID/status) is sampled before, after every slice, and after. With `none` the refusals (404)
   land in the route cache's negative LRU, with `builtin` (a valid token on every request, -H) the
   refusals (403) land in the decision cache's negative LRU. Each is run with the configured cache size
   and with --scale times it, to show the memory follows the configured bound and then stops growing.
3. One unknown project requested for --hot-seconds (one cached 404 answered over and over, with a long
   route TTL): RSS must stay flat (it grew with every request while a cached refusal was re-raised as
   the same exception instance, which chains each raise's traceback onto it).

    .venv/bin/python benchmarks/fleet/bench_hub_proxy.py [--projects 100000] [--hit 10000] \
        [--requests 1000000] [--clients 64] [--hot-seconds 20] [--quick] [--skip-cold] [--skip-rss] \
        [--rss-auth none|builtin|both] [--scale 10]

Needs root, wrk, nginx (nginx-light) and the PostgreSQL server binaries (as the tests). Prints the
environment first (load average: on a busy machine every figure is "under load").
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import os
import random
import re
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))
sys.path.insert(0, str(REPO / "benchmarks" / "proxy"))

from benchenv import print_environment  # noqa: E402

# A fresh random canonical (lowercase, version 4) uuid per request; every wrk thread seeds its own stream.
LUA = r"""
local counter = 0
function setup(thread)
  counter = counter + 1
  thread:set("seed", counter)
end
function init(args)
  math.randomseed(os.time() * 1000 + seed * 7919 + math.floor(os.clock() * 1000000))
end
local r = math.random
request = function()
  local path = string.format("/%04x%04x-%04x-4%03x-%04x-%04x%04x%04x/x",
    r(0, 65535), r(0, 65535), r(0, 65535), r(0, 4095), 32768 + r(0, 16383), r(0, 65535), r(0, 65535), r(0, 65535))
  return wrk.format("GET", path)
end
"""


def pct(xs: list[float], p: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(p / 100 * (len(xs) - 1))))]


def fill(dsn: str, hosts: int, projects: int, backend_port: int) -> None:
    from tests.support.postgres import sql

    sql(dsn, """INSERT INTO project_hosts (id, name, ssh_server, status, trusted, last_seen, internal_url)
                SELECT md5('h' || i)::uuid, 'host-' || i, '127.0.0.1:22', 'active', true, now(), %s
                  FROM generate_series(1, %s) i""", (f"http://127.0.0.1:{backend_port}", hosts))
    sql(dsn, """INSERT INTO projects (project_id, host_id)
                SELECT md5('p' || i)::uuid, md5('h' || (1 + i %% %s))::uuid FROM generate_series(1, %s) i""",
        (hosts, projects))
    # the access tables at the same scale: one account per project, with a grant on it and a token
    sql(dsn, """INSERT INTO accounts (account_id, name)
                SELECT md5('a' || i)::uuid, 'fill' || i FROM generate_series(1, %s) i""", (projects,))
    sql(dsn, """INSERT INTO project_grants (project_id, account_id, role)
                SELECT md5('p' || i)::uuid, md5('a' || i)::uuid, 'collaborator' FROM generate_series(1, %s) i""",
        (projects,))
    sql(dsn, """INSERT INTO access_tokens (token_id, account_id, name, token_hash)
                SELECT md5('t' || i)::uuid, md5('a' || i)::uuid, 'fill', sha256(('fill' || i)::bytea)
                  FROM generate_series(1, %s) i""", (projects,))


def bench_account(dsn: str, hit: list[str]) -> str:
    """One account with a grant on every hit project and one unscoped token; the token."""
    import psycopg

    from tests.support.access import add_account, add_token

    account = add_account(dsn, "bench-user")
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("""INSERT INTO project_grants (project_id, account_id, role)
                        SELECT unnest(%s::uuid[]), %s, 'collaborator'""", (hit, account))
        conn.execute("ANALYZE")
    return add_token(dsn, account)[0]


def start_hub(work: Path, dsn: str, auth: str, extra: dict | None = None):
    from tests.support.proxy import Service, write_config
    from tests.support.ports import free_port

    port = free_port()
    cfg = {"data_dir": str(work / f"hub-{port}"), "hub_dsn": dsn, "proxy": {"auth": auth, **(extra or {})}}
    path = write_config(work / f"hub-{port}.yaml", cfg)
    env = {k: v for k, v in os.environ.items() if not k.startswith("COCALC_CTL_")}
    return Service([sys.executable, "-m", "cocalc_ctl", "--config", str(path), "proxy", "serve", "--mode", "hub",
                    "--listen", f"127.0.0.1:{port}", "--workers", "1", "--no-access-log"],
                   work / f"hub-{port}.log", port, env=env)


# -- 1. cold vs warm ------------------------------------------------------------------------------

async def _get(reader, writer, request: bytes) -> tuple[int, float]:
    t = time.perf_counter()
    writer.write(request)
    head = await reader.readuntil(b"\r\n\r\n")
    m = re.search(rb"\r\ncontent-length: *(\d+)", head, re.I)
    if m is None:
        raise RuntimeError(f"no content-length in {head[:200]!r}")
    await reader.readexactly(int(m.group(1)))
    return int(head[9:12]), (time.perf_counter() - t) * 1000


async def cold_warm(port: int, projects: list[str], clients: int, token: str | None) -> tuple[list, list]:
    auth = f"Authorization: Bearer {token}\r\n" if token else ""
    queue = list(projects)
    cold, warm = [], []

    async def client():
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            while queue:
                pid = queue.pop()
                req = f"GET /{pid}/x HTTP/1.1\r\nHost: bench\r\n{auth}\r\n".encode()
                for into in (cold, warm):
                    status, ms = await _get(reader, writer, req)
                    if status != 200:
                        raise RuntimeError(f"{pid}: HTTP {status}")
                    into.append(ms)
        finally:
            writer.close()

    await asyncio.gather(*(client() for _ in range(clients)))
    return cold, warm


def lookups(port: int) -> dict:
    import urllib.request

    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    return {m.group(1): float(m.group(2)) for m in re.finditer(r"^(cocalc_proxy_\w+?)(?:\{[^}]*\})? ([\d.e+-]+)$",
                                                              text, re.M)}


def run_cold(work: Path, dsn: str, hit: list[str], token: str, clients: int) -> None:
    print(f"## 1. cold vs warm: {len(hit)} distinct projects, {clients} concurrent keep-alive clients, "
          "each project's first request (cold) then the same again (warm, cached), whole request through "
          "hub proxy -> nginx, under load\n")
    rows = []
    for auth in ("none", "builtin"):
        hub = start_hub(work, dsn, auth)
        try:
            # warm the proxy itself (code paths, pool connections) on projects not measured
            asyncio.run(cold_warm(hub.port, hit[-50:], 8, token if auth == "builtin" else None))
            # one client: the lookup's latency without queueing behind other clients' lookups
            solo = hit[-50 - max(1, len(hit) // 20):-50]
            cold1, warm1 = asyncio.run(cold_warm(hub.port, solo, 1, token if auth == "builtin" else None))
            before = lookups(hub.port)
            cpu0 = cpu_seconds(hub.pid)
            t = time.monotonic()
            cold, warm = asyncio.run(cold_warm(hub.port, hit[:-50 - len(solo)], clients,
                                               token if auth == "builtin" else None))
            wall = time.monotonic() - t
            cpu = cpu_seconds(hub.pid) - cpu0
            after = lookups(hub.port)
        finally:
            hub.stop()
        rl = after.get("cocalc_proxy_route_lookups_total", 0) - before.get("cocalc_proxy_route_lookups_total", 0)
        al = after.get("cocalc_proxy_auth_lookups_total", 0) - before.get("cocalc_proxy_auth_lookups_total", 0)
        rows.append((auth, cold, warm, wall, rl, al, cpu, cold1, warm1))
    print("| proxy.auth | request | n | median ms | p90 ms | p99 ms | max ms |")
    print("|---|---|---:|---:|---:|---:|---:|")
    for auth, cold, warm, wall, rl, al, cpu, cold1, warm1 in rows:
        for name, xs in ((f"cold (first), {clients} clients", cold), (f"warm (cached), {clients} clients", warm),
                         ("cold (first), 1 client", cold1), ("warm (cached), 1 client", warm1)):
            print(f"| {auth} | {name} | {len(xs)} | {pct(xs, 50):.2f} | {pct(xs, 90):.2f} | {pct(xs, 99):.2f} | "
                  f"{max(xs):.2f} |")
    print()
    for auth, cold, warm, wall, rl, al, cpu, cold1, warm1 in rows:
        print(f"- {auth}, {clients} clients: the proxy used {cpu:.2f} s of CPU for {len(cold) + len(warm)} requests "
              f"in {wall:.2f} s ({cpu / wall:.2f} cores): {cpu / (len(cold) + len(warm)) * 1e6:.0f} us per request, "
              f"half of them cold")
        verdict = "met" if pct(cold, 99) < 5 else "NOT met"
        print(f"- {auth}: cold - warm: median {pct(cold, 50) - pct(warm, 50):+.2f} ms, p99 "
              f"{pct(cold, 99) - pct(warm, 99):+.2f} ms; cold/warm median {pct(cold, 50) / pct(warm, 50):.2f}; "
              f"target cold p99 < 5 ms: {verdict}; {len(cold) * 2 / wall:.0f} req/s; route lookups "
              f"{rl:.0f}, decision lookups {al:.0f} (from /metrics; one per cold request expected)")
    print(flush=True)


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


# -- 2. RSS under random unknown ids ----------------------------------------------------------------

def rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def wrk_slice(url: str, script: Path, seconds: int, connections: int, headers: list[str]) -> tuple[int, int]:
    """(requests, non-2xx) of one wrk run."""
    argv = ["wrk", "-t2", f"-c{connections}", f"-d{seconds}s", "-s", str(script)]
    for h in headers:
        argv += ["-H", h]
    out = subprocess.run([*argv, url], capture_output=True, text=True, check=True).stdout
    n = int(re.search(r"(\d+) requests in", out).group(1))
    bad = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    return n, int(bad.group(1)) if bad else 0


def run_rss(work: Path, dsn: str, token: str, requests: int, connections: int, scale: int,
            modes: tuple = ("none", "builtin")) -> None:
    script = work / "random_uuid.lua"
    script.write_text(LUA)
    base = 10000  # the default of proxy.route_cache_size and proxy.auth_cache_size
    print(f"## 2. RSS of the hub proxy (--workers 1) while wrk sends {requests} requests for random unknown "
          f"project ids ({connections} connections, 5 s slices), under load\n", flush=True)
    results = []
    for auth, key in (("none", "route_cache_size"), ("builtin", "auth_cache_size")):
        if auth not in modes:
            continue
        for size in (base, base * scale):
            hub = start_hub(work, dsn, auth, {key: size})
            try:
                headers = [f"Authorization: Bearer {token}"] if auth == "builtin" else []
                # one known request first, so "before" is a proxy that has served (pool open, code warm)
                import http.client

                c = http.client.HTTPConnection("127.0.0.1", hub.port, timeout=10)
                c.request("GET", f"/{uuid.uuid4()}/x", headers=dict(h.split(": ", 1) for h in headers))
                status = c.getresponse().status
                c.close()
                before = rss_kb(hub.pid)
                samples, done, refused = [(0, before)], 0, 0
                t = time.monotonic()
                while done < requests:
                    n, bad = wrk_slice(f"http://127.0.0.1:{hub.port}/", script, 5, connections, headers)
                    done += n
                    refused += bad
                    samples.append((done, rss_kb(hub.pid)))
                    print(f"  {auth} {key}={size}: {done} requests, VmRSS {samples[-1][1]} kB", flush=True)
                wall = time.monotonic() - t
                time.sleep(1)
                after = rss_kb(hub.pid)
                m = lookups(hub.port)
            finally:
                hub.stop()
            results.append({"auth": auth, "key": key, "size": size, "neg": max(16, size // 4), "status": status,
                            "before": before, "peak": max(s[1] for s in samples + [(0, after)]), "after": after,
                            "done": done, "refused": refused, "rps": done / wall, "samples": samples,
                            "lookups": m.get("cocalc_proxy_route_lookups_total" if auth == "none"
                                             else "cocalc_proxy_auth_lookups_total", 0)})
    print("\n| proxy.auth | configured | refusals' LRU bound | answer | requests | non-2xx | req/s | "
          "RSS before MB | peak MB | after MB | growth MB |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in results:
        print(f"| {r['auth']} | {r['key']}: {r['size']} | {r['neg']} | {r['status']} | {r['done']} | {r['refused']} | "
              f"{r['rps']:.0f} | {r['before'] / 1024:.1f} | {r['peak'] / 1024:.1f} | {r['after'] / 1024:.1f} | "
              f"{(r['after'] - r['before']) / 1024:.1f} |")
    print()
    for small, big in zip(results[0::2], results[1::2]):
        # refusals actually held at the end (every request names a new id, so min(requests, bound))
        extra_entries = min(big["done"], big["neg"]) - min(small["done"], small["neg"])
        per = (big["after"] - small["after"]) * 1024 / extra_entries
        print(f"- {small['auth']}: {small['key']} {small['size']} -> {big['size']} (refusals kept {small['neg']} -> "
              f"{big['neg']}): RSS after {small['after'] / 1024:.1f} -> {big['after'] / 1024:.1f} MB, about "
              f"{per:.0f} bytes per cached refusal; so the configured size bounds the growth at about "
              f"{per * (small['size'] + small['neg']) / 2**20:.1f} MB (both halves full) at {small['size']}")
        if big["done"] < 2 * big["neg"]:
            print(f"  (the larger LRU saw fewer than twice its bound in requests: whether RSS stops growing past it "
                  f"is not shown; use more --requests)")
        for r in (small, big):
            curve = ", ".join(f"{n // 1000}k:{kb / 1024:.0f}" for n, kb in r["samples"])
            print(f"  {r['key']}={r['size']} RSS (requests:MB): {curve}")
    print(flush=True)


def run_hot(work: Path, dsn: str, connections: int, seconds: int) -> None:
    """One unknown project requested over and over (a cached 404) with a long route TTL: memory must not
    grow with the number of requests answered from one cache entry."""
    pid = str(uuid.uuid4())
    hub = start_hub(work, dsn, "none", {"route_cache_ttl": 3600})
    samples = []
    try:
        url = f"http://127.0.0.1:{hub.port}/{pid}/x"
        subprocess.run(["curl", "-s", "-o", "/dev/null", url], check=False)
        samples.append((0, rss_kb(hub.pid)))
        done = 0
        for _ in range(max(1, seconds // 5)):
            out = subprocess.run(["wrk", "-t2", f"-c{connections}", "-d5s", url], capture_output=True, text=True,
                                 check=True).stdout
            done += int(re.search(r"(\d+) requests in", out).group(1))
            samples.append((done, rss_kb(hub.pid)))
        m = lookups(hub.port)
    finally:
        hub.stop()
    print(f"## 3. one unknown project requested {done} times (a cached 404, proxy.route_cache_ttl 3600), "
          f"{connections} connections, under load\n")
    print(f"route lookups: {m.get('cocalc_proxy_route_lookups_total', 0):.0f}; RSS (requests:MB): "
          + ", ".join(f"{n // 1000}k:{kb / 1024:.1f}" for n, kb in samples)
          + f"; growth {(samples[-1][1] - samples[0][1]) / 1024:.1f} MB\n", flush=True)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--hosts", type=int, default=100)
    ap.add_argument("--projects", type=int, default=100_000, help="projects in the hub (default 100000)")
    ap.add_argument("--hit", type=int, default=10_000, help="distinct projects requested cold (default 10000)")
    ap.add_argument("--clients", type=int, default=64, help="concurrent clients (default 64)")
    ap.add_argument("--requests", type=int, default=1_000_000, help="random-id requests per RSS run (default 1000000)")
    ap.add_argument("--scale", type=int, default=10, help="the larger cache size of the contrast, x default (10)")
    ap.add_argument("--quick", action="store_true", help="small sizes: finishes in about a minute")
    ap.add_argument("--skip-cold", action="store_true")
    ap.add_argument("--skip-rss", action="store_true")
    ap.add_argument("--rss-auth", choices=("none", "builtin", "both"), default="both",
                    help="which proxy.auth the RSS runs use (default both)")
    ap.add_argument("--hot-seconds", type=int, default=20, help="seconds of section 3 (0: skip)")
    args = ap.parse_args()
    if args.quick:
        args.projects, args.hit, args.requests, args.hosts, args.hot_seconds = 5000, 1000, 20000, 10, 5
    if args.hit > args.projects:
        ap.error("--hit cannot exceed --projects")
    print_environment()

    from bench import Procs, free_port, start_nginx  # benchmarks/proxy/bench.py

    from cocalc_ctl.state import hub_db
    from tests.support.postgres import Postgres

    work = Path(tempfile.mkdtemp(prefix="hub-proxy-bench-", dir="/var/tmp"))
    procs = Procs()
    pg = Postgres().start()
    try:
        pg.wait_ready()
        dsn = pg.new_database()
        hub_db.migrate(dsn)
        nport = free_port()
        start_nginx(procs, work, "backend", nport,
                    f'server {{ listen 127.0.0.1:{nport} reuseport; keepalive_requests 1000000; '
                    f'location / {{ return 200 "ok\\n"; }} }}')
        t = time.monotonic()
        fill(dsn, args.hosts, args.projects, nport)
        hit = [str(uuid.UUID(bytes=hashlib.md5(f"p{i}".encode()).digest()))
               for i in random.Random(16).sample(range(1, args.projects + 1), args.hit)]
        token = bench_account(dsn, hit)
        print(f"hub: {args.hosts} hosts, {args.projects} projects, {args.projects} accounts with a grant and a "
              f"token each, plus the bench account with {args.hit} grants and one token "
              f"(built in {time.monotonic() - t:.1f} s); backend: nginx `return 200` on 127.0.0.1:{nport}\n",
              flush=True)
        if not args.skip_cold:
            run_cold(work, dsn, hit, token, args.clients)
        if args.hot_seconds > 0:
            run_hot(work, dsn, args.clients, args.hot_seconds)
        if not args.skip_rss:
            run_rss(work, dsn, token, args.requests, args.clients, args.scale,
                    ("none", "builtin") if args.rss_auth == "both" else (args.rss_auth,))
        print_environment()
    finally:
        procs.stop_all()
        pg.stop()
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    os.environ.pop("COCALC_CTL_CONFIG", None)
    sys.exit(main())
