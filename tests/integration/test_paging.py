"""Keyset paging (`--limit`, `--after`) of the lists that grow with the fleet: `move status` and
`hub project list` against a real PostgreSQL, `backup status` on a host's sqlite."""

from __future__ import annotations

import contextlib
import json
import uuid

import pytest

from tests.support.keys import KeyHost
from tests.support.postgres import sql as _sql

pytestmark = pytest.mark.integration


@pytest.fixture
def admin(tmp_path, hub_dsn):
    a = KeyHost(tmp_path / "admin", extra={"hub_dsn": hub_dsn})
    a.cli("hub", "migrate")
    return a



def _pages(cli, args: list[str], limit: int) -> tuple[list[list[str]], list[str | None]]:
    """Walk every page with the human output: the ids of each page and each page's `more` key."""
    pages, keys, after = [], [], None
    while True:
        res = cli(*args, "--limit", str(limit), *(["--after", after] if after else []))
        lines = res.stdout.splitlines()
        more = [ln for ln in lines if ln.startswith("… more: --after ")]
        assert len(more) <= 1 and (not more or lines[-1] == more[0]), res.stdout  # the last line
        ids = [ln.split()[0] for ln in lines if len(ln.split()) > 1 and len(ln.split()[0]) == 36]
        pages.append(ids)
        after = more[0].split()[-1] if more else None
        keys.append(after)
        if after is None:
            return pages, keys
        assert len(pages) < 50


def _fill_hub(dsn: str, n: int) -> tuple[str, list[str]]:
    hid = str(uuid.uuid4())
    _sql(dsn, "INSERT INTO project_hosts (id, name, status, trusted, last_seen) VALUES (%s, 'h', 'active', true, now())",
         (hid,))
    _sql(dsn, "INSERT INTO projects (project_id, host_id) SELECT gen_random_uuid(), %s FROM generate_series(1, %s)",
         (hid, n))
    # moves with distinct and with equal update times (the key must break ties by project)
    _sql(dsn, """INSERT INTO project_moves (project_id, source_host_id, dest_host_id, state, cleaned_at, updated_at)
                 SELECT project_id, host_id, host_id, 'done', now(),
                        timestamptz '2026-11-01 00:00:00+00' + (row_number() OVER (ORDER BY project_id) / 3)
                                                              * interval '1 second'
                   FROM projects""")
    return hid, [r[0] for r in _sql(dsn, "SELECT project_id::text FROM projects ORDER BY project_id")]


def test_hub_project_list_pages_by_project_id(admin, hub_dsn):
    env = {"COCALC_CTL_HUB_DSN": hub_dsn}
    hid, every = _fill_hub(hub_dsn, 23)
    pages, keys = _pages(lambda *a: admin.cli(*a, env=env), ["hub", "project", "list"], 10)
    assert [len(p) for p in pages] == [10, 10, 3] and sum(pages, []) == every
    assert keys[:2] == [pages[0][-1], pages[1][-1]] and keys[2] is None
    # the default (100) fits them all: no `more` line
    assert "more" not in admin.cli("hub", "project", "list", env=env).stdout
    # --host pages too
    pages, _ = _pages(lambda *a: admin.cli(*a, env=env), ["hub", "project", "list", "--host", hid], 7)
    assert sum(pages, []) == every
    # JSON keeps its shape (an array); the more line goes to stderr
    res = admin.cli("--json", "hub", "project", "list", "--limit", "5", env=env)
    doc = json.loads(res.stdout)
    assert [p["project_id"] for p in doc] == every[:5]
    assert res.stderr.strip().endswith(f"… more: --after {every[4]}")
    last = admin.cli("--json", "hub", "project", "list", "--limit", "5", "--after", every[-3], env=env)
    assert [p["project_id"] for p in json.loads(last.stdout)] == every[-2:] and "more" not in last.stderr


