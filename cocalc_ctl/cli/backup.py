"""`cocalc-ctl backup` (repository, create, list, status, prune, due, cleanup) and `cocalc-ctl restore`."""

from __future__ import annotations

from typing import Optional

import typer

from cocalc_ctl.cli.common import G, config, done, render

app = typer.Typer(help="Back projects up to a restic/rustic repository; list, prune, schedule.",
                  no_args_is_help=True)

PROJECT = typer.Argument(..., metavar="PROJECT", help="Project id: a lowercase UUID or project-<uuid>.")


@app.command("init")
def init() -> None:
    """Create the repository named by backup.repo if it does not exist (idempotent)."""
    from cocalc_ctl.actions.backup import repository

    result = repository.init(config())
    render(result, lambda r: done(f"{'created' if r.created else 'already exists:'} {r.engine} repository {r.repo}"))


class _ProgressView:
    """Engine progress -> a rich bar on a TTY (stderr), JSON lines with --json (at most 1/s), for backup
    and restore alike. IEC units (KiB, MiB) like every other size cocalc-ctl prints; the total is shown
    only once it is known: the scanner's growing count (`0/158 bytes` at the start) is not a total, so a
    total counts once two updates in a row agree on it, and it is never below the bytes done."""

    def __init__(self, label: str = "backup") -> None:
        import sys
        import time

        self._label = label
        self._time = time.monotonic
        self._last = 0.0
        self._bar = None
        self._task = None
        if not G.json and not G.quiet and sys.stderr.isatty():
            from rich.console import Console
            from rich.progress import BarColumn, Progress, ProgressColumn, TimeRemainingColumn
            from rich.text import Text

            from cocalc_ctl import output

            class Bytes(ProgressColumn):
                def render(self, task):
                    done = output.human_bytes(int(task.completed))
                    return Text(f"{done}/{output.human_bytes(int(task.total))}" if task.total else done)

            class Speed(ProgressColumn):
                def render(self, task):
                    return Text(f"{output.human_bytes(int(task.speed))}/s" if task.speed else "")

            self._bar = Progress(label, BarColumn(), Bytes(), Speed(), TimeRemainingColumn(), transient=True,
                                 console=Console(stderr=True))

    def __enter__(self):
        if self._bar:
            self._bar.start()
            self._task = self._bar.add_task(self._label, total=None)
        return self

    def __exit__(self, *exc):
        if self._bar:
            self._bar.stop()

    def known_total(self, p) -> int | None:
        total = p.bytes_total
        if not total or total != getattr(self, "_prev_total", None):
            self._prev_total = total
            return None
        return max(total, p.bytes_done or 0)

    def __call__(self, p) -> None:
        total = self.known_total(p)
        if self._bar is not None:
            self._bar.update(self._task, completed=p.bytes_done or 0, total=total)
        elif G.json:
            now = self._time()
            if now - self._last >= 1.0:
                self._last = now
                from cocalc_ctl import output

                output.json_line({"event": "progress", "operation": self._label,
                                  "percent": round(100.0 * (p.bytes_done or 0) / total, 1) if total else None,
                                  "bytes_done": p.bytes_done, "bytes_total": total, "files_done": p.files_done,
                                  "files_total": p.files_total if total else None})


@app.command("create")
def create(project: str = PROJECT,
           no_wait: bool = typer.Option(False, "--no-wait",
                                        help="Exit 4 at once when backup.max_concurrent backups are running.")) -> None:
    """Back up one project from a temporary read-only snapshot (persist store included).

    With --json, progress events are printed as JSON lines and the result as the last line.
    """
    from cocalc_ctl import output
    from cocalc_ctl.actions.backup import jobs

    with _ProgressView() as view:
        result = jobs.create(config(), project, wait=not no_wait, progress=view)
    if G.json and not G.dry_run:
        output.json_line({"event": "result", **output.to_jsonable(result)})
        return
    render(result, lambda r: done(
        f"backed up project {r.project_id}: backup {r.backup_id} ({output.human_bytes(r.bytes)}, "
        f"{_new_data(r.data_added, r.bytes)}, {r.duration:.1f}s, from {r.source})"))


def _new_data(added: int | None, total: int | None) -> str:
    """restic's data_added counts stored bytes (tree metadata, pack headers): never above the total shown."""
    if added is not None and total is not None and added >= total:
        return "all new"
    return f"{output_human(added)} new"


def output_human(n: int | None) -> str:
    from cocalc_ctl import output

    return output.human_bytes(n)


@app.command("list")
def list_(project: str = PROJECT) -> None:
    """Backups of a project in the repository (id, time, bytes, host)."""
    from cocalc_ctl import output
    from cocalc_ctl.actions.backup import repository

    result = repository.list_backups(config(), project)
    render(result, lambda rs: output.table(
        ["id", "time", "bytes", "host"],
        [(b.short_id, b.time[:19].replace("T", " "), output.human_bytes(b.bytes), b.host) for b in rs]))


@app.command("status")
def status(limit: int = typer.Option(20, "--limit", metavar="N", min=1, max=10000,
                                     help="How many recent jobs to show."),
           after: Optional[str] = typer.Option(None, "--after", metavar="KEY",
                                               help="Older jobs: the KEY of the previous page's `… more: --after "
                                                    "KEY` (JSON: next_after).")) -> None:
    """Recent backup jobs, and the last successful backup of each project with its age."""
    from cocalc_ctl import output, paging
    from cocalc_ctl.actions.backup import jobs

    result = jobs.status(config(), limit=limit, after=after)

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
        paging.more_line(None if getattr(r, "next_after", None) is None else str(r.next_after))

    render(result, human)


