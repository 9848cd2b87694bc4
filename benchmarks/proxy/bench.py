#!/usr/bin/env python3
"""Proxy benchmark: wrk with keep-alive against the same backend, directly and through nginx
(proxy_pass, 1 worker and 2 worker processes), configurable-http-proxy and `cocalc-ctl proxy serve`
(1 process: fast path on uvloop and on asyncio, and the stream path alone; and `--workers 2`), in
interleaved rounds of one run; then N idle WebSockets held through ours.

    python3 benchmarks/proxy/bench.py [--duration 10] [--rounds 3] [--connections 64] [--websockets 10000]
    python3 benchmarks/proxy/bench.py --workers-only [--workers 2]   # 1 vs N workers vs nginx with N workers

Needs: wrk, nginx (nginx-light), node + npm (configurable-http-proxy is npm-installed into a temp dir
unless --chp-dir points at an existing install). Prints medians and ratios as a Markdown table, and
for every cocalc-ctl variant the event loop it ran on and how many requests the fast path and the
stream path served (read from the proxy's own /metrics), so a figure can be reproduced: without
uvloop installed (`pip install '.[uvloop]'`) the headline cocalc-ctl figure is asyncio's loop.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import resource
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))
PID = str(uuid.uuid4())


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port: int, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return
        except OSError:
            time.sleep(0.05)
    raise SystemExit(f"nothing listening on {port}")


class Procs:
    def __init__(self):
        self.procs: list[subprocess.Popen] = []

    def start(self, argv, log: Path, env=None, cwd=None) -> subprocess.Popen:
        p = subprocess.Popen(argv, stdout=open(log, "wb"), stderr=subprocess.STDOUT, env=env, cwd=cwd,
                             start_new_session=True)
        self.procs.append(p)
        return p

    def stop_all(self):
        for p in reversed(self.procs):
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in self.procs:
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                p.kill()


def nginx_conf(work: Path, name: str, port: int, body: str, workers: int = 1) -> Path:
    d = work / name
    (d / "tmp").mkdir(parents=True)
    conf = d / "nginx.conf"
    conf.write_text(f"""worker_processes {workers};
