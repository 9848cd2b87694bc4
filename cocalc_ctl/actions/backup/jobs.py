"""Backing projects up: create, status, due, and the job rows, locks and slots around them.
(The repository side — engine, init, list — is `repository`; `backup prune` is `prune`.)

`create` holds the project's backup lock (a second run exits 4) and one of `backup.max_concurrent`
host slots, records a job row (pending → running → succeeded | failed) that heartbeats while it
runs, takes a temporary snapshot `.snapshots/.backup-tmp/project` (inside a root-only directory, so
the project's own users cannot reach it while it is still writable), stages the persist store into it as
`.cocalc-ctl-persist/`, makes it read-only, and runs the engine from inside it so the stored paths
are project-relative. The temporary snapshot is removed whatever happens; one left by a killed run
is removed by the next backup command, which also marks that run's job failed (stale).
"""

from __future__ import annotations

import datetime as dt
import os
import sqlite3
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

from cocalc_ctl import errors, ids, layout, locks, output, proc, safepath
from cocalc_ctl.actions.backup.common import MANIFEST_IN_BACKUP, PERSIST_IN_BACKUP, is_subvolume, project_lock
from cocalc_ctl.actions.backup.repository import engine_for, repo_display
from cocalc_ctl.actions.host.pool import require_pool
from cocalc_ctl.config import Config
from cocalc_ctl.errors import Busy, CocalcError, CommandFailed, NotFound, OperationFailed
from cocalc_ctl.state import backup_jobs, host_db
from cocalc_ctl.tools import backup_engine, btrfs
from cocalc_ctl.tools.backup_engine import Engine

TEMP_DIR = ".backup-tmp"  # root-only (0700) directory holding the temporary snapshot
TEMP_SNAPSHOT = "project"  # fixed path: the engine finds the previous backup as its parent by path


# -- locks, slots, heartbeat --------------------------------------------------------------------

def temp_snapshot(cfg: Config, pid: str) -> Path:
    return layout.snapshots_dir(cfg, pid) / TEMP_DIR / TEMP_SNAPSHOT


def _drop_temp_snapshot(snap: Path, *, check: bool = True) -> proc.Result | None:
    """Delete the temporary snapshot and its root-only holder directory."""
    res = None
    if proc.DRY_RUN or snap.is_dir():
        res = proc.run(btrfs.subvolume_delete(str(snap)), check=check)
    if not proc.plan_only(f"rmdir {snap.parent}"):
        try:
            snap.parent.rmdir()
        except OSError:
            pass
    return res


@contextmanager
def host_slot(cfg: Config, *, wait: bool) -> Iterator[str]:
    """One of `backup.max_concurrent` slots; wait for a free one or raise Busy."""
    n = cfg["backup.max_concurrent"]
    names = [f"backup-slot-{i}" for i in range(n)]
    limit = cfg["backup.wait_timeout"]
    deadline = time.monotonic() + limit if limit else None
    while True:
        got = locks.try_hold_any(cfg.data_dir, names)
        if got:
            break
        if not wait or (deadline is not None and time.monotonic() >= deadline):
            raise Busy(f"{n} backup(s) already running on this host (backup.max_concurrent)",
                       hint="retry later, or run without --no-wait to queue")
        time.sleep(0.2)
    fd, name = got
    try:
        yield name
    finally:
        os.close(fd)


class Heartbeat:
    """Updates the job's heartbeat_at every `interval` seconds from a thread (own connection)."""

    def __init__(self, data_dir: Path, job_id: int, interval: float):
        self.data_dir, self.job_id, self.interval = data_dir, job_id, interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name=f"heartbeat-{job_id}")

    def __enter__(self) -> "Heartbeat":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def _run(self) -> None:
        conn = None
        try:
            while not self._stop.wait(self.interval):
                if conn is None:
                    conn = host_db.connect(self.data_dir)
                try:
                    backup_jobs.heartbeat(conn, self.job_id)
                except sqlite3.Error:
                    pass  # a busy database delays one beat; the next one catches up
        finally:
            if conn is not None:
                conn.close()


