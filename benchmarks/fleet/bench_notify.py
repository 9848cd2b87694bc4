"""NOTIFY instead of polling in the hub: how fast a queued move is claimed, and what one key change
costs a fleet of `keys watch`es. A throwaway PostgreSQL (unix socket only, fsync off; removed at the end).

1. Claim delay: the time from `move start`'s commit to a running `move worker`'s claim, with the move
   trigger (NOTIFY) and, interleaved round by round, with the trigger disabled — the worker then finds
   the move only on its poll, which this run sets to 2 s, the old default interval (the new default,
   `move.poll_seconds`, is 60 s). The host steps are a no-op transport: this measures the hub side.
2. Key fan-out: 100 simulated hosts (each its own config, host sqlite and `keys watch`, as threads in
   a few processes) watch a hub with those 100 trusted hosts. One host's key changes; measured: the
   time from the commit until every other host's `keys watch` has written it to its sqlite, and the
   rows the hub read for it — rows the watchers got back (client side) and `project_hosts` tuples the
   server read (pg_stat_user_tables: sequential + index fetches, read after the stats flush). Baseline,
   interleaved: the same change announced as `all` (trigger disabled, `pg_notify(…, 'all')` in the
   same transaction), which makes every host do the full sync that every change cost before.

Run (root, PostgreSQL installed): .venv/bin/python benchmarks/fleet/bench_notify.py [--rounds 10]
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import random
import statistics
import sys
import tempfile
import threading
import time
import uuid

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, REPO)
sys.path.insert(0, os.path.join(REPO, "benchmarks"))

from benchenv import print_environment  # noqa: E402


def _env(dsn: str, data_dir: str, **extra) -> dict:
    env = {"COCALC_CTL_HUB_DSN": dsn, "COCALC_CTL_DATA_DIR": data_dir, "COCALC_CTL_CONFIG": os.devnull}
    env.update({f"COCALC_CTL_{k.upper()}": str(v) for k, v in extra.items()})
    return env


def pct(xs: list[float], p: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(p / 100 * (len(xs) - 1))))]


# -- 1. claim delay ---------------------------------------------------------------------------------

def bench_claim(dsn: str, workdir: str, rounds: int) -> None:
    import psycopg

    from cocalc_ctl import config as config_mod
    from cocalc_ctl.actions.keys import hub_keys
    from cocalc_ctl.actions.move import hub, worker
    from cocalc_ctl.actions.move.transport import HostTransport

    class NoopTransport(HostTransport):
        def run(self, host_id, args, *, timeout=None, on_event=None):
            return {"bytes_total": 1, "snapshots": []}

    cfg = config_mod.load(None, env=_env(dsn, workdir))
    hub_keys.ensure(cfg)
    src, dst = str(uuid.uuid4()), str(uuid.uuid4())
    with psycopg.connect(dsn, autocommit=True) as conn:
        for h in (src, dst):
            conn.execute("INSERT INTO project_hosts (id, name, ssh_server, status, last_seen, trusted) "
                         "VALUES (%s, %s, '127.0.0.9:22', 'active', now(), true)", (h, h[:8]))
    claims: dict[str, float] = {}
    stop, listening = threading.Event(), threading.Event()
    t = threading.Thread(target=worker.run, args=(cfg,), daemon=True,
                         kwargs={"poll": 2.0, "transport": NoopTransport(), "stop": stop, "listening": listening,
                                 "on_claim": lambda m: claims.setdefault(m.project_id, time.monotonic())})
    t.start()
    listening.wait(30)
    time.sleep(0.5)
    delays = {"notify": [], "poll": []}
    with psycopg.connect(dsn, autocommit=True) as conn:
        for i in range(rounds):
            for variant in (("notify", "poll") if i % 2 == 0 else ("poll", "notify")):
                conn.execute(f"ALTER TABLE project_moves {'ENABLE' if variant == 'notify' else 'DISABLE'} "
                             "TRIGGER cocalc_ctl_move_claimable")
                time.sleep(random.uniform(0.0, 2.0))  # a random phase against the 2 s poll
                pid = str(uuid.uuid4())
                conn.execute("INSERT INTO projects (project_id, host_id) VALUES (%s, %s)", (pid, src))
                hub.start(cfg, pid, to=dst)
                committed = time.monotonic()
                deadline = committed + 30
                while pid not in claims and time.monotonic() < deadline:
                    time.sleep(0.001)
                delays[variant].append(claims[pid] - committed)
                while hub.status(cfg, pid)[0].cleaned_at is None and time.monotonic() < deadline:
                    time.sleep(0.01)
        conn.execute("ALTER TABLE project_moves ENABLE TRIGGER cocalc_ctl_move_claimable")
    stop.set()
    t.join(10)
    print(f"claim delay: `move start` commit → worker's claim, ms ({rounds} moves each, interleaved):")
    print(f"  {'variant':48} {'median':>8} {'p90':>8} {'max':>8}")
    for name, label in (("notify", "LISTEN/NOTIFY (this code)"),
                        ("poll", "trigger disabled: poll every 2 s (baseline)")):
        xs = delays[name]
        print(f"  {label:48} {statistics.median(xs) * 1000:8.1f} {pct(xs, 90) * 1000:8.1f} {max(xs) * 1000:8.1f}")
    print()


# -- 2. key fan-out ---------------------------------------------------------------------------------

def _watch_hosts(dsn: str, hosts: list[tuple[str, str]], events, seconds: float) -> None:
    """One process of the simulated fleet: a `keys watch` thread per host."""
    from cocalc_ctl import config as config_mod
    from cocalc_ctl.actions.keys import keysync

    def one(hid: str, data_dir: str) -> None:
        cfg = config_mod.load(None, env=_env(dsn, data_dir, host_id=hid))

        def on_sync(r) -> None:
            events.put((hid, time.monotonic(), r.scope, r.changed, len(r.peers)))

        keysync.watch(cfg, max_seconds=seconds, resync_every=3600.0, on_sync=on_sync, jitter=0.2)

    threads = [threading.Thread(target=one, args=h, daemon=True) for h in hosts]
    for t in threads:
        t.start()
    for t in threads:
        t.join()


def _tuples_read(conn) -> int:
    row = conn.execute("SELECT coalesce(seq_tup_read, 0) + coalesce(idx_tup_fetch, 0) FROM pg_stat_user_tables "
                       "WHERE relname = 'project_hosts'").fetchone()
    return int(row[0])


def bench_keys(dsn: str, workdir: str, n_hosts: int, rounds: int, procs: int) -> None:
    import psycopg
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ed25519

    def new_key() -> str:
        k = ed25519.Ed25519PrivateKey.generate().public_key()
        return k.public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH).decode()

    hosts = [(str(uuid.uuid4()), os.path.join(workdir, f"h{i:03d}")) for i in range(n_hosts)]
    with psycopg.connect(dsn, autocommit=True) as conn:
        for i, (hid, d) in enumerate(hosts):
            os.makedirs(d)
            conn.execute("""INSERT INTO project_hosts (id, name, ssh_server, status, last_seen, trusted,
                                                       host_to_host_public_key, sshpiperd_public_key)
                            VALUES (%s, %s, %s, 'active', now(), true, %s, %s)""",
                         (hid, f"h{i:03d}", f"10.0.{i // 250}.{i % 250 + 1}:22", new_key(), new_key()))
        conn.execute("ANALYZE project_hosts")
    ctx = multiprocessing.get_context("fork")
    events = ctx.Queue()
    seconds = 60.0 + rounds * 2 * 30.0
    workers = [ctx.Process(target=_watch_hosts, args=(dsn, hosts[i::procs], events, seconds), daemon=True)
               for i in range(procs)]
    for p in workers:
        p.start()
    try:
        started = 0
        deadline = time.monotonic() + 120
        while started < n_hosts and time.monotonic() < deadline:  # every watch's first full sync
            hid, _, scope, _, npeers = events.get(timeout=120)
            started += 1
        print(f"key fan-out: {n_hosts} simulated hosts ({procs} processes), all watching after the first sync")
        results = {"incremental": [], "full": []}
        with psycopg.connect(dsn, autocommit=True) as conn, psycopg.connect(dsn, autocommit=True) as stats:
            time.sleep(12)  # every backend's startup reads flushed into the statistics
            for i in range(rounds):
                for variant in (("incremental", "full") if i % 2 == 0 else ("full", "incremental")):
                    changed_hid = random.choice(hosts)[0]
                    before = _tuples_read(stats)
                    with conn.transaction():
                        if variant == "full":
                            conn.execute("ALTER TABLE project_hosts DISABLE TRIGGER cocalc_ctl_keys_updated")
                        conn.execute("UPDATE project_hosts SET host_to_host_public_key=%s WHERE id=%s",
                                     (new_key(), changed_hid))
                        if variant == "full":
                            conn.execute("SELECT pg_notify('cocalc_ctl_keys', 'all')")
                            conn.execute("ALTER TABLE project_hosts ENABLE TRIGGER cocalc_ctl_keys_updated")
                    committed = time.monotonic()
                    reached, returned = {}, 0
                    while len(reached) < n_hosts - 1:
                        hid, at, scope, changed, npeers = events.get(timeout=60)
                        if changed_hid in changed:
                            reached[hid] = at
                        # rows the hub sent back: incremental = own row + the named one; full = own + every peer
                        returned += 2 if scope == "incremental" else 1 + npeers
                    time.sleep(12)  # the watchers' backends flush their statistics when idle (≤ 10 s)
                    read = _tuples_read(stats) - before
                    results[variant].append((max(reached.values()) - committed, returned, read))
        print(f"  a key change until every other host's sqlite has it ({rounds} changes each, interleaved):")
        print(f"  {'variant':44} {'median s':>9} {'max s':>7} {'rows returned':>14} {'tuples read':>12}")
        for name, label in (("incremental", "incremental sync (this code)"),
                            ("full", "full sync on every change (baseline)")):
            xs = results[name]
            print(f"  {label:44} {statistics.median(x[0] for x in xs):9.3f} {max(x[0] for x in xs):7.3f} "
                  f"{statistics.median(x[1] for x in xs):14.0f} {statistics.median(x[2] for x in xs):12.0f}")
        ok = max(x[0] for x in results["incremental"]) < 2.0
        print(f"  target: every host within 2 s: {'met' if ok else 'NOT met'}")
    finally:
        for p in workers:
            p.terminate()
        for p in workers:
            p.join(10)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rounds", type=int, default=10, help="moves per claim variant (default 10)")
    ap.add_argument("--key-rounds", type=int, default=5, help="key changes per variant (default 5)")
    ap.add_argument("--hosts", type=int, default=100, help="simulated hosts (default 100)")
    ap.add_argument("--procs", type=int, default=4, help="processes the simulated hosts run in (default 4)")
    args = ap.parse_args()
    print_environment()

    from cocalc_ctl.state import hub_db
    from tests.support.postgres import Postgres

    pg = Postgres().start()
    work = tempfile.mkdtemp(prefix="bench-notify-")
    try:
        pg.wait_ready()
        dsn = pg.new_database()
        hub_db.migrate(dsn)
        bench_claim(dsn, os.path.join(work, "worker"), args.rounds)
        dsn2 = pg.new_database()
        hub_db.migrate(dsn2)
        bench_keys(dsn2, os.path.join(work, "fleet"), args.hosts, args.key_rounds, args.procs)
    finally:
        pg.stop()
        import shutil

        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
