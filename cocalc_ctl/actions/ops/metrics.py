"""Prometheus textfile-collector metrics for node_exporter.

`write` renders every sample into `<textfile_dir>/cocalc_ctl.prom` through a temp file in the same
directory and a rename, so the collector never reads a half-written file. Sources: host sqlite
(backup_jobs, move_log, projects), the pool (statvfs, snapshot directories) and, when hub_dsn is
set and reachable, the hub's project_moves. A source that is unavailable is reported by its `_up`
gauge instead of failing the run: the timers call this after every job.
"""

from __future__ import annotations

import datetime as dt
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

from cocalc_ctl import __version__, proc, safepath
from cocalc_ctl.config import Config
from cocalc_ctl.errors import PreconditionFailed

FILE_NAME = "cocalc_ctl.prom"


@dataclass
class Family:
    name: str
    kind: str  # gauge | counter
    help: str
    samples: list[tuple[dict[str, str], float]] = field(default_factory=list)

    def add(self, value: float, **labels: str) -> None:
        self.samples.append((labels, value))


@dataclass
class WriteResult:
    path: str
    samples: int
    families: int


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _fmt(v: float) -> str:
    if isinstance(v, bool):
        return "1" if v else "0"
    if float(v).is_integer():
        return str(int(v))
    return repr(float(v))


def render(families: list[Family]) -> str:
    lines = []
    for f in families:
        lines.append(f"# HELP {f.name} {f.help}")
        lines.append(f"# TYPE {f.name} {f.kind}")
        for labels, value in f.samples:
            lab = ",".join(f'{k}="{_escape(str(v))}"' for k, v in sorted(labels.items()))
            lines.append(f"{f.name}{{{lab}}} {_fmt(value)}" if lab else f"{f.name} {_fmt(value)}")
    return "\n".join(lines) + "\n"


def _epoch(text: str | None) -> float | None:
    if not text:
        return None
    try:
        t = dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None
    if t.tzinfo is None:
        t = t.replace(tzinfo=dt.timezone.utc)
    return t.timestamp()


def _host_db_families(cfg: Config, now: float, fam: dict[str, Family]) -> None:
    from cocalc_ctl.state import host_db

    path = host_db.db_path(cfg.data_dir)
    if not path.exists():
        fam["host_db_up"].add(0)
        return
    import sqlite3

    try:
        conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=10)
    except sqlite3.Error:
        fam["host_db_up"].add(0)
        return
    try:
        conn.row_factory = sqlite3.Row
        fam["host_db_up"].add(1)
        for row in conn.execute("SELECT state, count(*) AS n FROM projects GROUP BY state ORDER BY state"):
            fam["projects"].add(row["n"], state=row["state"])
        counts = {r[0]: r[1] for r in conn.execute("SELECT state, count(*) FROM backup_jobs GROUP BY state")}
        for state in ("pending", "running", "succeeded", "failed"):
            fam["backup_jobs"].add(counts.get(state, 0), state=state)
        last_ok = {r[0]: r[1] for r in conn.execute(
            "SELECT project_id, max(finished_at) FROM backup_jobs WHERE state='succeeded' GROUP BY project_id")}
        latest = {r["project_id"]: r["state"] for r in conn.execute(
            "SELECT project_id, state FROM backup_jobs WHERE id IN "
            "(SELECT max(id) FROM backup_jobs GROUP BY project_id)")}
        projects = [r[0] for r in conn.execute("SELECT project_id FROM projects ORDER BY project_id")]
        for pid in sorted(set(projects) | set(last_ok) | set(latest)):
            ts = _epoch(last_ok.get(pid))
            fam["backup_last_success"].add(ts or 0, project_id=pid)
            if ts:
                fam["backup_age"].add(round(now - ts, 3), project_id=pid)
            fam["backup_last_failed"].add(1 if latest.get(pid) == "failed" else 0, project_id=pid)
        for row in conn.execute("SELECT role, status, count(*) AS n FROM move_log GROUP BY role, status "
                                "ORDER BY role, status"):
            fam["move_log"].add(row["n"], role=row["role"], status=row["status"])
    except sqlite3.Error:
        pass  # an older/foreign schema: report what was read
    finally:
        conn.close()


def _pool_families(cfg: Config, fam: dict[str, Family]) -> None:
    from cocalc_ctl.actions.project.subvolume import snapshot_names
    from cocalc_ctl.ids import PROJECT_PREFIX, is_uuid
    from cocalc_ctl.tools import mounts

    root = str(cfg.btrfs_root)
    m = mounts.mount_at(root)
    mounted = m is not None and m.fstype == "btrfs"
    fam["pool_mounted"].add(1 if mounted else 0)
    if not mounted:
        return
    st = os.statvfs(root)
    fam["pool_size"].add(st.f_blocks * st.f_frsize)
    fam["pool_free"].add(st.f_bavail * st.f_frsize)
    fam["pool_used"].add((st.f_blocks - st.f_bfree) * st.f_frsize)
    for e in sorted(os.scandir(root), key=lambda e: e.name):
        if e.name.startswith(PROJECT_PREFIX) and is_uuid(e.name[len(PROJECT_PREFIX):]):
            pid = e.name[len(PROJECT_PREFIX):]
            names, locked = snapshot_names(cfg, pid)
            fam["snapshots"].add(len(names), project_id=pid)
            fam["snapshots_locked"].add(len(locked), project_id=pid)