def _pid_alive(pid: int | None) -> bool:
    if not pid:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _age(iso: str | None) -> float | None:
    if not iso:
        return None
    return (dt.datetime.now(dt.timezone.utc) - dt.datetime.fromisoformat(iso)).total_seconds()


@dataclass
class StaleJob:
    job_id: int
    project_id: str
    reason: str
    removed_snapshot: str | None = None


def sweep_stale(cfg: Config, eng: Engine | None = None) -> list[StaleJob]:
    """Mark jobs whose process is gone (or whose heartbeat is too old) failed with reason `stale`,
    and remove the temporary snapshot they left behind."""
    if not host_db.db_path(cfg.data_dir).exists():
        return []
    out: list[StaleJob] = []
    with host_db.connect(cfg.data_dir) as conn:
        rows = backup_jobs.active(conn)
        for row in rows:
            pid = row["project_id"]
            if not ids.is_uuid(pid):
                continue
            alive = _pid_alive(row["pid"])
            age = _age(row["heartbeat_at"] or row["started_at"])
            if alive and (age is None or age <= cfg["backup.stale_after"]):
                continue  # (probing the lock here could make a starting run see it busy)
            # the project lock is held for a job's whole life: free means its process is gone
            held = locks.is_held(cfg.data_dir, project_lock(pid))
            why = "process gone" if not (held and alive) else f"no heartbeat for {age:.0f}s"
            if proc.plan_only(f"# mark backup job {row['id']} failed (stale: {why})"):
                continue
            if not backup_jobs.mark_stale(conn, row["id"], f"stale: {why}"):
                continue
            job = StaleJob(row["id"], pid, why)
            if not held:  # a hung run still holding the lock keeps its snapshot until it dies
                snap = temp_snapshot(cfg, pid)
                if snap.is_dir():
                    _drop_temp_snapshot(snap, check=False)
                    job.removed_snapshot = str(snap)
            out.append(job)
            output.warn(f"backup job {row['id']} of project {pid} marked failed (stale: {why})")
    if out and eng is None:
        # whichever command finds the dead run drops its lock: a later sweep no longer sees the job
        try:
            eng = engine_for(cfg)
        except CocalcError:
            eng = None  # no usable repository configured: there is no lock to drop
    if out and eng is not None and eng.unlock():
        proc.run(eng.unlock(), check=False, env=eng.env())  # drop the repository lock of the dead run
    return out


# -- create -------------------------------------------------------------------------------------

@dataclass
class BackupResult:
    project_id: str
    job_id: int | None
    backup_id: str | None
    bytes: int | None
    data_added: int | None
    duration: float
    source: str  # "snapshot" or "live"
    engine: str
    files_new: int | None = None
    files_changed: int | None = None
    files_unmodified: int | None = None
    persist_included: bool = False
    stale: list[StaleJob] = field(default_factory=list)


def _host_label(cfg: Config) -> str:
    from cocalc_ctl.actions.host.identity import host_id

    return host_id(cfg) or cfg.host_name


