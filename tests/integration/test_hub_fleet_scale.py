"""Fleet scale against a real PostgreSQL: the index migration on a hub that already has data, the
move worker's claim query on its partial index, `move start`'s least-loaded host from per-host project
counts that a trigger keeps equal to the projects table."""

from __future__ import annotations

import json
import uuid

import psycopg
import pytest

from tests.support.keys import KeyHost
from tests.support.postgres import sql as _sql

pytestmark = pytest.mark.integration

FLEET_INDEXES = {"project_moves_claimable", "projects_host_id", "project_moves_updated"}


@pytest.fixture
def admin(tmp_path, hub_dsn):
    a = KeyHost(tmp_path / "admin", extra={"hub_dsn": hub_dsn})
    a.cli("hub", "migrate")
    return a



def _indexes(dsn: str) -> set[str]:
    return {r[0] for r in _sql(dsn, "SELECT indexname FROM pg_indexes WHERE schemaname = 'public'")}


def _fill(dsn: str, *, hosts: int, projects: int, done_moves: int, queued: int) -> list[str]:
    """hosts trusted, active, seen now; projects spread round-robin; the first `done_moves` projects
    have a finished, cleaned move, the next `queued` a queued one. Returns the host ids."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("""INSERT INTO project_hosts (id, name, status, trusted, last_seen)
                        SELECT gen_random_uuid(), 'h' || i, 'active', true, now() FROM generate_series(1, %s) i""",
                     (hosts,))
        host_ids = [r[0] for r in conn.execute("SELECT id::text FROM project_hosts ORDER BY name")]
        conn.execute("""INSERT INTO projects (project_id, host_id)
                        SELECT gen_random_uuid(), (%s::uuid[])[1 + i %% %s] FROM generate_series(1, %s) i""",
                     (host_ids, hosts, projects))
        conn.execute("""INSERT INTO project_moves (project_id, source_host_id, dest_host_id, state, cleaned_at,
                                                   created_at, updated_at)
                        SELECT project_id, host_id, host_id, 'done', now(), now() - interval '1 day',
                               now() - interval '1 day'
                          FROM projects ORDER BY project_id LIMIT %s""", (done_moves,))
        conn.execute("""INSERT INTO project_moves (project_id, source_host_id, dest_host_id, state)
                        SELECT p.project_id, p.host_id, p.host_id, 'queued' FROM projects p
                         WHERE NOT EXISTS (SELECT 1 FROM project_moves m WHERE m.project_id = p.project_id)
                         ORDER BY p.project_id LIMIT %s""", (queued,))
        conn.execute("ANALYZE")
    return host_ids


def test_fleet_index_migration_runs_twice_on_a_hub_with_data(admin, hub_dsn):
    from cocalc_ctl.state.hub_db import MIGRATIONS

    env = {"COCALC_CTL_HUB_DSN": hub_dsn}
    _fill(hub_dsn, hosts=3, projects=300, done_moves=200, queued=20)
    before = _sql(hub_dsn, "SELECT project_id, host_id FROM projects ORDER BY project_id")
    moves = _sql(hub_dsn, "SELECT project_id, state FROM project_moves ORDER BY project_id")
    # a hub from before this migration: its indexes absent, its version not recorded
    version = next(i for i, (name, _) in enumerate(MIGRATIONS, 1) if name.startswith("fleet scale"))
    for name in FLEET_INDEXES:
        _sql(hub_dsn, f"DROP INDEX {name}")
    _sql(hub_dsn, "DELETE FROM cocalc_ctl_schema_migrations WHERE version >= %s", (version,))
    assert not FLEET_INDEXES & _indexes(hub_dsn)

    first = json.loads(admin.cli("--json", "hub", "migrate", env=env).stdout)
    assert f"{version}: {MIGRATIONS[version - 1][0]}" in first["applied"]
    assert FLEET_INDEXES <= _indexes(hub_dsn)
    again = json.loads(admin.cli("--json", "hub", "migrate", env=env).stdout)
    assert again == {**again, "applied": [], "version": len(MIGRATIONS)}
    # the statements themselves are idempotent (a half-applied run, or another tool created one)
    with psycopg.connect(hub_dsn, autocommit=True) as conn:
        for statement in MIGRATIONS[version - 1][1]:
            conn.execute(statement)
    assert _sql(hub_dsn, "SELECT project_id, host_id FROM projects ORDER BY project_id") == before
    assert _sql(hub_dsn, "SELECT project_id, state FROM project_moves ORDER BY project_id") == moves


def _claim_plan(dsn: str, seqscan: bool) -> str:
    from cocalc_ctl.actions.move.worker import CLAIM_SQL

    with psycopg.connect(dsn) as conn:  # a transaction, rolled back: EXPLAIN ANALYZE would claim
        if not seqscan:
            conn.execute("SET LOCAL enable_seqscan = off")
        rows = conn.execute("EXPLAIN " + CLAIM_SQL, {"owner": "x", "lease": 60}).fetchall()
        conn.rollback()
    return "\n".join(r[0] for r in rows)


def test_the_claim_query_reads_the_partial_index(admin, hub_dsn):
    _fill(hub_dsn, hosts=4, projects=20000, done_moves=19000, queued=50)
    for seqscan in (True, False):
        plan = _claim_plan(hub_dsn, seqscan)
        assert "project_moves_claimable" in plan, plan
    # and it still claims the oldest claimable move (the index changes no answer)
    oldest = _sql(hub_dsn, "SELECT project_id::text FROM project_moves WHERE state = 'queued' "
                           "ORDER BY created_at, project_id LIMIT 1")[0][0]
    from cocalc_ctl.actions.move.worker import CLAIM_SQL

    with psycopg.connect(hub_dsn) as conn:
        got = conn.execute(CLAIM_SQL, {"owner": "x", "lease": 60}).fetchone()[0]
        conn.rollback()
    assert got == oldest


def test_move_start_without_to_picks_the_least_loaded_active_trusted_host(admin, hub_dsn):
    env = {"COCALC_CTL_HUB_DSN": hub_dsn}

    def host(name, n, *, trusted=True, status="active", seen="now()"):
        hid = str(uuid.uuid4())
        _sql(hub_dsn, f"INSERT INTO project_hosts (id, name, status, trusted, last_seen) VALUES (%s, %s, %s, %s, {seen})",
             (hid, name, status, trusted))
        _sql(hub_dsn, "INSERT INTO projects (project_id, host_id) SELECT gen_random_uuid(), %s FROM generate_series(1, %s)",
             (hid, n))
        return hid

    source = host("source", 1)  # the emptiest of all, but it is the source
    host("busy", 7)
    light = host("light", 3)
    host("untrusted", 0, trusted=False)
    host("draining", 0, status="draining")
    host("silent", 0, seen="now() - interval '10 minutes'")
    host("heavy", 12)
    pid = _sql(hub_dsn, "SELECT project_id::text FROM projects WHERE host_id = %s", (source,))[0][0]
    for _ in range(3):
        doc = json.loads(admin.cli("--json", "move", "start", pid, env=env).stdout)
        assert doc["dest_host_id"] == light and doc["source_host_id"] == source
        _sql(hub_dsn, "UPDATE project_moves SET state = 'cancelled', cleaned_at = now() WHERE project_id = %s", (pid,))
    # a host with no project at all is the least loaded (not left out of the aggregate)
    empty = host("empty", 0)
    doc = json.loads(admin.cli("--json", "move", "start", pid, env=env).stdout)
    assert doc["dest_host_id"] == empty
    # none left: the documented error
    _sql(hub_dsn, "UPDATE project_moves SET state = 'cancelled', cleaned_at = now() WHERE project_id = %s", (pid,))
    _sql(hub_dsn, "UPDATE project_hosts SET trusted = false WHERE id <> %s", (source,))
    res = admin.cli("move", "start", pid, check=False, env=env)
    assert res.returncode != 0 and "no trusted, active host" in res.stderr


def _counts(dsn: str) -> dict[str, int]:
    return {h: n for h, n in _sql(dsn, "SELECT host_id::text, n FROM host_project_counts") if n}


def _counted(dsn: str) -> dict[str, int]:
    return dict(_sql(dsn, "SELECT host_id::text, count(*) FROM projects WHERE host_id IS NOT NULL GROUP BY host_id"))


def test_per_host_project_counts_follow_every_change_to_projects(admin, hub_dsn):
    import random

    hosts = _fill(hub_dsn, hosts=5, projects=500, done_moves=0, queued=0)
    assert _counts(hub_dsn) == _counted(hub_dsn) and sum(_counts(hub_dsn).values()) == 500
    rng = random.Random(16)
    pids = [r[0] for r in _sql(hub_dsn, "SELECT project_id::text FROM projects")]
    with psycopg.connect(hub_dsn, autocommit=True) as conn:
        for _ in range(300):
            op, pid, host = rng.randrange(6), rng.choice(pids), rng.choice(hosts + [None])
            if op == 0:  # a new project, placed or not
                new = str(uuid.uuid4())
                conn.execute("INSERT INTO projects (project_id, host_id) VALUES (%s, %s)", (new, host))
                pids.append(new)
            elif op == 1:
                conn.execute("DELETE FROM projects WHERE project_id = %s", (pid,))
            elif op == 2:  # moved, unplaced or placed
                conn.execute("UPDATE projects SET host_id = %s WHERE project_id = %s", (host, pid))
            elif op == 3:  # an update that leaves host_id alone counts nothing
                conn.execute("UPDATE projects SET rootfs_image = 'x', host_id = host_id WHERE project_id = %s", (pid,))
            elif op == 4:  # many rows in one statement
                conn.execute("UPDATE projects SET host_id = %s WHERE project_id IN "
                             "(SELECT project_id FROM projects ORDER BY random() LIMIT 20)", (host,))
            else:  # a transaction rolled back changes nothing
                with pytest.raises(RuntimeError), conn.transaction():
                    conn.execute("UPDATE projects SET host_id = %s", (hosts[0],))
                    raise RuntimeError("roll back")
        assert _counts(hub_dsn) == _counted(hub_dsn)
        conn.execute("TRUNCATE projects CASCADE")
    assert _counts(hub_dsn) == {} == _counted(hub_dsn)


def test_per_host_project_counts_are_backfilled_on_a_hub_that_has_projects(admin, hub_dsn):
    from cocalc_ctl.state.hub_db import MIGRATIONS

    _fill(hub_dsn, hosts=4, projects=400, done_moves=0, queued=0)
    version = next(i for i, (name, _) in enumerate(MIGRATIONS, 1) if name == "fleet scale: per-host project counts")
    # a hub from before the migration: no counts, no triggers, the version not recorded
    _sql(hub_dsn, "DROP TRIGGER cocalc_ctl_projects_count ON projects")
    _sql(hub_dsn, "DROP TRIGGER cocalc_ctl_projects_count_truncate ON projects")
    _sql(hub_dsn, "DROP TABLE host_project_counts")
    _sql(hub_dsn, "DELETE FROM cocalc_ctl_schema_migrations WHERE version >= %s", (version,))
    admin.cli("hub", "migrate", env={"COCALC_CTL_HUB_DSN": hub_dsn})
    assert _counts(hub_dsn) == _counted(hub_dsn) and sum(_counts(hub_dsn).values()) == 400
    admin.cli("hub", "migrate", env={"COCALC_CTL_HUB_DSN": hub_dsn})  # again: nothing doubles
    assert _counts(hub_dsn) == _counted(hub_dsn)


def _relations(node: dict) -> set[str]:
    return {node["Relation Name"]} if "Relation Name" in node else set() | {
        r for n in node.get("Plans", []) for r in _relations(n)}


def test_the_destination_choice_reads_one_row_per_host_not_the_projects(admin, hub_dsn):
    from cocalc_ctl.actions.move.hub import LEAST_LOADED_COUNTED_SQL, LEAST_LOADED_SQL

    hosts = _fill(hub_dsn, hosts=6, projects=30000, done_moves=0, queued=0)
    _sql(hub_dsn, "VACUUM host_project_counts")  # 30,000 inserts in one burst leave dead row versions; autovacuum's job
    with psycopg.connect(hub_dsn) as conn:
        plan = conn.execute("EXPLAIN (ANALYZE, FORMAT JSON) " + LEAST_LOADED_SQL, {"source": hosts[0]}).fetchone()[0]
        counted = conn.execute("EXPLAIN (ANALYZE, FORMAT JSON) " + LEAST_LOADED_COUNTED_SQL,
                               {"source": hosts[0]}).fetchone()[0]
    assert _relations(plan[0]["Plan"]) == {"project_hosts", "host_project_counts"}
    assert _max_rows(plan[0]["Plan"]) <= len(hosts)
    assert "projects" in _relations(counted[0]["Plan"]) and _max_rows(counted[0]["Plan"]) >= 20000  # the method sees it


def _max_rows(node: dict) -> int:
    return max([node.get("Actual Rows", 0) * node.get("Actual Loops", 1)]
               + [_max_rows(n) for n in node.get("Plans", [])])


def test_paged_lists_read_one_page_however_deep(admin, hub_dsn):
    """A page deep in `hub project list` (with and without --host) and in `move status` reads about a
    page of rows, not everything before it."""
    from cocalc_ctl.actions.hub import placement
    from cocalc_ctl.actions.move.hub import STATUS_AFTER_SQL

    hosts = _fill(hub_dsn, hosts=4, projects=20000, done_moves=20000, queued=0)
    middle = "80000000-0000-4000-8000-000000000000"
    queries = [
        (placement.list_sql(["p.project_id > %(after)s"]), {"after": middle}),
        (placement.list_sql(["p.project_id > %(after)s", "p.host_id = %(h)s"]), {"after": middle, "h": hosts[1]}),
    ]
    with psycopg.connect(hub_dsn) as conn:
        # at this size a hash join over all moves is cheap enough for the planner; what matters is that
        # a plan reading only the page exists (at 100,000 projects the planner picks it by itself)
        conn.execute("SET enable_seqscan = off")
        conn.execute("SET enable_hashjoin = off")
        for sql, params in queries:
            plan = conn.execute("EXPLAIN (ANALYZE, FORMAT JSON) " + sql,
                                {**params, "limit": 101, "active": ["queued"]}).fetchone()[0]
            assert _max_rows(plan[0]["Plan"]) <= 500, json.dumps(plan, indent=1, default=str)
        conn.execute("UPDATE project_moves SET updated_at = updated_at - (random() * interval '1 hour') "
                     "WHERE random() < 0.5")  # times that differ and times that tie
        conn.execute("ANALYZE project_moves")
        at = conn.execute("SELECT updated_at FROM project_moves ORDER BY updated_at LIMIT 1 OFFSET 10000").fetchone()[0]
        plan = conn.execute("EXPLAIN (ANALYZE, FORMAT JSON) " + STATUS_AFTER_SQL, (at, middle, 101)).fetchone()[0]
        assert _max_rows(plan[0]["Plan"]) <= 500, json.dumps(plan, indent=1, default=str)
