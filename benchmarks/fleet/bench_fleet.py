"""Fleet scale of the hub: the move worker's claim query and `move start` without --to, on a hub
with 100 hosts, ~100,000 projects, 100,000 finished moves and 1,000 queued ones, in a throwaway
PostgreSQL (unix socket only, fsync off; removed at the end).

`project_moves` holds one row per project, so the hub gets 101,000 projects: 100,000 with a finished
(cleaned) move and 1,000 with a queued one. Rows are made with generate_series in a few statements.

Measured, interleaved round by round against baselines in the same run:
- claim: CLAIM_SQL (the worker's) in a transaction rolled back after each run (every run claims the
  oldest queued move, like a poll) — with the partial index, and with it dropped inside the same kind
  of transaction (the baseline: what every poll cost before). Target: p99 < 2 ms.
- destination choice alone: `move start`'s read of the per-host counters (kept by a trigger) vs the
  one aggregate over the candidates' projects it replaced, and the correlated count per host before
  that (with projects(host_id, project_id) present, and without any index on host_id). Hosts are marked
  seen a day ahead so that every host stays a candidate for the whole run (`move start` only
  considers hosts seen in the last 2 minutes).
- `move start PROJECT` (no --to) wall time through the CLI, including its start, against the same
  command through the full typer CLI (the path it took before its fast path) and `cocalc-ctl --version`
  (the CLI's start floor) in the same rounds. Target: median < 50 ms.

Run (root, PostgreSQL installed): .venv/bin/python benchmarks/fleet/bench_fleet.py [--rounds 200]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, REPO)
sys.path.insert(0, os.path.join(REPO, "benchmarks"))

from benchenv import print_environment  # noqa: E402

HOSTS, PROJECTS_DONE, QUEUED = 100, 100_000, 1_000
CLI = [os.path.join(REPO, "bin", "cocalc-ctl")]
# the full CLI (typer) on the same interpreter, as bin/cocalc-ctl runs every command but the fast ones
FULL_CLI = [os.path.join(REPO, ".venv", "bin", "python"), "-c",
            "import sys; sys.path.insert(0, %r); from cocalc_ctl.cli.main import main; main()" % REPO]

OLD_DEST_SQL = """SELECT id::text FROM project_hosts
                   WHERE trusted AND status = 'active' AND last_seen > now() - interval '2 minutes' AND id <> %(source)s
                   ORDER BY (SELECT count(*) FROM projects p WHERE p.host_id = project_hosts.id), random()
                   LIMIT 1"""


def fill(conn) -> None:
    conn.execute("""INSERT INTO project_hosts (id, name, ssh_server, status, trusted, last_seen)
                    SELECT gen_random_uuid(), 'host-' || i, '127.0.0.1:22', 'active', true, now() + interval '1 day'
                      FROM generate_series(1, %s) i""", (HOSTS,))
    conn.execute("""CREATE TEMP TABLE h AS SELECT row_number() OVER (ORDER BY id) - 1 AS n, id FROM project_hosts""")
    # skewed load: host n holds a share that grows with n, so the least-loaded host is well defined
    conn.execute("""WITH a AS (SELECT array_agg(id ORDER BY n) AS ids FROM h)
                    INSERT INTO projects (project_id, host_id)
                    SELECT gen_random_uuid(), a.ids[1 + least(%s - 1, floor(sqrt(random()) * %s)::int)]
                      FROM generate_series(1, %s) i, a""", (HOSTS, HOSTS, PROJECTS_DONE + QUEUED))
    conn.execute("""INSERT INTO project_moves (project_id, source_host_id, dest_host_id, state, mode, attempt,
                                               created_at, updated_at, cleaned_at)
                    SELECT project_id, host_id, host_id, 'done', 'pipe', 1,
                           now() - (random() * interval '300 days'), now() - (random() * interval '300 days'), now()
                      FROM projects ORDER BY project_id LIMIT %s""", (PROJECTS_DONE,))
    conn.execute("""INSERT INTO project_moves (project_id, source_host_id, dest_host_id, state, mode, created_at,
                                               updated_at)
                    SELECT p.project_id, p.host_id, (SELECT id FROM h WHERE n = 0), 'queued', 'pipe',
                           now() - (random() * interval '1 hour'), now()
                      FROM projects p WHERE NOT EXISTS (SELECT 1 FROM project_moves m WHERE m.project_id = p.project_id)""")
    # the bulk insert left ~1,000 dead versions of each host's counter row (one per project placed):
    # what autovacuum clears on a hub that grows at its normal pace
    conn.execute("VACUUM ANALYZE")


def pct(xs: list[float], p: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(p / 100 * (len(xs) - 1))))]


def ms(x: float) -> str:
    return f"{x * 1000:.3f}"


def timed(conn, sql: str, params) -> float:
    t = time.perf_counter()
    conn.execute(sql, params).fetchall()
    return time.perf_counter() - t


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rounds", type=int, default=200, help="claim/destination rounds (default 200)")
    ap.add_argument("--dest-rounds", type=int, default=15, help="destination-choice rounds (default 15)")
    ap.add_argument("--cli-rounds", type=int, default=60, help="`move start` CLI runs, half each path (default 60)")
    args = ap.parse_args()
    print_environment()

    import psycopg

    from cocalc_ctl.actions.move.hub import LEAST_LOADED_COUNTED_SQL, LEAST_LOADED_SQL
    from cocalc_ctl.actions.move.worker import CLAIM_SQL
    from cocalc_ctl.state import hub_db
    from tests.support.postgres import Postgres

    pg = Postgres().start()
    try:
        pg.wait_ready()
        dsn = pg.new_database()
        hub_db.migrate(dsn)
        t0 = time.monotonic()
        with psycopg.connect(dsn, autocommit=True) as conn:
            fill(conn)
            counts = conn.execute("SELECT (SELECT count(*) FROM project_hosts), (SELECT count(*) FROM projects), "
                                  "(SELECT count(*) FROM project_moves WHERE state = 'done'), "
                                  "(SELECT count(*) FROM project_moves WHERE state = 'queued')").fetchone()
        print(f"hub: {counts[0]} hosts, {counts[1]} projects, {counts[2]} finished moves, {counts[3]} queued "
              f"(built in {time.monotonic() - t0:.1f}s)\n")

        # -- claim and destination queries, interleaved with their baselines -------------------------
        claim_new, claim_old = [], []
        dest_new, dest_agg, dest_old_idx, dest_old_noidx = [], [], [], []
        params = {"owner": "bench", "lease": 60}
        with psycopg.connect(dsn, prepare_threshold=None) as conn:
            source = conn.execute("SELECT host_id FROM projects LIMIT 1").fetchone()[0]
            dparams = {"source": source}
            for i in range(args.rounds):
                order = [0, 1] if i % 2 == 0 else [1, 0]
                for which in order:
                    if which == 0:
                        claim_new.append(timed(conn, CLAIM_SQL, params))
                        conn.rollback()
                    else:
                        conn.execute("DROP INDEX project_moves_claimable")
                        claim_old.append(timed(conn, CLAIM_SQL, params))
                        conn.rollback()
            for i in range(args.dest_rounds):
                for which in ([0, 3, 1, 2] if i % 2 == 0 else [2, 1, 3, 0]):
                    if which == 0:
                        dest_new.append(timed(conn, LEAST_LOADED_SQL, dparams))
                    elif which == 3:
                        dest_agg.append(timed(conn, LEAST_LOADED_COUNTED_SQL, dparams))
                    elif which == 1:
                        dest_old_idx.append(timed(conn, OLD_DEST_SQL, dparams))
                    else:
                        conn.execute("DROP INDEX projects_host_id")
                        dest_old_noidx.append(timed(conn, OLD_DEST_SQL, dparams))
                    conn.rollback()
            # server-side execution time of the claim (no client, network or scheduling in it)
            server_new, server_old = [], []
            for i in range(min(args.rounds, 50)):
                for which in ([0, 1] if i % 2 == 0 else [1, 0]):
                    if which == 1:
                        conn.execute("DROP INDEX project_moves_claimable")
                    out = conn.execute("EXPLAIN (ANALYZE, FORMAT JSON) " + CLAIM_SQL, params).fetchone()[0]
                    (server_new if which == 0 else server_old).append(out[0]["Execution Time"] / 1000)
                    conn.rollback()
            plan = "\n".join(r[0] for r in conn.execute("EXPLAIN " + CLAIM_SQL, params))
            conn.rollback()
        print("claim query (one poll), client-side ms:")
        print(f"  {'variant':44} {'median':>9} {'p99':>9}")
        for name, xs in (("partial index (this code)", claim_new), ("without it (baseline)", claim_old)):
            print(f"  {name:44} {ms(statistics.median(xs)):>9} {ms(pct(xs, 99)):>9}")
        print("claim query, server-side execution time (EXPLAIN ANALYZE), ms:")
        for name, xs in (("partial index (this code)", server_new), ("without it (baseline)", server_old)):
            print(f"  {name:44} {ms(statistics.median(xs)):>9} {ms(pct(xs, 99)):>9}")
        verdict = "met" if pct(claim_new, 99) < 0.002 else "NOT met"
        print(f"  target p99 < 2 ms (client-side): {verdict}\n")
        print("destination choice of `move start` (query alone), client-side ms:")
        print(f"  {'variant':44} {'median':>9} {'p99':>9}")
        for name, xs in (("per-host counter (this code)", dest_new),
                         ("one aggregate over projects", dest_agg),
                         ("count per host, host_id index", dest_old_idx),
                         ("count per host, no host_id index (baseline)", dest_old_noidx)):
            print(f"  {name:44} {ms(statistics.median(xs)):>9} {ms(pct(xs, 99)):>9}")
        print()

        # -- `move start` through the CLI vs the CLI's start floor ----------------------------------
        # as an installed cocalc-ctl runs: with its bytecode cached (PYTHONDONTWRITEBYTECODE would make
        # every start compile the modules it imports), after one warm-up run of each command
        env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
        env.update({"COCALC_CTL_HUB_DSN": dsn, "COCALC_CTL_CONFIG": os.devnull})
        subprocess.run([*CLI, "--version"], env=env, capture_output=True)
        subprocess.run([*CLI, "move", "status", "--limit", "1"], env=env, capture_output=True)
        with psycopg.connect(dsn, autocommit=True) as conn:
            pids = [r[0] for r in conn.execute("SELECT project_id::text FROM project_moves WHERE state = 'done' "
                                               "ORDER BY project_id LIMIT %s", (args.cli_rounds,))]
            start_t, version_t = [], []
            full_start, full_t = pids[len(pids) // 2:], []
            for i, pid in enumerate(pids[:len(pids) // 2]):
                # this code's `move start` (no typer), the same through the full CLI (typer: the path every
                # `move start` took before), and the start floor, in a rotating order
                runs = [("start", [*CLI, "--json", "move", "start", pid]), ("version", [*CLI, "--version"]),
                        ("full", [*FULL_CLI, "--json", "move", "start", full_start[i]])]
                for name, argv in runs[i % 3:] + runs[:i % 3]:
                    t = time.perf_counter()
                    res = subprocess.run(argv, env=env, capture_output=True, text=True)
                    dt_ = time.perf_counter() - t
                    if res.returncode != 0:
                        raise SystemExit(f"{' '.join(argv)} failed: {res.stderr.strip()}")
                    {"start": start_t, "version": version_t, "full": full_t}[name].append(dt_)
                # back to a finished move, outside the timing
                conn.execute("UPDATE project_moves SET state = 'done', cleaned_at = now() WHERE project_id = ANY(%s)",
                             ([pid, full_start[i]],))
        print("`move start PROJECT` (no --to) wall time including CLI start, ms:")
        print(f"  {'command':44} {'median':>9} {'p90':>9}")
        for name, xs in (("cocalc-ctl move start (this code)", start_t),
                         ("move start through typer (before)", full_t),
                         ("cocalc-ctl --version (start floor)", version_t)):
            print(f"  {name:44} {ms(statistics.median(xs)):>9} {ms(pct(xs, 90)):>9}")
        verdict = "met" if statistics.median(start_t) < 0.050 else "NOT met"
        print(f"  target median < 50 ms: {verdict}")
        print(f"\nclaim plan:\n{plan}")
    finally:
        pg.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