def _hub_families(cfg: Config, fam: dict[str, Family]) -> None:
    if not cfg["hub_dsn"]:
        return
    from cocalc_ctl.state import hub_db

    try:
        with hub_db.connect(cfg["hub_dsn"]) as conn:
            rows = conn.execute("SELECT state, count(*) FROM project_moves GROUP BY state ORDER BY state").fetchall()
    except Exception:
        fam["hub_up"].add(0)
        return
    fam["hub_up"].add(1)
    for state, n in rows:
        fam["moves"].add(n, state=state)


def collect(cfg: Config, *, now: float | None = None) -> list[Family]:
    start = time.monotonic()
    now = time.time() if now is None else now
    defs = [
        ("info", "gauge", "cocalc-ctl version and host id (always 1)"),
        ("host_db_up", "gauge", "1 if the host sqlite database could be read"),
        ("projects", "gauge", "projects in host sqlite by state"),
        ("backup_jobs", "gauge", "backup job rows in host sqlite by state"),
        ("backup_last_success_timestamp_seconds", "gauge", "finish time of the newest successful backup (0 = never)"),
        ("backup_age_seconds", "gauge", "seconds since the newest successful backup, at write time"),
        ("backup_last_job_failed", "gauge", "1 if the project's most recent backup job failed"),
        ("snapshots", "gauge", "read-only snapshots per project"),
        ("snapshots_locked", "gauge", "locked snapshots per project"),
        ("pool_mounted", "gauge", "1 if the btrfs pool is mounted at btrfs_root"),
        ("pool_size_bytes", "gauge", "btrfs pool size"),
        ("pool_used_bytes", "gauge", "btrfs pool bytes used"),
        ("pool_free_bytes", "gauge", "btrfs pool bytes available"),
        ("move_log_steps", "gauge", "host-side move steps in move_log by role and status"),
        ("hub_up", "gauge", "1 if the hub database answered"),
        ("moves", "gauge", "hub project_moves rows by state"),
        ("metrics_write_timestamp_seconds", "gauge", "when these metrics were collected"),
        ("metrics_collect_duration_seconds", "gauge", "how long collecting took"),
    ]
    families = [Family(f"cocalc_ctl_{n}", k, h) for n, k, h in defs]
    by = {f.name[len("cocalc_ctl_"):]: f for f in families}
    fam = {
        "host_db_up": by["host_db_up"], "projects": by["projects"], "backup_jobs": by["backup_jobs"],
        "backup_last_success": by["backup_last_success_timestamp_seconds"], "backup_age": by["backup_age_seconds"],
        "backup_last_failed": by["backup_last_job_failed"], "snapshots": by["snapshots"],
        "snapshots_locked": by["snapshots_locked"], "pool_mounted": by["pool_mounted"],
        "pool_size": by["pool_size_bytes"], "pool_used": by["pool_used_bytes"], "pool_free": by["pool_free_bytes"],
        "move_log": by["move_log_steps"], "hub_up": by["hub_up"], "moves": by["moves"],
    }
    from cocalc_ctl.actions.host.identity import host_id

    by["info"].add(1, version=__version__, host_id=host_id(cfg) or "")
    _host_db_families(cfg, now, fam)
    _pool_families(cfg, fam)
    _hub_families(cfg, fam)
    by["metrics_write_timestamp_seconds"].add(round(now, 3))
    by["metrics_collect_duration_seconds"].add(round(time.monotonic() - start, 4))
    return [f for f in families if f.samples]


def write(cfg: Config, *, textfile_dir: str | None = None) -> WriteResult:
    d = Path(textfile_dir or cfg["metrics.textfile_dir"])
    if os.path.lexists(d) and not d.is_dir():
        raise PreconditionFailed(f"textfile directory {d} is not a directory", hint="pass another --textfile-dir")
    if not d.is_dir() and not proc.plan_only(proc.display(["mkdir", "-p", "-m", "0755", str(d)])):
        # node_exporter may be installed later: the file waits there for its collector
        d.mkdir(mode=0o755, parents=True)
    families = collect(cfg)
    text = render(families)
    target = d / FILE_NAME
    if proc.plan_only(f"install -m 0644 /dev/stdin {target}  # {len(text)} bytes of metrics"):
        return WriteResult(str(target), sum(len(f.samples) for f in families), len(families))
    safepath.write_atomic(target, text, mode=0o644)
    return WriteResult(str(target), sum(len(f.samples) for f in families), len(families))
