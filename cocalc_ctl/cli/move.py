"""`cocalc-ctl move`: move a project between hosts (host-side steps and the hub's queue)."""

from __future__ import annotations

import os
from typing import Optional

import typer

from cocalc_ctl.cli.common import G, config, render

app = typer.Typer(help="Move projects between hosts: send/recv/finalize/cleanup on hosts; "
                       "start/status/cancel/worker on the hub.", no_args_is_help=True)

PROJECT = typer.Argument(..., metavar="PROJECT", help="Project id (lowercase UUID).")


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
            if ev["event"] == "progress":
                if self.task is None or self.bar.tasks[self.task].description != ev["snapshot"]:
                    self.task = self.bar.add_task(ev["snapshot"], total=None)
                self.bar.update(self.task, completed=ev["bytes"])
            elif ev["event"] == "sent" and self.task is not None:
                self.bar.update(self.task, completed=ev["bytes"], total=ev["bytes"])
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
         to: str = typer.Option(..., "--to", metavar="btrfs-<SRC>@HOST:PORT",
                                help="The destination's move receiver (btrfs-<this-host-uuid>@HOST:PORT)."),
         mode: Optional[str] = typer.Option(None, "--mode", metavar="pipe|staged",
                                            help="pipe: stream; staged: files + rsync --partial (default move.mode)."),
         compress: Optional[str] = typer.Option(None, "--compress", metavar="none|lz4|zstd",
                                                help="Compress the streams (default move.compress)."),
         bwlimit: Optional[str] = typer.Option(None, "--bwlimit", metavar="RATE", help="Bytes/s, e.g. 50M."),
         snapshot: Optional[str] = typer.Option(None, "--snapshot", metavar="NAME",
                                                help="Name of the final snapshot (default move-<UTC time>; "
                                                     "reused when it exists, so a rerun resumes).")) -> None:
    """Stop the project, snapshot it, send every snapshot (incrementally) to the destination."""
    from cocalc_ctl import output
    from cocalc_ctl.actions.move import send as send_action

    progress = _Progress()
    try:
        result = send_action.send(config(), project, to, mode=mode, codec=compress, bwlimit=bwlimit,
                                  snapshot=snapshot, progress=progress)
    finally:
        progress.close()
    if G.json:
        output.json_line({"event": "result", **output.to_jsonable(result)})
        return

    def human(r):
        sent = [s for s in r.snapshots if not s.skipped]
        print(f"moved {r.project_id} to {r.destination}: {len(sent)} streams, {output.human_bytes(r.bytes_total)} "
              f"in {r.seconds:.1f}s ({r.mode}, {r.compress}); final snapshot {r.move_snapshot}")

    render(result, human)


@app.command("recv")
def recv(from_: str = typer.Option(..., "--from", metavar="HOST_UUID",
                                   help="The source host whose key runs this forced command.")) -> None:
    """The destination's forced command: runs the request in SSH_ORIGINAL_COMMAND (own small grammar)."""
    from cocalc_ctl.actions.move import recv as recv_action

    code = recv_action.serve(config(), from_, os.environ.get("SSH_ORIGINAL_COMMAND"))
    raise typer.Exit(code)


@app.command("finalize")
def finalize(project: str = PROJECT) -> None:
    """Make the received snapshots the project here (idempotent; refuses an existing project)."""
    from cocalc_ctl.actions.move import finalize as fin

    result = fin.finalize(config(), project)
    render(result, lambda r: print(f"project {r.project_id} already finalized at {r.path}" if r.already_finalized
                                   else f"finalized {r.project_id} at {r.path} with {len(r.snapshots)} snapshots"))


@app.command("cleanup")
def cleanup(project: str = PROJECT,
            force: bool = typer.Option(False, "--force", help="Delete without asking the hub for confirmation.")) -> None:
    """On the source: delete the moved project once the hub says the destination finalized."""
    from cocalc_ctl.actions.move import finalize as fin

    result = fin.cleanup(config(), project, force=force)
    render(result, lambda r: print(f"deleted {r.project_id} and {len(r.deleted_snapshots)} snapshots ({r.reason})"
                                   if r.deleted else f"{r.project_id}: {r.reason}"))


@app.command("abort")
def abort(project: str = PROJECT) -> None:
    """On a destination: delete received data, staged streams and a half-finalized project."""
    from cocalc_ctl.actions.move import finalize as fin

    result = fin.abort(config(), project)
    render(result, lambda r: print(f"aborted {r.project_id}: removed {len(r.deleted_received)} received snapshots"
                                   + (" and the half-finalized project" if r.deleted_partial_project else "")))
