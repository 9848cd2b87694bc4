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
        [--rss-auth none|builtin|both] [--scale 10] [--workers N] [--baseline REV]

Section 1 also prints the lookup's own latency (miss -> answer, measured inside the proxy: its /metrics
histogram `cocalc_proxy_hub_lookup_seconds`) beside the whole request's; `--baseline REV` runs it with
another revision's code too, interleaved (that code may lack the histogram).

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


WORKERS = 1  # --workers of every hub proxy started (set by main)
PROFILE: Path | None = None  # --profile DIR: this code's proxies run under cProfile, stats written there


def start_hub(work: Path, dsn: str, auth: str, extra: dict | None = None, code: Path | None = None):
    """A hub proxy of this checkout, or (`code`: a directory holding another revision's cocalc_ctl
    package, see export_code) of that revision."""
    from tests.support.proxy import Service, write_config
    from tests.support.ports import free_port

    port = free_port()
    cfg = {"data_dir": str(work / f"hub-{port}"), "hub_dsn": dsn, "proxy": {"auth": auth, **(extra or {})}}
    path = write_config(work / f"hub-{port}.yaml", cfg)
    env = {k: v for k, v in os.environ.items() if not k.startswith("COCALC_CTL_")}
    prog = [sys.executable, "-m", "cocalc_ctl"]
    if code is not None or PROFILE is not None:
        lines = ["import cProfile, os, runpy, sys"]
        if code is not None:
            lines.append(f"sys.path.insert(0, {str(code)!r})")
        if PROFILE is not None:
            # the CLI ends with os._exit (no interpreter teardown): write the profile on the way out
            lines += ["prof = cProfile.Profile()", "_exit = os._exit",
                      "def _dump():",
                      "    prof.disable()",
                      f"    prof.dump_stats({str(PROFILE / f'hub-{auth}-{port}.prof')!r})",
                      "def _exit_dumping(code):",
                      "    _dump()",
                      "    _exit(code)",
                      "os._exit = _exit_dumping",
                      "prof.enable()"]
        lines.append("runpy.run_module('cocalc_ctl', run_name='__main__', alter_sys=True)")
        prog = [sys.executable, "-c", "\n".join(lines)]
    return Service([*prog, "--config", str(path), "proxy", "serve", "--mode", "hub",
                    "--listen", f"127.0.0.1:{port}", "--workers", str(WORKERS), "--no-access-log"],
                   work / f"hub-{port}.log", port, env=env)


def export_code(work: Path, rev: str) -> Path:
    """The cocalc_ctl package of git revision `rev` of this checkout, in a directory of its own."""
    dest = work / f"code-{re.sub(r'[^A-Za-z0-9]', '_', rev)}"
    dest.mkdir()
    archive = subprocess.run(["git", "-C", str(REPO), "archive", rev, "cocalc_ctl"], capture_output=True, check=True)
    subprocess.run(["tar", "-x", "-C", str(dest)], input=archive.stdout, check=True)
    return dest


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
    """/metrics as {series: value}, summed over the workers' labels; histogram buckets as
    `name_bucket|kind|le` (summed over workers too)."""
    import urllib.request

    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    out: dict = {}
    for m in re.finditer(r"^(cocalc_proxy_\w+?)(?:\{([^}]*)\})? ([\d.e+-]+|\+Inf)$", text, re.M):
        name, labels, value = m.group(1), dict(re.findall(r'(\w+)="([^"]*)"', m.group(2) or "")), float(m.group(3))
        if name.startswith("cocalc_proxy_hub_lookup_seconds"):
            key = "|".join([name, labels.get("kind", "")] + ([labels["le"]] if "le" in labels else []))
        else:
            key = name
        out[key] = out.get(key, 0) + value
    return out


def lookup_percentiles(before: dict, after: dict, kind: str) -> tuple[int, float, float] | None:
    """(n, median ms, p99 ms) of the proxy's own lookup histogram between two scrapes (linear within a
    bucket); None when the proxy has no such histogram (older code) or it saw no lookup."""
    prefix = f"cocalc_proxy_hub_lookup_seconds_bucket|{kind}|"
    les = sorted((float(k[len(prefix):]) if k[len(prefix):] != "+Inf" else float("inf"), k)
                 for k in after if k.startswith(prefix))
    if not les:
        return None
    cum = [(le, after[k] - before.get(k, 0)) for le, k in les]
    n = cum[-1][1]
    if n <= 0:
        return None

    def q(p: float) -> float:
        target, lo, below = p * n, 0.0, 0.0
        for le, c in cum:
            if c >= target:
                if le == float("inf"):
                    return lo * 1000
                return (lo + (le - lo) * ((target - below) / max(c - below, 1e-9))) * 1000
            lo, below = le, c
        return lo * 1000

    return int(n), q(0.5), q(0.99)


