#!/usr/bin/env python3
"""Benchmark the SSH auth hook against baselines measured in the same run.

1. REST lookups (`sshpiper serve`) with wrk at concurrency 1 and 16, random project users out of
   N running projects (each with sqlite keys and a managed authorized_keys file). Baseline: the same
   decision behind Python's ThreadingHTTPServer (the obvious simple implementation).
2. `sshpiper authorized-keys USER` wall time with hyperfine. Baseline: `python -c pass` with the
   same interpreter in the same venv (the floor any Python hook pays).

Everything runs from a real non-editable install of this checkout in a temporary venv
(benchmarks/benchenv.py): no PYTHONPATH, no editable-install import hook, so the checkout is not
what gets imported and the baseline interpreter starts exactly like the one running the hook.

Prints medians over --rounds and the ratios; needs wrk and hyperfine (apt-get install wrk hyperfine).
Usage: python3 benchmarks/sshauth/bench.py [--projects 1000] [--seconds 5] [--rounds 3]
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import re
import shutil
import socket
import sqlite3
import statistics
import struct
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "benchmarks"))
from benchenv import make_venv, print_environment  # noqa: E402


def user_key(n: int) -> str:
    blob = struct.pack(">I", 11) + b"ssh-ed25519" + struct.pack(">I", 32) + n.to_bytes(32, "big")
    return f"ssh-ed25519 {base64.b64encode(blob).decode()} user{n}"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port: int) -> None:
    for _ in range(200):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    raise SystemExit(f"nothing listening on {port}")


HELD: list[socket.socket] = []  # the projects' "published ports"


def setup(base: Path, projects: int, python: str) -> tuple[dict, list[str]]:
    data, pool = base / "data", base / "pool"
    pool.mkdir(parents=True)
    cfg = base / "config.yaml"
    cfg.write_text(f"host_id: {uuid.uuid4()}\ndata_dir: {data}\nbtrfs_root: {pool}\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith("COCALC_CTL_")}
    env.pop("PYTHONPATH", None)
    env.update(COCALC_CTL_CONFIG=str(cfg))
    subprocess.run([python, "-m", "cocalc_ctl", "keys", "ensure"], env=env, check=True, capture_output=True,
                   cwd=base)
    db = sqlite3.connect(data / "host.sqlite", isolation_level=None)
    users = []
    # the hook routes a running project only to a port a listener of root (or its own user) holds, as
    # podman's monitor holds a running container's: hold one per project for the benchmark's life
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < projects + 256:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(projects + 256, hard), hard))
    db.execute("BEGIN")
    for i in range(projects):
        pid = str(uuid.uuid4())
        held = socket.socket()
        held.bind(("127.0.0.1", 0))
        held.listen(1)
        HELD.append(held)
        db.execute("INSERT INTO projects(project_id, state, ssh_port, authorized_keys, created_at, updated_at) "
                   "VALUES (?, 'running', ?, ?, 'now', 'now')", (pid, held.getsockname()[1], user_key(i)))
        d = pool / f"project-{pid}" / ".ssh" / ".cocalc"
        d.mkdir(parents=True)
        (d / "authorized_keys").write_text(user_key(i + 1_000_000) + "\n")
        users.append(f"project-{pid}")
    db.execute("COMMIT")
    db.close()
    return env, users


def wrk(port: int, token: str, users: list[str], conc: int, seconds: int, workdir: Path,
        pid: int) -> tuple[float, float, float, float]:
    script = workdir / "users.lua"
    script.write_text("local users = {" + ",".join(f'"{u}"' for u in users) + "}\n"
                      f'local token = "{token}"\n'
                      "request = function()\n"
                      "  return wrk.format('GET', '/' .. token .. '/' .. users[math.random(#users)])\n"
                      "end\n")
    cpu0 = cpu_seconds(pid)
    out = subprocess.run(["wrk", "-t", "1", "-c", str(conc), "-d", f"{seconds}s", "--latency",
                          "-s", str(script), f"http://127.0.0.1:{port}/"], capture_output=True, text=True,
                         check=True).stdout
    cpu = cpu_seconds(pid) - cpu0
    script.unlink()

    def ms(label: str) -> float:
        m = re.search(rf"{label}\s+([\d.]+)(us|ms|s)\b", out)
        v, unit = float(m.group(1)), m.group(2)
        return v / 1000 if unit == "us" else v * 1000 if unit == "s" else v

    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    total = int(re.search(r"(\d+) requests in", out).group(1))
    if "Non-2xx" in out:
        print(out, file=sys.stderr)
    return rps, ms("50%"), ms("99%"), cpu / max(total, 1) * 1e6


def run_baseline_server(config_path: str, port: int) -> None:
    """The same decision (Handler.body_for) behind http.server's ThreadingHTTPServer (own process)."""
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    from cocalc_ctl import config
    from cocalc_ctl.actions.keys import keys
    from cocalc_ctl.actions.keys.sshauth import Resolver
    from cocalc_ctl.actions.keys.sshauth_server import Handler

    cfg = config.load(config_path, env={})
    handler = Handler(Resolver(cfg), keys.read_token(cfg))

    class H(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        disable_nagle_algorithm = True  # else headers and body wait on delayed ACKs (40 ms per request)

        def do_GET(self):
            body = handler.body_for(b"GET", self.path.encode())
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *a):
            pass

    class Server(ThreadingHTTPServer):
        daemon_threads = True

        def handle_error(self, request, client_address):
            pass  # wrk resets connections at the end of a run

    Server(("127.0.0.1", port), H).serve_forever()


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def hyperfine(commands: list[str], runs: int, workdir: Path, env: dict) -> list[tuple[float, float]]:
    """(median wall ms, mean CPU ms = user + system) per command."""
    out = workdir / "hf.json"
    subprocess.run(["hyperfine", "-N", "-w", "5", "-r", str(runs), "--export-json", str(out), *commands],
                   env=env, check=True, capture_output=True)
    data = json.loads(out.read_text())
    return [(statistics.median(r["times"]) * 1000, (r["user"] + r["system"]) * 1000) for r in data["results"]]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--projects", type=int, default=1000)
    ap.add_argument("--seconds", type=int, default=5)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--runs", type=int, default=40, help="hyperfine runs per round")
    ap.add_argument("--cli", help="cocalc-ctl to time (default: a non-editable install of this checkout in a "
                                    "temporary venv; its python is the baseline)")
    ap.add_argument("--baseline-server", type=int, metavar="PORT", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.baseline_server:
        return run_baseline_server(os.environ["COCALC_CTL_CONFIG"], args.baseline_server)
    for tool in ("wrk", "hyperfine"):
        if not shutil.which(tool):
            raise SystemExit(f"{tool} is missing: apt-get install {tool}")
    base = Path(tempfile.mkdtemp(prefix="cocalc-bench-sshauth-", dir="/var/tmp"))
    os.chmod(base, 0o700)
    server = baseline = None
    try:
        python = make_venv(str(base / "venv"), install=True)
        print_environment(python)
        env, users = setup(base, args.projects, python)
        token = (base / "data" / "secrets" / "sshpiper" / "token").read_text().strip()
        port, bport = free_port(), free_port()
        server = subprocess.Popen([python, "-m", "cocalc_ctl", "sshpiper", "serve", "--listen",
                                   f"127.0.0.1:{port}"], env=env, stderr=subprocess.DEVNULL, cwd=base)
        wait_port(port)
        baseline = subprocess.Popen([python, __file__, "--baseline-server", str(bport)], env=env,
                                    stderr=subprocess.DEVNULL, cwd=base)
        wait_port(bport)
        results: dict[str, list[tuple[float, float, float]]] = {}
        for _ in range(args.rounds):
            for conc in (1, 16):
                for name, p, pid in (("serve", port, server.pid), ("http.server", bport, baseline.pid)):
                    results.setdefault(f"{name} c{conc}", []).append(
                        wrk(p, token, users, conc, args.seconds, base, pid))
        print(f"REST lookups, {args.projects} running projects, random users, {args.rounds} rounds x "
              f"{args.seconds}s (medians):")
        print(f"{'server':<18}{'req/s':>10}{'p50 ms':>10}{'p99 ms':>10}{'CPU us/req':>12}")
        med = {}
        for key, rows in results.items():
            med[key] = tuple(statistics.median(r[i] for r in rows) for i in range(4))
            print(f"{key:<18}{med[key][0]:>10.0f}{med[key][1]:>10.2f}{med[key][2]:>10.2f}{med[key][3]:>12.1f}")
        for conc in (1, 16):
            s, b = med[f"serve c{conc}"], med[f"http.server c{conc}"]
            print(f"ratio at concurrency {conc}: serve vs http.server: throughput {s[0] / b[0]:.2f}x, "
                  f"p99 {s[2] / b[2]:.2f}x, CPU per lookup {s[3] / b[3]:.2f}x")

        user = users[0]
        cli = args.cli or str(base / "venv" / "bin" / "cocalc-ctl")
        floor = str(Path(cli).with_name("python")) if Path(cli).with_name("python").exists() else python
        cmds = [f"{cli} sshpiper authorized-keys {user}", f"{floor} -c pass"]
        rounds = []
        for r in range(args.rounds):  # hyperfine runs one command's runs together: alternate who goes first
            order = cmds if r % 2 == 0 else cmds[::-1]
            got = dict(zip(order, hyperfine(order, args.runs, base, env)))
            rounds.append([got[c] for c in cmds])
        floor_py = floor
        ak, floor = (statistics.median(r[i][0] for r in rounds) for i in range(2))
        ak_cpu, floor_cpu = (statistics.median(r[i][1] for r in rounds) for i in range(2))
        print(f"load average after: {os.getloadavg()[0]:.2f}")
        print(f"authorized-keys ({cli}) wall time (hyperfine, median of {args.rounds} medians): {ak:.1f} ms; "
              f"{floor_py} -c pass: {floor:.1f} ms; ratio {ak / floor:.2f}x")
        print(f"authorized-keys CPU (user+system): {ak_cpu:.1f} ms; python -c pass: {floor_cpu:.1f} ms; "
              f"ratio {ak_cpu / floor_cpu:.2f}x")
    finally:
        for p in (server, baseline):
            if p is not None:
                p.terminate()
                p.wait(timeout=10)
        shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()
