"""`cocalc-ctl backup` (repository, create, list, status, prune, due, cleanup) and `cocalc-ctl restore`."""

from __future__ import annotations

from typing import Optional

import typer

from cocalc_ctl.cli.common import G, config, render

app = typer.Typer(help="Back projects up to a restic/rustic repository; list, prune, schedule.",
                  no_args_is_help=True)

PROJECT = typer.Argument(..., metavar="PROJECT", help="Project id (lowercase UUID).")


@app.command("init")
def init() -> None:
    """Create the repository named by backup.repo if it does not exist (idempotent)."""
    from cocalc_ctl.actions import backup_repo

    result = backup_repo.init(config())
    render(result, lambda r: print(f"{'created' if r.created else 'already exists:'} {r.engine} repository {r.repo}"))


class _ProgressView:
    """Engine status → a rich bar on a TTY (stderr), JSON lines with --json (at most 1/s)."""

    def __init__(self) -> None:
        import sys
        import time

        self._time = time.monotonic
        self._last = 0.0
        self._bar = None
        self._task = None
        if not G.json and not G.quiet and sys.stderr.isatty():
            from rich.progress import BarColumn, DownloadColumn, Progress, TimeRemainingColumn, TransferSpeedColumn

            self._bar = Progress("backup", BarColumn(), DownloadColumn(), TransferSpeedColumn(),
                                 TimeRemainingColumn(), transient=True)

    def __enter__(self):
        if self._bar:
            self._bar.start()
            self._task = self._bar.add_task("backup", total=None)
        return self

    def __exit__(self, *exc):
        if self._bar:
            self._bar.stop()

    def __call__(self, p) -> None:
        if self._bar is not None:
            self._bar.update(self._task, completed=p.bytes_done or 0, total=p.bytes_total or None)
        elif G.json:
            now = self._time()
            if now - self._last >= 1.0:
                self._last = now
                from cocalc_ctl import output

                output.json_line({"event": "progress", "percent": p.percent, "bytes_done": p.bytes_done,
                                  "bytes_total": p.bytes_total, "files_done": p.files_done,
                                  "files_total": p.files_total})


@app.command("create")
def create(project: str = PROJECT,
           no_wait: bool = typer.Option(False, "--no-wait",
                                        help="Exit 4 at once when backup.max_concurrent backups are running.")) -> None:
    """Back up one project from a temporary read-only snapshot (persist store included).

    With --json, progress events are printed as JSON lines and the result as the last line.
    """
    from cocalc_ctl import output
    from cocalc_ctl.actions import backups

    with _ProgressView() as view:
        result = backups.create(config(), project, wait=not no_wait, progress=view)
    if G.json and not G.dry_run:
        output.json_line({"event": "result", **output.to_jsonable(result)})
        return
    render(result, lambda r: print(
        f"backed up project {r.project_id}: backup {r.backup_id} ({output.human_bytes(r.bytes)}, "
        f"{output.human_bytes(r.data_added)} new, {r.duration:.1f}s, from {r.source})"))


@app.command("list")
def list_(project: str = PROJECT) -> None:
    """Backups of a project in the repository (id, time, bytes, host)."""
    from cocalc_ctl import output
    from cocalc_ctl.actions import backup_repo

    result = backup_repo.list_backups(config(), project)
    render(result, lambda rs: output.table(
        ["id", "time", "bytes", "host"],
        [(b.short_id, b.time[:19].replace("T", " "), output.human_bytes(b.bytes), b.host) for b in rs]))


@app.command("status")
def status(limit: int = typer.Option(20, "--limit", min=1, help="How many recent jobs to show.")) -> None:
    """Recent backup jobs, and the last successful backup of each project with its age."""
    from cocalc_ctl import output
    from cocalc_ctl.actions import backups

    result = backups.status(config(), limit=limit)

    def human(r):
        output.table(["job", "project", "state", "backup", "bytes", "started", "seconds", "error"],
                     [(j.id, j.project_id, j.state, (j.backup_id or "")[:8] or None, output.human_bytes(j.bytes),
                       j.started_at, f"{j.duration:.1f}" if j.duration is not None else None,
                       f"resolved by job {j.resolved_by}: {j.error}" if j.resolved_by and j.error else j.error)
                      for j in r.jobs], title="jobs")
        print()
        output.table(["project", "last success", "age", "backup", "failing"],
                     [(p.project_id, p.last_success or "never", _age(p.age_seconds), (p.backup_id or "")[:8] or None,
                       p.failing) for p in r.projects], title="projects")

    render(result, human)