def run_cold(work: Path, dsn: str, hit: list[str], token: str, clients: int,
             baseline: tuple[str, Path] | None = None) -> None:
    """Each proxy.auth with this code and, with `baseline` (name, exported code), with that revision too,
    alternating which goes first; every variant is a fresh proxy, so the same projects are cold in each."""
    variants = [(auth, "this code", None) for auth in ("none", "builtin")]
    if baseline is not None:
        variants = []
        for i, auth in enumerate(("none", "builtin")):
            pair = [(auth, "this code", None), (auth, baseline[0], baseline[1])]
            variants += pair if i % 2 else pair[::-1]
    print(f"## 1. cold vs warm: {len(hit)} distinct projects (each variant a fresh proxy: all cold again), "
          f"{clients} concurrent keep-alive clients, each project's first request (cold) then the same again (warm, cached), whole request through "
          f"hub proxy (--workers {WORKERS}) -> nginx, under load\n")
    rows = []
    for auth, label, code in variants:
        rows.append(_cold_variant(work, dsn, hit, token, clients, auth, label, code))
    print("| code | proxy.auth | request | n | median ms | p90 ms | p99 ms | max ms |")
    print("|---|---|---|---:|---:|---:|---:|---:|")
    for r in rows:
        for name, xs in ((f"cold (first), {clients} clients", r["cold"]), (f"warm (cached), {clients} clients", r["warm"]),
                         ("cold (first), 1 client", r["cold1"]), ("warm (cached), 1 client", r["warm1"])):
            print(f"| {r['label']} | {r['auth']} | {name} | {len(xs)} | {pct(xs, 50):.2f} | {pct(xs, 90):.2f} | "
                  f"{pct(xs, 99):.2f} | {max(xs):.2f} |")
    print()
    print("The lookup alone (miss -> answer inside the proxy, its /metrics histogram "
          "`cocalc_proxy_hub_lookup_seconds`, interpolated within buckets), during the 64-client run:\n")
    print("| code | proxy.auth | lookup | n | median ms | p99 ms | whole cold request p99 ms |")
    print("|---|---|---|---:|---:|---:|---:|")
    for r in rows:
        for kind in ("decision", "route"):
            got = lookup_percentiles(r["before"], r["after"], kind)
            if got is None:
                if r["code"] is None and not (kind == "route" and r["auth"] == "builtin"):
                    print(f"| {r['label']} | {r['auth']} | {kind} | 0 | - | - | {pct(r['cold'], 99):.2f} |")
                continue
            print(f"| {r['label']} | {r['auth']} | {kind} | {got[0]} | {got[1]:.2f} | {got[2]:.2f} | "
                  f"{pct(r['cold'], 99):.2f} |")
        if r["code"] is not None:
            print(f"| {r['label']} | {r['auth']} | (no histogram in that code) | | | | {pct(r['cold'], 99):.2f} |")
    print()
    for r in rows:
        cold, warm, wall, cpu = r["cold"], r["warm"], r["wall"], r["cpu"]
        print(f"- {r['label']}, {r['auth']}, {clients} clients: the proxy used {cpu:.2f} s of CPU for "
              f"{len(cold) + len(warm)} requests in {wall:.2f} s ({cpu / wall:.2f} cores): "
              f"{cpu / (len(cold) + len(warm)) * 1e6:.0f} us per request, half of them cold")
        verdict = "met" if pct(cold, 99) < 5 else "NOT met"
        batches = r["after"].get("cocalc_proxy_hub_batches_total", 0) - r["before"].get("cocalc_proxy_hub_batches_total", 0)
        keys = r["after"].get("cocalc_proxy_hub_batched_keys_total", 0) - \
            r["before"].get("cocalc_proxy_hub_batched_keys_total", 0)
        print(f"  cold - warm: median {pct(cold, 50) - pct(warm, 50):+.2f} ms, p99 "
              f"{pct(cold, 99) - pct(warm, 99):+.2f} ms; target cold p99 < 5 ms: {verdict}; "
              f"{len(cold) * 2 / wall:.0f} req/s; route lookups {r['rl']:.0f}, decision lookups {r['al']:.0f}"
              + (f"; {batches:.0f} batched queries ({keys / batches:.1f} keys each)" if batches else ""))
    print(flush=True)