def _prepare_snapshot(cfg: Config, pid: str, live: Path, snap: Path) -> tuple[int | None, bool]:
    """Writable snapshot → persist store staged in → read-only. Returns (generation, persist?)."""
    holder = snap.parent
    if snap.is_dir():
        proc.run(btrfs.subvolume_delete(str(snap)))  # a leftover of a killed run
    if not proc.plan_only(f"mkdir -m 700 {holder}"):
        # .snapshots and everything in it are names the project controls: by dir fd, never by path
        # the holder sits in the project's own .snapshots (`live` may be a read-only snapshot of it)
        project, parts = layout.project_subvolume(cfg, pid), (layout.SNAPSHOTS, holder.name)
        if holder != project.joinpath(*parts):
            raise OperationFailed(f"internal: temporary snapshot holder {holder} is not in the project's .snapshots")
        try:
            with safepath.open_dir(project, parts):
                pass
        except FileNotFoundError:
            pass
        except safepath.UnsafePath:
            safepath.rmtree(project, parts)  # a link or file planted in its place: removed, not followed
        with safepath.open_dir(project, parts, create=True, mode=0o700) as hfd:
            if os.fstat(hfd).st_uid != os.geteuid():
                raise OperationFailed(f"{holder} is not owned by this user", hint=f"remove it: rm -rf {holder}")
            os.fchmod(hfd, 0o700)
    proc.run(btrfs.snapshot(str(live), str(snap), readonly=False))
    # The nested .snapshots subvolume shows as an empty directory in the snapshot: not backed up.
    stub = snap / layout.SNAPSHOTS
    if not proc.plan_only(f"rmdir {stub}"):
        try:
            stub.rmdir()
        except OSError:
            pass
    staged = snap / PERSIST_IN_BACKUP
    manifest = snap / MANIFEST_IN_BACKUP
    for reserved in (staged, manifest):
        if not proc.DRY_RUN:
            safepath.rmtree(snap, (reserved.name,))  # reserved names: ours win (a planted link is removed)
    persist = layout.persist_dir(cfg, pid)
    has_persist = persist.is_dir()
    if has_persist:
        proc.run(["cp", "-a", "--reflink=auto", f"{persist}/.", str(staged)])
    # also keeps an empty project's backup non-empty (the engine refuses an empty snapshot)
    if not proc.plan_only(f"# write {manifest}"):
        import json

        safepath.write_file(snap, (manifest.name,), (json.dumps({
            "project_id": pid, "host": _host_label(cfg), "persist": has_persist,
            "time": host_db.now_iso()}) + "\n").encode())
    proc.run(btrfs.property_set_readonly(str(snap), True))
    gen = None if proc.DRY_RUN else btrfs.show(str(snap)).gen_at_creation
    return gen, has_persist


def create(cfg: Config, project_id: str, *, wait: bool = True,
           progress: Callable[[backup_engine.Progress], None] | None = None,
           snapshot: Path | None = None, tags: list[str] | None = None) -> BackupResult:
    """Back up the project (or, with `snapshot`, that read-only snapshot of it, e.g. a move's final
    one); `tags` are added to the project and host tags."""
    from cocalc_ctl.actions.backup import restore

    pid = ids.project_id(project_id)
    require_pool(cfg)
    live = layout.project_subvolume(cfg, pid)
    eng = engine_for(cfg)
    stale = sweep_stale(cfg, eng)
    with locks.hold(cfg.data_dir, project_lock(pid), what=f"backup of project {pid}"):
        for line in restore.recover(cfg, pid):  # a restore killed mid-swap is finished first
            output.note(f"project {pid}: {line}")
        if not live.is_dir():
            raise NotFound(f"project {pid} does not exist on this host", hint="see `cocalc-ctl project list`")
        if snapshot is not None and not proc.DRY_RUN and not is_subvolume(snapshot):
            raise NotFound(f"snapshot {snapshot} of project {pid} does not exist")
        result = _create_locked(cfg, eng, pid, snapshot or live, wait=wait, progress=progress,
                                extra_tags=list(tags or []))
        result.stale = stale
        return result


