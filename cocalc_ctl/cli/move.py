"""`cocalc-ctl move`: move a project between hosts (host-side steps and the hub's queue)."""

from __future__ import annotations

import os
from typing import Optional

import typer

from cocalc_ctl.cli.common import G, config, done, render

app = typer.Typer(help="Move projects between hosts: send/recv/finalize/cleanup on hosts; "
                       "start/status/cancel/worker on the hub.", no_args_is_help=True)

PROJECT = typer.Argument(..., metavar="PROJECT", help="Project id: a lowercase UUID or project-<uuid>.")
TICKET = typer.Option(None, "--ticket", metavar="TICKET",
                      help="The hub's signed move ticket for this step (required over ssh; a root operator "
                           "here needs none).")


class _Progress:
    """JSON lines with --json, a rich transfer bar on a TTY, one plain line per snapshot otherwise."""

    def __init__(self):
        from cocalc_ctl import output

        self.output = output
        self.bar = None
        self.task = None
        if not G.json and not G.quiet and output.is_tty():
            from rich.progress import (BarColumn, DownloadColumn, Progress, TextColumn, TimeElapsedColumn,
                                       TransferSpeedColumn)

            self.bar = Progress(TextColumn("{task.description}"), BarColumn(), DownloadColumn(),
                                TransferSpeedColumn(), TimeElapsedColumn())
            self.bar.start()

    def __call__(self, ev: dict) -> None:
        if G.json:
            self.output.json_line(ev)
            return
        if self.bar is not None:
            if ev["event"] in ("progress", "sent"):
                if self.task is None or self.bar.tasks[self.task].description != ev["snapshot"]:
                    self.task = self.bar.add_task(ev["snapshot"], total=None)
                done = ev["event"] == "sent"
                self.bar.update(self.task, completed=ev["bytes"], total=ev["bytes"] if done else None)
            return
        if ev["event"] in ("sent", "staged") and not G.quiet:
            how = f"incremental from {ev['parent']}" if ev.get("parent") else "full"
            verb = "staged" if ev["event"] == "staged" else "sent"
            print(f"{verb} {ev['snapshot']} ({how}): {self.output.human_bytes(ev['bytes'])}", flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.stop()


@app.command("send")
def send(project: str = PROJECT,
         to: Optional[str] = typer.Option(None, "--to", metavar="btrfs-<SRC>@HOST:PORT",
                                          help="The destination's move receiver (btrfs-<this-host-uuid>@HOST:PORT); "
                                               "pipe and staged modes."),
         mode: Optional[str] = typer.Option(None, "--mode", metavar="pipe|staged|backup",
                                            help="pipe: stream; staged: files + rsync --partial; backup: `backup "
                                                 "create` into backup.repo, no peer (default move.mode)."),
         compress: Optional[str] = typer.Option(None, "--compress", metavar="none|lz4|zstd",
                                                help="Compress the streams (default move.compress)."),
         bwlimit: Optional[str] = typer.Option(None, "--bwlimit", metavar="RATE", help="Bytes/s, e.g. 50M."),
         snapshot: Optional[str] = typer.Option(None, "--snapshot", metavar="NAME",
                                                help="Name of the final snapshot (default move-<UTC time>; "
                                                     "reused when it exists, so a rerun resumes)."),
         ticket: Optional[str] = TICKET) -> None:
    """Stop the project, snapshot it, send every snapshot (incrementally) to the destination.

    The destination accepts the streams only with a hub ticket (--ticket), which this host passes on.

    With --mode backup: stop, take the final snapshot, back it up to the repository (backup.repo)
    and print the backup id for `move finalize PROJECT --from-backup ID` on the destination; a
    rerun with the same --snapshot reuses that backup. The project's snapshots are not carried.
    """
    from cocalc_ctl import output
    from cocalc_ctl.actions.move import send as send_action

    progress = _Progress()
    try:
        result = send_action.send(config(), project, to, mode=mode, codec=compress, bwlimit=bwlimit,
                                  snapshot=snapshot, progress=progress, ticket=ticket)
    finally:
        progress.close()
    if G.json:
        output.json_line({"event": "result", **output.to_jsonable(result)})
        return

    def human(r):
        if r.mode == "backup":
            how = "reused" if r.reused else f"{output.human_bytes(r.bytes_total)} in {r.seconds:.1f}s"
            done(f"backed up {r.project_id} for a move: backup {r.backup_id} ({how}); final snapshot "
                  f"{r.move_snapshot}\non the destination: cocalc-ctl move finalize {r.project_id} "
                  f"--from-backup {r.backup_id}")
            return
        sent = [s for s in r.snapshots if not s.skipped]
        done(f"moved {r.project_id} to {r.destination}: {len(sent)} streams, {output.human_bytes(r.bytes_total)} "
              f"in {r.seconds:.1f}s ({r.mode}, {r.compress}); final snapshot {r.move_snapshot}")

    render(result, human)


@app.command("recv")
def recv(from_: str = typer.Option(..., "--from", metavar="HOST_UUID",
                                   help="The source host whose key runs this forced command.")) -> None:
    """The destination's forced command: runs the request in SSH_ORIGINAL_COMMAND (own small grammar)."""
    from cocalc_ctl.actions.move import recv as recv_action

    code = recv_action.serve(config(), from_, os.environ.get("SSH_ORIGINAL_COMMAND"))
    raise typer.Exit(code)


@app.command("host-step")
def host_step() -> None:
    """The forced command for the hub's worker (ssh transport): runs one step from SSH_ORIGINAL_COMMAND."""
    import sys

    from cocalc_ctl.actions.move import host_step as step
    from cocalc_ctl.cli import common
    from cocalc_ctl.errors import CocalcError

    try:
        argv = step.parse(os.environ.get("SSH_ORIGINAL_COMMAND"))
    except CocalcError as exc:
        print(f"cocalc-ctl: error: {exc.one_line()}", file=sys.stderr, flush=True)
        raise typer.Exit(exc.exit_code) from None
    args = ["--json", *argv]
    if G.config_path:
        args = ["--config", G.config_path, *args]
    raise typer.Exit(common.run_command_line(args))


@app.command("finalize")
def finalize(project: str = PROJECT,
             from_backup: Optional[str] = typer.Option(None, "--from-backup", metavar="BACKUP_ID",
                                                       help="Backup mode: restore this backup (from backup.repo) "
                                                            "instead of received snapshots."),
             quota: Optional[str] = typer.Option(None, "--quota", metavar="SIZE",
                                                 help="qgroup limit for the project (the worker passes the "
                                                      "source's); default project.quota."),
             ticket: Optional[str] = TICKET) -> None:
    """Make the received snapshots the project here (idempotent; refuses an existing project).

    With --from-backup: a full, crash-safe restore of that backup (made by `move send --mode backup`
    on the source); a rerun after a crash resumes.
    """
    from cocalc_ctl.actions.move import finalize as fin
    from cocalc_ctl.config import parse_size

    from cocalc_ctl import ids
    from cocalc_ctl.actions.move import authority
    from cocalc_ctl.errors import InvalidInput

    limit = parse_size(quota) if quota is not None else None
    cfg = config()
    t = None
    if ticket is not None:
        t = authority.check(cfg, ticket, verb="finalize", project_id=ids.project_id(project))
        if (t.mode == "backup") != (from_backup is not None):
            raise InvalidInput("the ticket's mode and --from-backup do not agree",
                               hint="a backup-mode move finalizes with --from-backup, the others without")
    if from_backup is not None:
        from cocalc_ctl.actions.move import backup_mode

        result = backup_mode.finalize(cfg, project, from_backup, quota=limit)
    else:
        result = fin.finalize(cfg, project, quota=limit)
    authority.finished(cfg, t, "finalize")

    def human(r):
        if r.already_finalized:
            done(f"project {r.project_id} already finalized at {r.path}")
        elif r.backup_id:
            done(f"finalized {r.project_id} at {r.path} from backup {r.backup_id[:8]}")
        else:
            done(f"finalized {r.project_id} at {r.path} with {len(r.snapshots)} snapshots")

    render(result, human)


@app.command("cleanup")
def cleanup(project: str = PROJECT,
            force: bool = typer.Option(False, "--force", help="Delete without asking the hub for confirmation."),
            ticket: Optional[str] = TICKET) -> None:
    """On the source: delete the moved project once the hub says the destination finalized."""
    from cocalc_ctl import ids
    from cocalc_ctl.actions.move import authority
    from cocalc_ctl.actions.move import finalize as fin

    cfg = config()
    t = None
    if ticket is not None and fin.present(cfg, project):  # nothing to delete needs no authority
        t = authority.check(cfg, ticket, verb="cleanup", project_id=ids.project_id(project))
    result = fin.cleanup(cfg, project, force=force)
    authority.finished(cfg, t, "cleanup")
    render(result, lambda r: done(f"deleted {r.project_id} and {len(r.deleted_snapshots)} snapshots ({r.reason})"
                                   if r.deleted else f"{r.project_id}: {r.reason}"))


@app.command("abort")
def abort(project: str = PROJECT, ticket: Optional[str] = TICKET) -> None:
    """On a destination: delete received data, staged streams and a half-finalized project."""
    from cocalc_ctl import ids
    from cocalc_ctl.actions.move import authority
    from cocalc_ctl.actions.move import finalize as fin

    cfg = config()
    t = None
    if ticket is not None and fin.incoming_present(cfg, project):
        t = authority.check(cfg, ticket, verb="abort", project_id=ids.project_id(project))
        authority.finished(cfg, t, "abort")  # first: a receive waiting for the lock must not start after it
    elif ticket is not None:  # nothing to roll back: still a valid ticket, and the move ends here now
        authority.close(cfg, ticket, verb="abort", project_id=ids.project_id(project))
    result = fin.abort(cfg, project)
    authority.finished(cfg, t, "abort")
    render(result, lambda r: done(f"aborted {r.project_id}: removed {len(r.deleted_received)} received snapshots"
                                   + (" and the half-finalized project" if r.deleted_partial_project else "")))


@app.command("release")
def release(project: str = PROJECT,
            snapshot: Optional[str] = typer.Option(None, "--snapshot", metavar="NAME",
                                                   help="The failed move's snapshot (as `move status` or the "
                                                        "send named it); with --ticket: the ticket's."),
            ticket: Optional[str] = TICKET) -> None:
    """On the source, after a failed or cancelled move: delete that move's own snapshot and staged
    stream files; the project stays. Only a name this host's move log records as a send of the
    project is deleted (never a pattern), a locked snapshot is kept."""
    from cocalc_ctl import ids
    from cocalc_ctl.actions.move import authority
    from cocalc_ctl.actions.move.release import release as release_move
    from cocalc_ctl.errors import InvalidInput

    cfg = config()
    pid = ids.project_id(project)
    if ticket is not None:
        # the move ends on this host now: its other tickets (a killed worker's send) are refused from here on
        t = authority.close(cfg, ticket, verb="release", project_id=pid)
        if snapshot is not None and ids.snapshot_name(snapshot) != t.snapshot:
            raise InvalidInput("--snapshot is not the ticket's move snapshot", hint="give only the ticket")
        snapshot = t.snapshot
    if snapshot is None:
        raise InvalidInput("move release needs --snapshot NAME (the failed move's snapshot)",
                           hint="`move status PROJECT --json` shows snapshot_name")
    result = release_move(cfg, pid, snapshot)
    render(result, lambda r: done(f"released the move of {r.project_id}: deleted snapshot {r.snapshot}"
                                   + (" and its stream files" if r.deleted_streams else "")
                                   if r.deleted_snapshot else f"{r.project_id}: {r.reason}"))


# -- hub side -----------------------------------------------------------------------------------------

def _status_table(moves) -> None:
    from cocalc_ctl import output

    output.table(["project", "state", "from", "to", "mode", "attempt", "bytes", "reason"],
                 [(m.project_id, m.state, (m.source_host_id or "-")[:8], (m.dest_host_id or "-")[:8],
                   m.mode if m.mode == "backup" else f"{m.mode}/{m.compress}", m.attempt,
                   output.human_bytes((m.progress or {}).get("bytes")) if m.progress else "-",
                   m.status_reason or "") for m in moves])


@app.command("start")
def start(project: str = PROJECT,
          to: Optional[str] = typer.Option(None, "--to", metavar="HOST",
                                           help="Destination host uuid or name (default: a trusted, active host)."),
          mode: Optional[str] = typer.Option(None, "--mode", metavar="pipe|staged|backup",
                                             help="Transfer mode; backup: backup on the source, restore on the "
                                                  "destination (same backup.repo; snapshots not carried)."),
          compress: Optional[str] = typer.Option(None, "--compress", metavar="none|lz4|zstd",
                                                 help="Stream compression.")) -> None:
    """Queue a move in the hub and return at once (a `move worker` carries it out)."""
    from cocalc_ctl.actions.move import hub

    result = hub.start(config(), project, to=to, mode=mode, compress=compress)
    render(result, lambda m: done(f"move of {m.project_id} to {m.dest_host_id}: {m.state}"
                                   + (f" ({m.status_reason})" if m.status_reason else "")))


@app.command("status")
def status(project: Optional[str] = typer.Argument(None, metavar="[PROJECT]", help="One project (default: all)."),
           watch: bool = typer.Option(False, "--watch", help="Refresh every second until every move is finished."),
           limit: int = typer.Option(100, "--limit", metavar="N", min=1, max=10000,
                                     help="At most N moves (newest change first)."),
           after: Optional[str] = typer.Option(None, "--after", metavar="KEY",
                                               help="The next page: the KEY of the previous page's last line "
                                                    "`… more: --after KEY`.")) -> None:
    """Moves in the hub with state, attempt, bytes and reason (a page of --limit, newest first)."""
    import time

    from cocalc_ctl import output, paging
    from cocalc_ctl.actions.move import hub

    while True:
        moves = hub.status(config(), project, limit=limit, after=after)
        more = getattr(moves, "next_after", None)
        if G.json and watch:
            for m in moves:
                output.json_line(m)
        else:
            render(moves, lambda ms: (_status_table(ms), paging.more_line(more)))
        if G.json:
            paging.more_line(more, json_array=True)
        if not watch or all(m.state in hub.TERMINAL for m in moves):
            return
        time.sleep(1.0)


@app.command("cancel")
def cancel(project: str = PROJECT) -> None:
    """Cancel a move that has not reached finalizing; the worker then rolls back the destination."""
    from cocalc_ctl.actions.move import hub

    result = hub.cancel(config(), project)
    render(result, lambda m: done(f"cancelled the move of {m.project_id}"))


@app.command("worker")
def worker(once: bool = typer.Option(False, "--once", help="Exit when no move is claimable."),
           concurrency: int = typer.Option(1, "--concurrency", min=1, max=64, metavar="N",
                                           help="Moves handled at once."),
           poll: Optional[float] = typer.Option(None, "--poll", min=0.1, metavar="SECONDS",
                                                help="Fallback poll interval when idle (default move.poll_seconds); "
                                                     "a NOTIFY from the hub wakes the worker at once.")) -> None:
    """Advance queued moves (queued → preparing → sending → finalizing → done) under leases.

    Waits on the hub's NOTIFY (a real PostgreSQL session: no transaction pooling in front of it)."""
    from cocalc_ctl.actions.move import worker as worker_action

    result = worker_action.run(config(), once=once, concurrency=concurrency, poll=poll)
    render(result, lambda r: [print(f"{p['project_id']}: {p['state']}" + (f" ({p['reason']})" if p["reason"] else ""))
                              for p in r.processed])