def _age(seconds: float | None) -> str | None:
    if seconds is None:
        return None
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds / size:.1f}{unit}"
    return f"{seconds:.0f}s"


def _keep(kind: str):
    return typer.Option(0, f"--keep-{kind}", metavar="N", min=0, help=f"Keep the newest backup of the last N {kind} periods.")


@app.command("prune")
def prune(project: str = PROJECT, keep_last: int = _keep("last"), keep_hourly: int = _keep("hourly"),
          keep_daily: int = _keep("daily"), keep_weekly: int = _keep("weekly"),
          keep_monthly: int = _keep("monthly"), keep_yearly: int = _keep("yearly")) -> None:
    """Forget the project's backups outside the retention policy and prune the repository.

    With --dry-run, shows which backups would go and changes nothing.
    """
    from cocalc_ctl.actions import backup_repo

    keep = {"last": keep_last, "hourly": keep_hourly, "daily": keep_daily, "weekly": keep_weekly,
            "monthly": keep_monthly, "yearly": keep_yearly}
    result = backup_repo.prune(config(), project, keep)

    def human(r):
        for k in r.kept:
            print(f"keep    {k[:8]}")
        for k in r.removed:
            print(f"{'would remove' if r.dry_run else 'removed'} {k[:8]}")

    if G.dry_run and not G.json:
        human(result)
    render(result, human)


@app.command("due")
def due() -> None:
    """For the timer: back up every project changed since its last successful backup, oldest first."""
    from cocalc_ctl import output
    from cocalc_ctl.actions import backups

    result = backups.due(config())

    def human(r):
        for b in r.backed_up:
            print(f"{b.project_id}: backup {b.backup_id} ({output.human_bytes(b.bytes)}, {b.duration:.1f}s)")
        for s in r.skipped:
            print(f"{s['project_id']}: skipped ({s['reason']})")
        for f in r.failed:
            print(f"{f['project_id']}: FAILED {f['error']}")
        if not (r.backed_up or r.skipped or r.failed):
            print("nothing due")

    render(result, human)
    if result.failed:
        raise typer.Exit(1)


@app.command("cleanup")
def cleanup(project: Optional[str] = typer.Argument(None, metavar="[PROJECT]",
                                                    help="One project (default: every project with leftovers).")) -> None:
    """Finish or undo restores a crash interrupted (staging, set-aside trees, partial path restores)."""
    from cocalc_ctl.actions import restore as restore_actions

    result = restore_actions.cleanup(config(), project)

    def human(rs):
        for r in rs:
            for a in r.actions or ["nothing to do"]:
                print(f"{r.project_id}: {a}")
        if not rs:
            print("nothing to clean up")

    render(result, human)


def restore(project: str = PROJECT,
            backup_id: str = typer.Argument(..., metavar="BACKUP_ID|latest", help="Backup id (or a prefix), or latest."),
            path: Optional[str] = typer.Option(None, "--path", metavar="P",
                                               help="Restore only this project-relative path into the live project."),
            to_project: Optional[str] = typer.Option(None, "--to-project", metavar="OTHER",
                                                     help="Restore into another project id (created if missing)."),
            force: bool = typer.Option(False, "--force", help="Restore even while the project is running.")) -> None:
    """Restore a project (or one --path of it) from a backup, crash-safely.

    A full restore goes through a staging subvolume and a rename swap. Works on any host: a
    project this host never had is created.
    """
    from cocalc_ctl import output
    from cocalc_ctl.actions import restore as restore_actions

    result = restore_actions.restore(config(), project, backup_id, path=path, to_project=to_project, force=force)

    def human(r) -> None:
        print(f"restored {'path ' + r.path + ' of ' if r.path else ''}project {r.project_id} from backup "
              f"{r.backup_id[:8]}" + (f" of project {r.from_project}" if r.from_project != r.project_id else "")
              + (" (created)" if r.created_project else ""))
        if r.unshared_snapshots and r.shared_bytes:
            print(f"note: {output.human_bytes(r.shared_bytes)} of the restored files, unchanged since snapshot "
                  f"{r.shared_snapshot}, share disk space with it again; the rest shares none with the project's "
                  f"{r.unshared_snapshots} snapshot(s): the pool holds both copies until those snapshots are pruned")
        elif r.unshared_snapshots:
            print(f"note: the restored files share no disk space with the project's {r.unshared_snapshots} "
                  "snapshot(s): the pool holds both copies until those snapshots are pruned")

    render(result, human)