def _create_locked(cfg: Config, eng: Engine, pid: str, live: Path, *, wait: bool,
                   progress: Callable[[backup_engine.Progress], None] | None,
                   extra_tags: list[str] | None = None) -> BackupResult:
    dry = proc.DRY_RUN
    job_id = None
    if not proc.plan_only(f"# record a pending backup job for project {pid}"):
        with host_db.connect(cfg.data_dir) as conn:
            job_id = backup_jobs.insert(conn, pid, repo_display(eng.repo), os.getpid())
    started = time.monotonic()
    beat = Heartbeat(cfg.data_dir, job_id, cfg["backup.heartbeat_interval"]) if job_id else None
    snap = temp_snapshot(cfg, pid)
    in_slot = False
    try:
        if beat:
            beat.__enter__()
        with host_slot(cfg, wait=wait):
            in_slot = True
            use_snapshot = dry or is_subvolume(live)
            made_snapshot = False
            try:
                if use_snapshot:
                    made_snapshot = True
                    gen, has_persist = _prepare_snapshot(cfg, pid, live, snap)
                    source = snap
                else:
                    output.warn(f"{live} is not a btrfs subvolume: backing up the live tree "
                                "(no point-in-time copy, persist store not included)")
                    gen, has_persist, source = None, False, live
                if job_id:
                    with host_db.connect(cfg.data_dir) as conn:
                        backup_jobs.set_running(conn, job_id, str(snap) if use_snapshot else None, gen)
                res, summary = _run_engine_backup(cfg, eng, pid, source, progress, extra_tags)
            finally:
                if made_snapshot:
                    gone = _drop_temp_snapshot(snap, check=False)
                    if gone is not None and gone.returncode != 0:
                        output.warn(f"could not delete the temporary snapshot {snap} (the next backup "
                                    f"of the project removes it): {gone.stderr.strip()[-200:]}")
        duration = time.monotonic() - started
        if dry:
            return BackupResult(pid, None, None, None, None, 0.0, "snapshot", eng.name)
        return _finish_job(cfg, eng, pid, job_id, res, summary, duration=duration,
                           source_kind="snapshot" if use_snapshot else "live", has_persist=has_persist)
    except BaseException as exc:
        _end_failed_job(cfg, job_id, exc, started=started, in_slot=in_slot)
        raise
    finally:
        if beat:
            beat.__exit__(None, None, None)


def _run_engine_backup(cfg: Config, eng: Engine, pid: str, source: Path,
                       progress: Callable[[backup_engine.Progress], None] | None,
                       extra_tags: list[str] | None) -> tuple[proc.Result, backup_engine.BackupSummary | None]:
    """The engine's backup of `source`, run from inside it so stored paths are project-relative:
    (its result, the summary it reported), with its progress passed on as it arrives."""
    summary: backup_engine.BackupSummary | None = None

    def on_line(line: str) -> None:
        nonlocal summary
        obj = backup_engine.parse_json_line(line)
        if obj is None:
            return
        if progress and (p := backup_engine.progress_of(obj)):
            progress(p)
        if s := backup_engine.summary_of(obj):
            summary = s

    host = _host_label(cfg)
    argv = eng.backup(host=host, tags=[f"project:{pid}", f"host:{host}", *(extra_tags or [])])
    proc.plan_only(f"cd {source}")
    try:
        res = proc.stream(argv, on_line, cwd=str(source), env=eng.env(), ok_codes=eng.ok_codes_backup,
                          timeout=eng.timeout)
    except CommandFailed as exc:
        raise backup_engine.classify(exc, repo_display(eng.repo)) from None
    return res, summary


def _finish_job(cfg: Config, eng: Engine, pid: str, job_id: int | None, res: proc.Result,
                summary: backup_engine.BackupSummary | None, *, duration: float, source_kind: str,
                has_persist: bool) -> BackupResult:
    """Record the engine's outcome in the job row (an incomplete backup is a failure) and tell the hub."""
    if summary is None or not summary.snapshot_id:
        raise OperationFailed(f"{eng.name} finished without reporting a snapshot id",
                              hint="run with -v and check the engine's output")
    result = BackupResult(pid, job_id, summary.snapshot_id, summary.bytes_processed, summary.data_added,
                          round(duration, 3), source_kind, eng.name,
                          summary.files_new, summary.files_changed, summary.files_unmodified, has_persist)
    if res.returncode == backup_engine.RESTIC_INCOMPLETE:
        with host_db.connect(cfg.data_dir) as conn:
            backup_jobs.finish(conn, job_id, ok=False, backup_id=summary.snapshot_id,
                               bytes_=summary.bytes_processed, duration=duration,
                               error="incomplete: some files could not be read")
        raise OperationFailed(f"backup {summary.snapshot_id} of project {pid} is incomplete: "
                              "some files could not be read", hint="rerun with -v to see which")
    with host_db.connect(cfg.data_dir) as conn:
        backup_jobs.finish(conn, job_id, ok=True, backup_id=summary.snapshot_id,
                           bytes_=summary.bytes_processed, duration=duration)
    _report_to_hub(cfg, pid)
    return result


