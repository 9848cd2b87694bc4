#!/usr/bin/env python3
"""The hub credential's cost: hub -> host -> backend where the host checks the credential (its hub signs
every request with the host's secret) against the same chain where the host has `proxy.host_auth: none`
(and the hub has no secret for it, so signs nothing), in interleaved wrk rounds of one run. Both hubs
run `proxy.auth: none` so the difference is the credential alone.

    python3 benchmarks/proxy/hubcred_bench.py [--duration 10] [--rounds 3] [--connections 64]

Needs: wrk, PostgreSQL server binaries (as the tests). Prints the environment, then a Markdown table.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import uuid
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))
sys.path.insert(0, str(REPO / "benchmarks" / "proxy"))

from benchenv import print_environment  # noqa: E402


def main() -> int:
    from auth_bench import serve
    from bench import wrk

    from cocalc_ctl.state import hub_db
    from tests.support.postgres import Postgres, sql
    from tests.support.proxy import DIRECT, host_identity, host_state, hub_secret, start_backend

    ap = argparse.ArgumentParser()
    ap.add_argument("--duration", type=int, default=10)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--connections", type=int, default=64)
    args = ap.parse_args()
    print_environment()

    work = Path(tempfile.mkdtemp(prefix="hubcred-bench-", dir="/var/tmp"))
    pg = Postgres().start()
    started = []
    try:
        pg.wait_ready()
        dsn = pg.new_database()
        hub_db.migrate(dsn)
        backend = start_backend(work)
        started.append(backend)
        hubs = {}
        for variant in ("signed", "unsigned"):
            pid, hid, data = str(uuid.uuid4()), str(uuid.uuid4()), work / variant
            host_state(data, {pid: backend.port})
            proxy = {"trust_forwarded": ["127.0.0.1"]}
            if variant == "signed":
                hub_secret(dsn, hid, data)
                host = serve(work, "host", {"data_dir": str(data), **host_identity(hid, data), "proxy": proxy})
            else:
                host = serve(work, "host", {"data_dir": str(data), "proxy": {**proxy, **DIRECT}})
            started.append(host)
            sql(dsn, "INSERT INTO project_hosts(id, name, internal_url) VALUES (%s, %s, %s)",
                (hid, variant, f"http://127.0.0.1:{host.port}"))
            sql(dsn, "INSERT INTO projects(project_id, host_id) VALUES (%s, %s)", (pid, hid))
            hub = serve(work, "hub", {"data_dir": str(work / f"hub-{variant}"), "hub_dsn": dsn,
                                      "proxy": {"auth": "none"}})
            started.append(hub)
            hubs[variant] = f"http://127.0.0.1:{hub.port}/{pid}/info"
        for url in hubs.values():  # warm: routes and signing keys cached, pools filled
            wrk(url, 1, args.connections)
        results = {name: [] for name in hubs}
        order = list(hubs)
        for r in range(args.rounds):
            for name in (order if r % 2 == 0 else order[::-1]):
                res = wrk(hubs[name], args.duration, args.connections)
                assert res["non2xx"] == 0 and not res["socket_errors"], res
                results[name].append(res)
                print(f"round {r + 1} {name}: {res['rps']:.0f} req/s p50 {res['p50']:.2f} ms p99 {res['p99']:.2f} ms",
                      flush=True)
        base = statistics.median(x["rps"] for x in results["unsigned"])
        print(f"\nunder load (shared machine), hub -> host -> backend, wrk -c{args.connections} -d{args.duration}s, "
              f"{args.rounds} interleaved rounds, medians:\n")
        print("| hub -> host | req/s | ratio | p50 ms | p99 ms |")
        print("|---|---:|---:|---:|---:|")
        for name, label in (("unsigned", "proxy.host_auth: none (nothing signed)"),
                            ("signed", "proxy.host_auth: hub (signed, verified)")):
            rps = statistics.median(x["rps"] for x in results[name])
            print(f"| {label} | {rps:.0f} | {rps / base:.2f} | "
                  f"{statistics.median(x['p50'] for x in results[name]):.2f} | "
                  f"{statistics.median(x['p99'] for x in results[name]):.2f} |")
        paired = [s["rps"] / u["rps"] for s, u in zip(results["signed"], results["unsigned"])]
        print(f"\nper round (back to back), signed / unsigned: {', '.join(f'{x:.2f}' for x in paired)}; "
              f"median {statistics.median(paired):.2f}")
    finally:
        for s in reversed(started):
            s.stop()
        pg.stop()
        import shutil

        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