def test_move_status_pages_newest_first_with_ties(admin, hub_dsn):
    env = {"COCALC_CTL_HUB_DSN": hub_dsn}
    _fill_hub(hub_dsn, 25)
    newest_first = [r[0] for r in _sql(hub_dsn, "SELECT project_id::text FROM project_moves "
                                                "ORDER BY updated_at DESC, project_id DESC")]
    pages, keys = _pages(lambda *a: admin.cli(*a, env=env), ["move", "status"], 4)
    assert [len(p) for p in pages] == [4] * 6 + [1] and sum(pages, []) == newest_first
    assert all(keys[:-1]) and keys[-1] is None
    res = admin.cli("--json", "move", "status", "--limit", "24", env=env)
    assert [m["project_id"] for m in json.loads(res.stdout)] == newest_first[:24]
    key = res.stderr.strip().split()[-1]
    rest = admin.cli("--json", "move", "status", "--limit", "24", "--after", key, env=env)
    assert [m["project_id"] for m in json.loads(rest.stdout)] == newest_first[24:] and "more" not in rest.stderr


@pytest.mark.parametrize("args, what", [
    (["move", "status", "--after", "2026-11-01T00:00:00+00:00"], "not a paging key"),
    (["move", "status", "--after", "2026-11-01T00:00:00/1b4e28ba-2fa1-11d2-883f-0016d3cca427"], "not a paging key"),
    (["move", "status", "--after", "x" * 5000 + "/1b4e28ba-2fa1-11d2-883f-0016d3cca427"], "not a paging key"),
    (["move", "status", "--after", "2026-11-01T00:00:00+00:00/'; DROP TABLE projects; --"], "not a paging key"),
    (["hub", "project", "list", "--after", "'; DROP TABLE projects; --\n"], "not a project id"),
    (["hub", "project", "list", "--limit", "0"], "--limit"),
    (["move", "status", "--limit", "100001"], "--limit"),
])
def test_bad_paging_input_is_a_one_line_error(admin, hub_dsn, args, what):
    res = admin.cli(*args, check=False, env={"COCALC_CTL_HUB_DSN": hub_dsn})
    assert res.returncode == 2 and res.stderr.count("\n") == 1 and what in res.stderr, res.stderr
    assert "Traceback" not in res.stderr
    assert _sql(hub_dsn, "SELECT to_regclass('projects')")[0][0] is not None


def test_backup_status_pages_jobs_newest_first(tmp_path):
    from cocalc_ctl.state import host_db

    h = KeyHost(tmp_path / "h")
    pid = "1b4e28ba-2fa1-11d2-883f-0016d3cca427"
    with contextlib.closing(host_db.connect(h.data)) as db:
        for i in range(1, 31):
            db.execute("INSERT INTO backup_jobs (project_id, state, started_at, finished_at, duration) "
                       "VALUES (?, 'succeeded', ?, ?, 1.0)", (pid, f"2026-11-01T00:00:{i:02d}+00:00",
                                                               f"2026-11-01T00:00:{i:02d}+00:00"))
    doc = h.json("backup", "status", "--limit", "12")
    assert [j["id"] for j in doc["jobs"]] == list(range(30, 18, -1)) and doc["next_after"] == 19
    doc = h.json("backup", "status", "--limit", "12", "--after", "19")
    assert [j["id"] for j in doc["jobs"]] == list(range(18, 6, -1)) and doc["next_after"] == 7
    doc = h.json("backup", "status", "--limit", "12", "--after", "7")
    assert [j["id"] for j in doc["jobs"]] == list(range(6, 0, -1)) and doc["next_after"] is None
    assert doc["projects"][0]["project_id"] == pid  # the projects part is not paged
    human = h.cli("backup", "status", "--limit", "12").stdout.splitlines()
    assert human[-1] == "… more: --after 19"
    assert h.cli("backup", "status").stdout.splitlines()[-1] == "… more: --after 11"  # default 20 of 30 jobs
    bad = h.cli("backup", "status", "--after", "-1", check=False)
    assert bad.returncode == 2 and "not a job id" in bad.stderr and bad.stderr.count("\n") == 1