def _end_failed_job(cfg: Config, job_id: int | None, exc: BaseException, *, started: float, in_slot: bool) -> None:
    """A backup that ended in `exc`: refused before it got a slot (Busy) leaves no job; else it failed."""
    if job_id and not in_slot and isinstance(exc, Busy):
        with host_db.connect(cfg.data_dir) as conn:  # refused before it started: not a failed backup
            backup_jobs.delete(conn, job_id)
    elif job_id:
        reason = errors.describe(exc)
        with host_db.connect(cfg.data_dir) as conn:
            backup_jobs.finish(conn, job_id, ok=False, duration=time.monotonic() - started, error=reason[:500])


def _report_to_hub(cfg: Config, pid: str) -> None:
    """Set the hub's `projects.last_backup` when a hub is configured; the backup stands either way."""
    if not cfg["hub_dsn"]:
        return
    from cocalc_ctl.state import hub_db

    try:
        with hub_db.connect(cfg["hub_dsn"]) as conn:
            conn.execute("UPDATE projects SET last_backup = now() WHERE project_id = %s", (pid,))
    except Exception as exc:  # psycopg errors included: a hub problem must not fail a good backup
        reason = exc.one_line() if isinstance(exc, CocalcError) else " ".join(str(exc).split())[:200]
        output.warn(f"backup of {pid} succeeded but the hub's last_backup was not updated: {reason}")


# -- status ---------------------------------------------------------------------------------------

@dataclass
class JobInfo:
    id: int
    project_id: str
    state: str
    backup_id: str | None
    bytes: int | None
    started_at: str | None
    finished_at: str | None
    duration: float | None
    error: str | None
    resolved_by: int | None = None  # a failed job: the later job of its project that succeeded


@dataclass
class ProjectBackupState:
    project_id: str
    last_success: str | None
    age_seconds: float | None
    backup_id: str | None
    failing: str | None = None  # the project's newest job failed: its error (cleared by a success)


@dataclass
class StatusResult:
    jobs: list[JobInfo]
    projects: list[ProjectBackupState]
    stale: list[StaleJob] = field(default_factory=list)
    next_after: int | None = None  # more (older) jobs exist: `backup status --after` this job id


def _job(r: sqlite3.Row) -> JobInfo:
    return JobInfo(r["id"], r["project_id"], r["state"], r["backup_id"], r["bytes"], r["started_at"],
                   r["finished_at"], r["duration"], r["error"])