def _age(seconds: float | None) -> str | None:
    if seconds is None:
        return None
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds / size:.1f}{unit}"
    return f"{seconds:.0f}s"


def _keep(kind: str):
    text = ("Keep the N newest backups." if kind == "last"
            else f"Keep the newest backup of each of the last N {kind} periods.")
    return typer.Option(0, f"--keep-{kind}", metavar="N", min=0, help=text)


@app.command("prune")
def prune(project: str = PROJECT, keep_last: int = _keep("last"), keep_hourly: int = _keep("hourly"),
          keep_daily: int = _keep("daily"), keep_weekly: int = _keep("weekly"),
          keep_monthly: int = _keep("monthly"), keep_yearly: int = _keep("yearly")) -> None:
    """Forget the project's backups outside the retention policy and prune the repository.

    With --dry-run, shows which backups would go and changes nothing.
    """
    from cocalc_ctl.actions.backup import prune as backup_prune

    keep = {"last": keep_last, "hourly": keep_hourly, "daily": keep_daily, "weekly": keep_weekly,
            "monthly": keep_monthly, "yearly": keep_yearly}
    result = backup_prune.prune(config(), project, keep)

    def human(r):
        for k in r.kept:
            done(f"keep    {k[:8]}")
        for k in r.removed:
            done(f"{'would remove' if r.dry_run else 'removed'} {k[:8]}")

    if G.dry_run and not G.json:
        human(result)
    render(result, human)


@app.command("due")
def due() -> None:
    """For the timer: back up every project changed since its last successful backup, oldest first."""
    from cocalc_ctl import output
    from cocalc_ctl.actions.backup import jobs

    result = jobs.due(config())

    def human(r):
        for b in r.backed_up:
            done(f"{b.project_id}: backup {b.backup_id} ({output.human_bytes(b.bytes)}, {b.duration:.1f}s)")
        for s in r.skipped:
            done(f"{s['project_id']}: skipped ({s['reason']})")
        for f in r.failed:
            print(f"{f['project_id']}: FAILED {f['error']}")
        if not (r.backed_up or r.skipped or r.failed):
            done("nothing due")

    render(result, human)
    if result.failed:
        raise typer.Exit(1)


@app.command("cleanup")
def cleanup(project: Optional[str] = typer.Argument(None, metavar="[PROJECT]",
                                                    help="One project (default: every project with leftovers).")) -> None:
    """Finish or undo restores a crash interrupted (staging, set-aside trees, partial path restores)."""
    from cocalc_ctl.actions.backup import restore as restore_actions

    result = restore_actions.cleanup(config(), project)

    def human(rs):
        for r in rs:
            for a in r.actions or ["nothing to do"]:
                done(f"{r.project_id}: {a}")
        if not rs:
            done("nothing to clean up")

    render(result, human)


def restore(project: str = PROJECT,
            backup_id: str = typer.Argument(..., metavar="BACKUP_ID|latest", help="Backup id (or a prefix), or latest."),
            path: Optional[str] = typer.Option(None, "--path", metavar="P",
                                               help="Restore only this project-relative path into the live project."),
            to_project: Optional[str] = typer.Option(None, "--to-project", metavar="OTHER",
                                                     help="Restore into another project id (created if missing)."),
            force: bool = typer.Option(False, "--force", help="Restore even while the project is running.")) -> None:
    """Restore a project (or one --path of it) from a backup, crash-safely.

    With --json, progress events are printed as JSON lines and the result as the last line.

    A full restore goes through a staging subvolume and a rename swap. Works on any host: a
    project this host never had is created.
    """
    from cocalc_ctl import output
    from cocalc_ctl.actions.backup import progress
    from cocalc_ctl.actions.backup import restore as restore_actions

    with _ProgressView("restore") as view:
        token = progress.SINK.set(view)
        try:
            result = restore_actions.restore(config(), project, backup_id, path=path, to_project=to_project,
                                             force=force)
        finally:
            progress.SINK.reset(token)
    if G.json and not G.dry_run:  # like backup create: progress lines, then the result as the last line
        output.json_line({"event": "result", **output.to_jsonable(result)})
        return

    def human(r) -> None:
        done(f"restored {'path ' + r.path + ' of ' if r.path else ''}project {r.project_id} from backup "
             f"{r.backup_id[:8]}" + (f" of project {r.from_project}" if r.from_project != r.project_id else "")
             + (" (created)" if r.created_project else ""))
        if r.unshared_snapshots and r.shared_bytes:
            done(f"note: {output.human_bytes(r.shared_bytes)} of the restored files, unchanged since snapshot "
                 f"{r.shared_snapshot}, share disk space with it again; the rest shares none with the project's "
                 f"{r.unshared_snapshots} snapshot(s): the pool holds both copies until those snapshots are pruned")
        elif r.unshared_snapshots:
            done(f"note: the restored files share no disk space with the project's {r.unshared_snapshots} "
                 "snapshot(s): the pool holds both copies until those snapshots are pruned")

    render(result, human)
