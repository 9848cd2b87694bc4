"""hub migrate against a real PostgreSQL: idempotent, versioned, additive."""

import psycopg
import pytest

pytestmark = pytest.mark.integration


def test_migrate_creates_tables_and_is_idempotent(host, hub_dsn):
    from cocalc_ctl.state.hub_db import MIGRATIONS

    res = host.cli("hub", "migrate", env={"COCALC_CTL_HUB_DSN": hub_dsn})
    assert "applied 1: core tables" in res.stdout and f"version {len(MIGRATIONS)}" in res.stdout
    again = host.cli("--json", "hub", "migrate", env={"COCALC_CTL_HUB_DSN": hub_dsn})
    import json

    doc = json.loads(again.stdout)
    assert doc["applied"] == [] and doc["version"] == len(MIGRATIONS)
    with psycopg.connect(hub_dsn) as conn:
        tables = {r[0] for r in conn.execute("SELECT tablename FROM pg_tables WHERE schemaname='public'")}
    assert {"projects", "project_hosts", "project_moves", "cocalc_ctl_schema_migrations"} <= tables


def test_migrate_extends_an_existing_projects_table_without_touching_its_data(host, hub_dsn):
    with psycopg.connect(hub_dsn, autocommit=True) as conn:
        conn.execute("CREATE TABLE projects (project_id uuid PRIMARY KEY, title text)")
        conn.execute("INSERT INTO projects VALUES ('1b4e28ba-2fa1-11d2-883f-0016d3cca427', 'keep me')")
    host.cli("hub", "migrate", env={"COCALC_CTL_HUB_DSN": hub_dsn})
    with psycopg.connect(hub_dsn) as conn:
        row = conn.execute("SELECT title, host_id, rootfs_image FROM projects").fetchone()
    assert row == ("keep me", None, None)


def test_unreachable_hub_is_a_one_line_error(host):
    res = host.cli("hub", "migrate", check=False, env={"COCALC_CTL_HUB_DSN": "host=/nonexistent-dir user=x"})
    assert res.returncode == 1 and res.stderr.count("\n") == 1 and "cannot connect" in res.stderr