def _cold_variant(work, dsn, hit, token, clients, auth, label, code) -> dict:
    tok = token if auth == "builtin" else None
    hub = start_hub(work, dsn, auth, code=code)
    try:
        # warm the proxy itself (code paths, pool connections) on projects not measured
        asyncio.run(cold_warm(hub.port, hit[-50:], 8, tok))
        # one client: the lookup's latency without queueing behind other clients' lookups
        solo = hit[-50 - max(1, len(hit) // 20):-50]
        cold1, warm1 = asyncio.run(cold_warm(hub.port, solo, 1, tok))
        settle = 1.5 if WORKERS > 1 else 0.0  # the other workers' series on /metrics are up to 1 s old
        time.sleep(settle)
        before = lookups(hub.port)
        cpu0 = cpu_seconds_tree(hub.pid)
        t = time.monotonic()
        cold, warm = asyncio.run(cold_warm(hub.port, hit[:-50 - len(solo)], clients, tok))
        wall = time.monotonic() - t
        cpu = cpu_seconds_tree(hub.pid) - cpu0
        time.sleep(settle)
        after = lookups(hub.port)
    finally:
        hub.stop()
    if PROFILE is not None:
        _print_profile(PROFILE / f"hub-{auth}-{hub.port}.prof", f"{label}, proxy.auth {auth}")
    rl = after.get("cocalc_proxy_route_lookups_total", 0) - before.get("cocalc_proxy_route_lookups_total", 0)
    al = after.get("cocalc_proxy_auth_lookups_total", 0) - before.get("cocalc_proxy_auth_lookups_total", 0)
    return {"auth": auth, "label": label, "code": code, "cold": cold, "warm": warm, "wall": wall, "rl": rl,
            "al": al, "cpu": cpu, "cold1": cold1, "warm1": warm1, "before": before, "after": after}


def _print_profile(path: Path, what: str, top: int = 30) -> None:
    """The functions the profiled proxy spent its own time in (cProfile's tottime), most first."""
    import io
    import pstats

    for _ in range(50):  # the process writes its profile as it exits
        if path.exists() and path.stat().st_size > 0:
            break
        time.sleep(0.1)
    if not path.exists():
        print(f"(no profile written at {path})")
        return
    out = io.StringIO()
    st = pstats.Stats(str(path), stream=out)
    st.sort_stats("tottime").print_stats(top)
    print(f"### cProfile of the proxy ({what}; whole life of the process, top {top} by own time)\n")
    print("```")
    print("\n".join(line for line in out.getvalue().splitlines() if line.strip())[-6000:])
    print("```\n", flush=True)


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def cpu_seconds_tree(pid: int) -> float:
    """CPU of the proxy and its worker processes (`--workers N` >= 2 forks them; they outlive the run)."""
    total, todo = 0.0, [pid]
    while todo:
        p = todo.pop()
        try:
            total += cpu_seconds(p)
            for t in os.listdir(f"/proc/{p}/task"):
                todo += [int(c) for c in Path(f"/proc/{p}/task/{t}/children").read_text().split()]
        except (OSError, ValueError):
            pass
    return total


# -- 2. RSS under random unknown ids ----------------------------------------------------------------

def rss_kb(pid: int) -> int:
    """VmRSS of the proxy, plus its worker processes' with --workers N >= 2."""
    total, todo = 0, [pid]
    while todo:
        p = todo.pop()
        try:
            for line in Path(f"/proc/{p}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
            for t in os.listdir(f"/proc/{p}/task"):
                todo += [int(c) for c in Path(f"/proc/{p}/task/{t}/children").read_text().split()]
        except (OSError, ValueError):
            pass
    return total


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
    print(f"## 2. RSS of the hub proxy (--workers {WORKERS}) while wrk sends {requests} requests for random unknown "
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
    ap.add_argument("--workers", type=int, default=1, help="`proxy serve --workers N` of every hub proxy (default 1)")
    ap.add_argument("--baseline", metavar="REV", help="also run section 1 with the cocalc_ctl of git revision REV "
                    "of this checkout, interleaved with this code (e.g. the commit before a change)")
    ap.add_argument("--profile", metavar="DIR", help="run this code's proxies under cProfile (slower: compare "
                    "shares, not times) and print where their CPU went")
    args = ap.parse_args()
    global WORKERS, PROFILE
    WORKERS = args.workers
    if args.profile:
        PROFILE = Path(args.profile).resolve()
        PROFILE.mkdir(parents=True, exist_ok=True)
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
            baseline = (f"baseline {args.baseline}", export_code(work, args.baseline)) if args.baseline else None
            run_cold(work, dsn, hit, token, args.clients, baseline)
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