pid {d}/nginx.pid;
error_log {d}/error.log warn;
events {{ worker_connections 20000; }}
http {{
  access_log off;
  client_body_temp_path {d}/tmp; proxy_temp_path {d}/tmp; fastcgi_temp_path {d}/tmp;
  uwsgi_temp_path {d}/tmp; scgi_temp_path {d}/tmp;
  keepalive_requests 1000000;
  {body}
}}
""")
    return conf


def start_nginx(procs: Procs, work: Path, name: str, port: int, body: str, workers: int = 1) -> subprocess.Popen:
    conf = nginx_conf(work, name, port, body, workers)
    p = procs.start(["nginx", "-c", str(conf), "-p", str(conf.parent), "-g", "daemon off;"], work / f"{name}.log")
    wait_port(port)
    return p


def cpu_seconds(pid: int) -> float:
    """CPU time (user + system) of a process and its direct children (nginx or our workers)."""
    ticks = 0
    try:
        kids = open(f"/proc/{pid}/task/{pid}/children").read().split()
    except OSError:
        kids = []
    for p in [pid, *map(int, kids)]:
        try:
            fields = open(f"/proc/{p}/stat").read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        ticks += int(fields[11]) + int(fields[12])
    return ticks / os.sysconf("SC_CLK_TCK")


def wrk(url: str, duration: int, connections: int, headers: dict | None = None) -> dict:
    hdrs = [a for k, v in (headers or {}).items() for a in ("-H", f"{k}: {v}")]
    out = subprocess.run(["wrk", "-t2", f"-c{connections}", f"-d{duration}s", "--latency", *hdrs, url],
                         capture_output=True, text=True, check=True).stdout

    def lat(label):
        m = re.search(rf"^\s*{label}%\s+([\d.]+)(us|ms|s)\s*$", out, re.M)
        v = float(m.group(1))
        return v / 1000 if m.group(2) == "us" else v * 1000 if m.group(2) == "s" else v

    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    sock_err = re.search(r"Socket errors: (.*)", out)
    return {"rps": rps, "p50": lat("50"), "p99": lat("99"), "non2xx": int(errors.group(1)) if errors else 0,
            "socket_errors": sock_err.group(1) if sock_err else ""}


def rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


async def hold_websockets(port: int, n: int) -> list:
    key = "dGhlIHNhbXBsZSBub25jZQ=="
    conns = []
    sem = asyncio.Semaphore(200)

    async def one():
        async with sem:
            r, w = await asyncio.open_connection("127.0.0.1", port)
            w.write((f"GET /{PID}/ws HTTP/1.1\r\nHost: bench\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                     f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n").encode())
            head = await r.readuntil(b"\r\n\r\n")
            if not head.startswith(b"HTTP/1.1 101"):
                raise RuntimeError(f"websocket {len(conns)}: {head[:9]!r} {await r.read(200)!r}")
            conns.append((r, w))

    await asyncio.gather(*(one() for _ in range(n)))
    return conns


async def ws_ping(r, w) -> bool:
    w.write(b"\x81\x84\x00\x00\x00\x00ping")
    await w.drain()
    return await asyncio.wait_for(r.readexactly(6), 10) == b"\x81\x04ping"


def served_by(port: int) -> dict:
    """Event loop, requests per path and route-table reads, from the proxy's /metrics."""
    import urllib.request

    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    loop = re.search(r'cocalc_proxy_event_loop_info\{(?:worker="\d+",)?loop="([^"]+)"\}', text)

    def counter(name, label=""):  # summed over the workers of `--workers N` (a worker="i" label each)
        pattern = rf'^{name}(?:\{{(?:worker="\d+",?)?{label}\}})? (\d+)$'
        return sum(int(m.group(1)) for m in re.finditer(pattern, text, re.M))

    per_worker = [int(m.group(1)) for m in re.finditer(
        r'^cocalc_proxy_path_requests_total\{worker="\d+",path="fast"\} (\d+)$', text, re.M)]
    return {"loop": loop.group(1) if loop else "unknown",
            "fast": counter("cocalc_proxy_path_requests_total", 'path="fast"'),
            "stream": counter("cocalc_proxy_path_requests_total", 'path="stream"'),
            "lookups": counter("cocalc_proxy_route_lookups_total"),
            "per_worker": per_worker}


def report_workers(med: dict, args, results: dict) -> None:
    n = args.workers
    one, many = med["cocalc-ctl (1 worker)"], med[f"cocalc-ctl ({n} workers)"]
    ngx = med[f"nginx ({n} workers)"]
    print(f"\nwrk -t2 -c{args.connections} -d{args.duration}s --latency, {args.rounds} interleaved rounds, medians\n")
    print("| target | req/s | p50 ms | p99 ms | CPU used (cores) | req/s vs 1 worker |")
    print("|---|---:|---:|---:|---:|---:|")
    for name, m in med.items():
        print(f"| {name} | {m['rps']:.0f} | {m['p50']:.2f} | {m['p99']:.2f} | {m['cores']:.2f} | "
              f"{m['rps'] / one['rps']:.2f} |")
    print(f"\n{n} workers / 1 worker req/s: {many['rps'] / one['rps']:.2f} (target >= 1.7)")
    rounds = [a["rps"] / b["rps"] for a, b in zip(results[f"cocalc-ctl ({n} workers)"], results["cocalc-ctl (1 worker)"])]
    print(f"  the same ratio round by round (adjacent runs): {', '.join(f'{r:.2f}' for r in rounds)}; "
          f"median {statistics.median(rounds):.2f}")
    print(f"{n} workers / nginx ({n} workers) req/s: {many['rps'] / ngx['rps']:.2f} (target >= 0.5)")
    print(f"{n} workers p99 / nginx ({n} workers) p99: {many['p99'] / ngx['p99']:.2f}")
    print(f"for scale: nginx {n} workers / nginx 1 worker req/s: {ngx['rps'] / med['nginx (1 worker)']['rps']:.2f}; "
          f"CPU our {n} workers got / 1 worker got: {many['cores'] / one['cores']:.2f} "
          f"(a ratio near 1 means no idle core was left to use)")


