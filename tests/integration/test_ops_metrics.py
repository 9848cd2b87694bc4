"""metrics write on a real host: backup ages, failed jobs, snapshots, pool usage, move states."""

from __future__ import annotations

import re
import sqlite3
import stat

import pytest

pytestmark = pytest.mark.integration

P1 = "11111111-1111-4111-8111-111111111111"
P2 = "22222222-2222-4222-8222-222222222222"

SAMPLE = re.compile(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{((?:[a-zA-Z_]\w*="(?:[^"\\]|\\.)*",?)*)\})? (\S+)$')


def parse(text: str) -> dict[tuple[str, tuple], float]:
    """A strict reader of the Prometheus text format: HELP/TYPE before samples, no duplicate series."""
    out: dict[tuple[str, tuple], float] = {}
    typed = set()
    for line in text.splitlines():
        if line.startswith("# HELP "):
            continue
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split(" ", 3)
            assert kind in ("gauge", "counter"), line
            typed.add(name)
            continue
        m = SAMPLE.match(line)
        assert m, f"not a sample line: {line!r}"
        name = m.group(1)
        assert name in typed, f"{name} has no TYPE line before it"
        labels = tuple(sorted(re.findall(r'(\w+)="((?:[^"\\]|\\.)*)"', m.group(3) or "")))
        key = (name, labels)
        assert key not in out, f"duplicate series {key}"
        out[key] = float(m.group(4))
    assert text.endswith("\n")
    return out


def test_metrics_write_reports_backups_snapshots_pool_and_moves(host, hub_dsn, workdir):
    host.write_config(hub_dsn=hub_dsn)
    host.cli("hub", "migrate")
    for pid in (P1, P2):
        host.cli("project", "create", pid)
    host.cli("snapshot", "create", P1, "2026-01-01T00:00:00Z")
    host.cli("snapshot", "create", P1, "keep-me")
    host.cli("snapshot", "lock", P1, "keep-me")
    with sqlite3.connect(host.data / "host.sqlite") as db:
        db.executemany("INSERT INTO backup_jobs (project_id, state, started_at, finished_at, error) VALUES (?,?,?,?,?)", [
            (P1, "succeeded", "2026-01-01T00:00:00+00:00", "2026-01-01T00:10:00+00:00", None),
            (P1, "succeeded", "2026-01-02T00:00:00+00:00", "2026-01-02T00:05:00+00:00", None),
            (P1, "failed", "2026-01-03T00:00:00+00:00", "2026-01-03T00:01:00+00:00", "engine exited 1"),
            (P2, "running", "2026-01-03T00:00:00+00:00", None, None),
        ])
        db.execute("INSERT INTO move_log (project_id, role, step, status, at) VALUES (?,?,?,?,?)",
                   (P2, "send", "snapshot", "done", "2026-01-03T00:00:00+00:00"))
    import psycopg

    with psycopg.connect(hub_dsn, autocommit=True) as conn:
        conn.execute("INSERT INTO project_moves (project_id, state) VALUES (%s, 'queued'), (%s, 'failing')", (P1, P2))

    out = workdir / "textfile"
    out.mkdir()
    res = host.cli("metrics", "write", "--textfile-dir", str(out))
    assert res.stdout.startswith("wrote ") and str(out / "cocalc_ctl.prom") in res.stdout
    files = sorted(p.name for p in out.iterdir())
    assert files == ["cocalc_ctl.prom"], "no temp file may be left behind"
    prom = out / "cocalc_ctl.prom"
    assert stat.S_IMODE(prom.stat().st_mode) == 0o644  # node_exporter runs as another user
    m = parse(prom.read_text())
    ts = m[("cocalc_ctl_metrics_write_timestamp_seconds", ())]
    last = 1767312300.0  # 2026-01-02T00:05:00Z
    assert m[("cocalc_ctl_backup_last_success_timestamp_seconds", (("project_id", P1),))] == last
    assert m[("cocalc_ctl_backup_last_success_timestamp_seconds", (("project_id", P2),))] == 0
    assert abs(m[("cocalc_ctl_backup_age_seconds", (("project_id", P1),))] - (ts - last)) < 5
    assert ("cocalc_ctl_backup_age_seconds", (("project_id", P2),)) not in m  # never backed up: no age
    assert m[("cocalc_ctl_backup_last_job_failed", (("project_id", P1),))] == 1
    assert m[("cocalc_ctl_backup_last_job_failed", (("project_id", P2),))] == 0
    assert m[("cocalc_ctl_backup_jobs", (("state", "failed"),))] == 1
    assert m[("cocalc_ctl_backup_jobs", (("state", "succeeded"),))] == 2
    assert m[("cocalc_ctl_snapshots", (("project_id", P1),))] == 2
    assert m[("cocalc_ctl_snapshots_locked", (("project_id", P1),))] == 1
    assert m[("cocalc_ctl_snapshots", (("project_id", P2),))] == 0
    assert m[("cocalc_ctl_pool_mounted", ())] == 1
    assert 0 < m[("cocalc_ctl_pool_used_bytes", ())] < m[("cocalc_ctl_pool_size_bytes", ())] <= 1 << 30
    assert m[("cocalc_ctl_projects", (("state", "stopped"),))] == 2
    assert m[("cocalc_ctl_move_log_steps", (("role", "send"), ("status", "done")))] == 1
    assert m[("cocalc_ctl_hub_up", ())] == 1
    assert m[("cocalc_ctl_moves", (("state", "queued"),))] == 1
    assert m[("cocalc_ctl_moves", (("state", "failing"),))] == 1
    assert m[("cocalc_ctl_info", (("host_id", host.host_id), ("version", __import__("cocalc_ctl").__version__)))] == 1
    assert "hub.example" not in prom.read_text() and "host=" not in prom.read_text()  # no DSN in metrics


def test_metrics_survive_an_unmounted_pool_and_a_dead_hub(host, workdir):
    host.write_config(hub_dsn=f"host={workdir}/no-such-socket-dir dbname=x user=postgres")
    import subprocess

    subprocess.run(["umount", str(host.pool)], check=True)
    out = workdir / "textfile"
    out.mkdir()
    host.cli("metrics", "write", "--textfile-dir", str(out))
    m = parse((out / "cocalc_ctl.prom").read_text())
    assert m[("cocalc_ctl_pool_mounted", ())] == 0
    assert m[("cocalc_ctl_hub_up", ())] == 0
    assert m[("cocalc_ctl_host_db_up", ())] == 1


def test_metrics_write_creates_a_missing_directory_and_dry_run_says_so(host, workdir):
    missing = workdir / "missing" / "textfile"
    plan = host.cli("--dry-run", "metrics", "write", "--textfile-dir", str(missing))
    assert f"mkdir -p -m 0755 {missing}" in plan.stdout and not missing.exists()
    host.cli("metrics", "write", "--textfile-dir", str(missing))
    assert (missing / "cocalc_ctl.prom").is_file() and (missing.stat().st_mode & 0o777) == 0o755
    (workdir / "a-file").write_text("x")
    res = host.cli("metrics", "write", "--textfile-dir", str(workdir / "a-file"), check=False)
    assert res.returncode == 5 and "not a directory" in res.stderr