def status(cfg: Config, *, limit: int = 20, after: str | None = None) -> StatusResult:
    from cocalc_ctl import paging

    paging.check_limit(limit)
    before = paging.job_key(after) if after is not None else None
    stale = sweep_stale(cfg)
    with host_db.connect(cfg.data_dir) as conn:
        jobs = [_job(r) for r in backup_jobs.recent(conn, limit + 1, before=before)]
        more = paging.page(jobs, limit, lambda j: j.id)
        jobs = list(more)
        last = backup_jobs.last_success(conn)
        newest = backup_jobs.newest_finished(conn)
    # A failure is history once a later backup of the project succeeded (e.g. one that failed
    # before `backup init`): say so, and judge each project by its newest job only.
    for j in jobs:
        if j.state == "failed" and (ok := last.get(j.project_id)) is not None and ok["id"] > j.id:
            j.resolved_by = ok["id"]
    on_host = set()
    if cfg.btrfs_root.is_dir():
        on_host = {e.name[len("project-"):] for e in os.scandir(cfg.btrfs_root)
                   if e.name.startswith("project-") and ids.is_uuid(e.name[len("project-"):])}
    projects = []
    for pid in sorted(on_host | set(last) | set(newest)):
        r = last.get(pid)
        age = _age(r["finished_at"]) if r else None
        n = newest.get(pid)
        failing = (n["error"] or "failed") if n is not None and n["state"] == "failed" else None
        projects.append(ProjectBackupState(pid, r["finished_at"] if r else None,
                                           round(age) if age is not None else None, r["backup_id"] if r else None,
                                           failing))
    return StatusResult(jobs, projects, stale, more.next_after)


# -- due ----------------------------------------------------------------------------------------

@dataclass
class DueResult:
    backed_up: list[BackupResult] = field(default_factory=list)
    skipped: list[dict] = field(default_factory=list)
    failed: list[dict] = field(default_factory=list)
    pruned: dict[str, int] = field(default_factory=dict)  # old host records deleted (retention.host_records_days)


def due_projects(cfg: Config) -> list[tuple[str, str]]:
    """(project, reason) of every project changed since its last successful backup, oldest first."""
    require_pool(cfg)
    with host_db.connect(cfg.data_dir) as conn:
        last = backup_jobs.last_success(conn)
    # a subvolume's generation advances when its transaction commits: commit pending writes first
    proc.run(["btrfs", "filesystem", "sync", str(cfg.btrfs_root)], mutates=False)
    out = []
    for e in os.scandir(cfg.btrfs_root):
        if not (e.name.startswith("project-") and ids.is_uuid(e.name[len("project-"):])):
            continue
        pid = e.name[len("project-"):]
        r = last.get(pid)
        if r is None:
            out.append(("", pid, "never backed up"))
            continue
        path = Path(e.path)
        if not is_subvolume(path) or r["generation"] is None:
            out.append((r["finished_at"], pid, "not a subvolume: always due"))
            continue
        gen = btrfs.show(str(path)).generation
        if gen > r["generation"]:
            out.append((r["finished_at"], pid, f"generation {gen} > {r['generation']}"))
    out.sort()
    return [(pid, why) for _, pid, why in out]


def due(cfg: Config) -> DueResult:
    """The timer's entry point: back up changed projects, oldest first, at most max_concurrent at once."""
    from concurrent.futures import ThreadPoolExecutor

    engine_for(cfg)
    sweep_stale(cfg)
    result = DueResult()
    with locks.hold(cfg.data_dir, "backup-due", what="backup due"):
        todo = due_projects(cfg)
        if proc.DRY_RUN:
            for pid, why in todo:
                proc.record_plan(f"cocalc-ctl backup create {pid}  # {why}")
            return result

        def one(item: tuple[str, str]):
            pid, why = item
            try:
                return pid, why, create(cfg, pid, wait=True), None
            except Exception as exc:  # a full disk fails this project's backup, not the whole run
                mapped = errors.from_exception(exc)
                if mapped is None:
                    raise
                return pid, why, None, mapped

        with ThreadPoolExecutor(max_workers=cfg["backup.max_concurrent"]) as pool:
            for pid, why, res, exc in pool.map(one, todo):
                if res is not None:
                    result.backed_up.append(res)
                elif isinstance(exc, Busy):
                    result.skipped.append({"project_id": pid, "reason": exc.one_line()})
                else:
                    result.failed.append({"project_id": pid, "reason": why, "error": exc.one_line()})
    from cocalc_ctl.actions.ops import host_records

    result.pruned = host_records.prune(cfg)
    return result