def report(med: dict, args, results: dict) -> None:
    if args.workers_only:
        return report_workers(med, args, results)
    ours_name = "cocalc-ctl (uvloop)" if "cocalc-ctl (uvloop)" in med else "cocalc-ctl (asyncio)"
    ours_m = med[ours_name]
    print(f"\n'ours' below is {ours_name}"
          + ("" if ours_name.endswith("(uvloop)") else ": uvloop is NOT installed, so this is asyncio's loop"))
    chp_m, ngx_m = med["configurable-http-proxy"], med["nginx (1 worker)"]
    print(f"\nwrk -t2 -c{args.connections} -d{args.duration}s --latency, {args.rounds} interleaved rounds, medians\n")
    print("| target | req/s | p50 ms | p99 ms | req/s vs ours |")
    print("|---|---:|---:|---:|---:|")
    for name, m in med.items():
        print(f"| {name} | {m['rps']:.0f} | {m['p50']:.2f} | {m['p99']:.2f} | {m['rps'] / ours_m['rps']:.2f} |")
    print(f"\nours / configurable-http-proxy req/s: {ours_m['rps'] / chp_m['rps']:.2f} (target >= 1.5)")
    print(f"ours / nginx req/s: {ours_m['rps'] / ngx_m['rps']:.2f} (target >= 0.5)")
    print(f"ours p99 / configurable-http-proxy p99: {ours_m['p99'] / chp_m['p99']:.2f} (target < 1.5)")
    print(f"ours p99 / nginx p99: {ours_m['p99'] / ngx_m['p99']:.2f} (target < 1.5)")
    streams = med["cocalc-ctl (streams-only)"]
    print(f"fast path / streams-only req/s: {ours_m['rps'] / streams['rps']:.2f}")
    if "cocalc-ctl (uvloop)" in med:
        print(f"uvloop / asyncio req/s: {ours_m['rps'] / med['cocalc-ctl (asyncio)']['rps']:.2f}")
    many = med.get(f"cocalc-ctl ({args.workers} workers)")
    if many:
        print(f"{args.workers} workers / 1 worker ({ours_name}) req/s: {many['rps'] / ours_m['rps']:.2f} (target >= 1.7)")
        print(f"{args.workers} workers / nginx ({args.workers} workers) req/s: "
              f"{many['rps'] / med[f'nginx ({args.workers} workers)']['rps']:.2f} (target >= 0.5)")


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--duration", type=int, default=10)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--connections", type=int, default=64)
    ap.add_argument("--websockets", type=int, default=10000)
    ap.add_argument("--chp-dir", help="directory with node_modules/.bin/configurable-http-proxy")
    ap.add_argument("--skip-http", action="store_true", help="only the idle WebSocket part")
    ap.add_argument("--workers", type=int, default=2, help="worker processes of the multi-process variants")
    ap.add_argument("--workers-only", action="store_true",
                    help="only nginx (1 and N workers) and ours with 1 and N workers (no npm, no WebSockets)")
    args = ap.parse_args()
    if args.workers < 2:
        ap.error("--workers must be 2 or more (the single-process variants are always measured)")
    if args.workers_only:
        args.websockets = 0
    # each held WebSocket costs the proxy two descriptors; root may raise the hard limit
    want = max(4 * args.websockets + 1024, 4096)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, want), max(hard, want)))
    except (ValueError, OSError):
        resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, min(hard, want)), hard))

    try:
        import uvloop
        uv = f"uvloop {uvloop.__version__} installed"
    except ImportError:
        uv = "uvloop NOT installed (pip install '.[uvloop]'): cocalc-ctl runs on asyncio's loop only"
    print(f"python {sys.version.split()[0]}, {uv}; load average at start {os.getloadavg()[0]:.2f} "
          f"(figures under load unless this is ~0; compare ratios)", flush=True)
    work = Path(tempfile.mkdtemp(prefix="proxy-bench-"))
    procs = Procs()
    try:
        backend = free_port()
        start_nginx(procs, work, "backend", backend,
                    f'server {{ listen 127.0.0.1:{backend}; location / {{ return 200 "hello from the backend\\n"; }} }}')
        nginx = free_port()
        pids = {"nginx (1 worker)": None, f"nginx ({args.workers} workers)": None}
        pids["nginx (1 worker)"] = start_nginx(procs, work, "nginx-proxy", nginx, f"""
  upstream backend {{ server 127.0.0.1:{backend}; keepalive 64; }}
  server {{ listen 127.0.0.1:{nginx};
    location / {{ proxy_pass http://backend; proxy_http_version 1.1; proxy_set_header Connection "";
                 proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for; }} }}""")
        nginx_n = free_port()
        pids[f"nginx ({args.workers} workers)"] = start_nginx(procs, work, "nginx-proxy-n", nginx_n, f"""
  upstream backend {{ server 127.0.0.1:{backend}; keepalive 64; }}
  server {{ listen 127.0.0.1:{nginx_n};
    location / {{ proxy_pass http://backend; proxy_http_version 1.1; proxy_set_header Connection "";
                 proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for; }} }}""", workers=args.workers)

        chp_dir = Path(args.chp_dir) if args.chp_dir else work / "chp"
        chp_bin = chp_dir / "node_modules/.bin/configurable-http-proxy"
        if not chp_bin.exists() and not args.workers_only:
            chp_dir.mkdir(exist_ok=True)
            subprocess.run(["npm", "install", "--no-audit", "--no-fund", "--silent", "configurable-http-proxy"],
                           cwd=chp_dir, check=True, capture_output=True)
        chp = free_port()
        if not args.workers_only:
            procs.start([str(chp_bin), "--ip", "127.0.0.1", "--port", str(chp), "--api-ip", "127.0.0.1",
                     "--api-port", str(free_port()), "--default-target", f"http://127.0.0.1:{backend}",
                     "--log-level", "error"], work / "chp.log",
                    env={**os.environ, "CONFIGPROXY_AUTH_TOKEN": uuid.uuid4().hex})
            wait_port(chp)

        from cocalc_ctl.state import host_db

        conn = host_db.connect(work / "data")
        host_db.upsert_project(conn, PID, state="running", http_port=backend)
        conn.close()
        ours = {}
        env = {k: v for k, v in os.environ.items() if not k.startswith("COCALC_CTL_")}
        try:
            import uvloop  # noqa: F401
            loops = ("uvloop", "asyncio")
        except ImportError:
            loops = ("asyncio",)
        variants = [(loop, True, 1) for loop in loops] + [(loops[-1], False, 1), (loops[0], True, args.workers)]
        if args.workers_only:
            variants = [(loops[0], True, 1), (loops[0], True, args.workers)]
        for loop, fast, n in variants:
            name = (loop if fast else "streams-only") if n == 1 else f"{n} workers"
            if args.workers_only and n == 1:
                name = "1 worker"
            port = free_port()
            cfg = work / f"ours-{name.replace(' ', '-')}.yaml"
            # direct to the host proxy, no hub in front: no hub credential (loopback listen)
            cfg.write_text(f"data_dir: {work / 'data'}\nproxy:\n  event_loop: {loop}\n  fast_path: {str(fast).lower()}\n"
                           "  host_auth: none\n")
            pids[f"cocalc-ctl ({name})"] = procs.start([
                sys.executable, "-m", "cocalc_ctl", "--config", str(cfg), "proxy", "serve", "--mode", "host",
                         "--no-access-log", "--listen", f"127.0.0.1:{port}", "--workers", str(n)],
                        work / f"ours-{name.replace(' ', '-')}.log", env=env, cwd=REPO)
            wait_port(port)
            ours[name] = port

        targets = {
            "direct": f"http://127.0.0.1:{backend}/{PID}/bench",
            "nginx (1 worker)": f"http://127.0.0.1:{nginx}/{PID}/bench",
            f"nginx ({args.workers} workers)": f"http://127.0.0.1:{nginx_n}/{PID}/bench",
            "configurable-http-proxy": f"http://127.0.0.1:{chp}/{PID}/bench",
        }
        if args.workers_only:
            del targets["direct"], targets["configurable-http-proxy"]
        for name in ours:
            targets[f"cocalc-ctl ({name})"] = f"http://127.0.0.1:{ours[name]}/{PID}/bench"
        for url in ([] if args.skip_http else targets.values()):  # warm up (JIT, pools)
            wrk(url, 2, args.connections)
        results: dict[str, list[dict]] = {k: [] for k in targets}
        for r in range(0 if args.skip_http else args.rounds):
            for name, url in targets.items():
                proc = pids.get(name)
                cpu0 = cpu_seconds(proc.pid) if proc else 0.0
                res = wrk(url, args.duration, args.connections)
                res["cores"] = (cpu_seconds(proc.pid) - cpu0) / args.duration if proc else float("nan")
                results[name].append(res)
                print(f"round {r + 1} {name}: {res['rps']:.0f} req/s p50 {res['p50']:.2f} ms p99 {res['p99']:.2f} ms"
                      + (f" cpu {res['cores']:.2f} cores" if proc else "")
                      + (f" non2xx {res['non2xx']}" if res["non2xx"] else "")
                      + (f" socket errors: {res['socket_errors']}" if res["socket_errors"] else ""),
                      file=sys.stderr, flush=True)

        if args.skip_http:
            results = {}
        med = {k: {m: statistics.median(x[m] for x in v) for m in ("rps", "p50", "p99", "cores")}
               for k, v in results.items()}
        if med:
            report(med, args, results)
            print(f"\nserved by (from each proxy's /metrics; load average now {os.getloadavg()[0]:.2f}):")
            for name, port in ours.items():
                sb = served_by(port)
                total = sb["fast"] + sb["stream"]
                print(f"- cocalc-ctl ({name}): event loop {sb['loop']}, fast path {sb['fast']} / stream path "
                      f"{sb['stream']} requests ({100 * sb['fast'] / max(total, 1):.1f}% fast), "
                      f"route-table reads {sb['lookups']}"
                      + (f", fast-path requests per worker {sb['per_worker']}" if sb["per_worker"] else ""))

        if args.websockets:
            ws_backend = free_port()
            procs.start([sys.executable, "-m", "tests.support.proxy_backend", "--port", str(ws_backend)],
                        work / "ws-backend.log", cwd=REPO)
            wait_port(ws_backend)
            conn = host_db.connect(work / "data")
            host_db.upsert_project(conn, PID, state="running", http_port=ws_backend)
            conn.close()
            proxy_pid = next(p.pid for p in procs.procs if f"ours-{loops[0]}" in " ".join(map(str, p.args)))
            before = rss_kb(proxy_pid)

            async def run_ws():
                t = time.monotonic()
                conns = await hold_websockets(ours[loops[0]], args.websockets)
                opened = time.monotonic() - t
                await asyncio.sleep(2)
                held = rss_kb(proxy_pid)
                ok = all([await ws_ping(*conns[i]) for i in (0, len(conns) // 2, len(conns) - 1)])
                for _, w in conns:
                    w.close()
                return opened, held, ok

            opened, held, ok = asyncio.run(run_ws())
            print(f"\n{args.websockets} idle WebSockets through ours ({loops[0]}): opened in {opened:.1f} s, proxy RSS "
                  f"{before / 1024:.1f} MiB before, {held / 1024:.1f} MiB while held "
                  f"({(held - before) / args.websockets:.1f} KiB each); echo after holding: {'ok' if ok else 'FAILED'}")
    finally:
        procs.stop_all()
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
