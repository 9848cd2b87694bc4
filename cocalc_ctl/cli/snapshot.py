"""`cocalc-ctl snapshot`: read-only btrfs snapshots of a project."""

from __future__ import annotations

from typing import Optional

import typer

from cocalc_ctl.cli.common import G, config, done, render

app = typer.Typer(help="Create, list, lock, delete and prune project snapshots.", no_args_is_help=True)

PROJECT = typer.Argument(..., metavar="PROJECT", help="Project id: a lowercase UUID or project-<uuid>.")
NAME = typer.Argument(..., metavar="NAME", help="Snapshot name.")


@app.command("create")
def create(project: str = PROJECT,
           name: Optional[str] = typer.Argument(None, metavar="[NAME]",
                                                help="Name (default: UTC time, e.g. 2026-11-27T10:43:45Z).")) -> None:
    """Take a read-only snapshot .snapshots/NAME of the project."""
    from cocalc_ctl.actions.project import snapshots

    result = snapshots.create(config(), project, name)
    render(result, lambda r: done(f"created snapshot {r.name}"))


@app.command("list")
def list_(project: str = PROJECT) -> None:
    """Snapshots with creation time, generation, sizes (qgroups) and lock state."""
    from cocalc_ctl import output
    from cocalc_ctl.actions.project import snapshots

    result = snapshots.list_snapshots(config(), project)
    render(result, lambda rs: output.table(
        ["name", "created", "gen", "referenced", "exclusive", "locked"],
        [(s.name, s.created, s.gen_at_creation, output.human_bytes(s.referenced_bytes),
          output.human_bytes(s.exclusive_bytes), "yes" if s.locked else "") for s in rs]))


@app.command("delete")
def delete(project: str = PROJECT, name: str = NAME) -> None:
    """Delete one snapshot (refused while it is locked)."""
    from cocalc_ctl.actions.project import snapshots

    result = snapshots.delete(config(), project, name)
    render({"deleted": result}, lambda r: done(f"deleted snapshot {result}"))


@app.command("lock")
def lock(project: str = PROJECT, name: str = NAME,
         reason: str = typer.Option("", "--reason", metavar="REASON", help="Why it is kept (stored in the lock file).")) -> None:
    """Protect a snapshot from delete and prune."""
    from cocalc_ctl.actions.project import snapshots

    result = snapshots.lock(config(), project, name, reason=reason)
    render({"locked": result}, lambda r: done(f"locked snapshot {result}"))


@app.command("unlock")
def unlock(project: str = PROJECT, name: str = NAME) -> None:
    """Remove a snapshot's lock."""
    from cocalc_ctl.actions.project import snapshots

    result = snapshots.unlock(config(), project, name)
    render({"unlocked": result}, lambda r: done(f"unlocked snapshot {result}"))


def _keep(kind: str):
    return typer.Option(None, f"--keep-{kind}", metavar="N", min=0,
                        help=f"Keep the newest snapshot of each of the last N {kind} buckets.")


@app.command("prune")
def prune(project: str = PROJECT,
          keep_frequent: Optional[int] = _keep("frequent"), keep_hourly: Optional[int] = _keep("hourly"),
          keep_daily: Optional[int] = _keep("daily"), keep_weekly: Optional[int] = _keep("weekly"),
          keep_monthly: Optional[int] = _keep("monthly")) -> None:
    """Delete timestamp-named snapshots outside the retention buckets (locked and newest kept).

    Without any --keep-* option the config's snapshot.keep_* counts apply.
    """
    from cocalc_ctl.actions.project import retention, snapshots

    cfg = config()
    given = {"frequent": keep_frequent, "hourly": keep_hourly, "daily": keep_daily, "weekly": keep_weekly,
             "monthly": keep_monthly}
    if all(v is None for v in given.values()):
        policy = snapshots.policy_from_config(cfg)
    else:
        policy = retention.Policy(**{k: v or 0 for k, v in given.items()})
    result = snapshots.prune(cfg, project, policy)

    def human(r):
        for d in r.kept:
            done(f"keep    {d.name}  ({', '.join(d.reasons)})")
        for n in r.removed:
            done(f"removed {n}")

    render(result, human)


@app.command("auto")
def auto(project: Optional[str] = typer.Argument(None, metavar="[PROJECT]",
                                                 help="One project (default: every project on this host).")) -> None:
    """For the timer: snapshot projects whose generation advanced, then prune with the config's counts."""
    from cocalc_ctl.actions.project import snapshots

    result = snapshots.auto(config(), project)
    if G.dry_run and not G.json:  # the plan shows what would be created; say what would be skipped
        for r in result:
            would = f"would create {r.created}" if r.created else f"skipped ({r.reason})"
            print(f"# {r.project_id}: {would}" + (f"; would prune {len(r.removed)}" if r.removed else ""))
        return

    def human(rs):
        for r in rs:
            made = f"created {r.created}" if r.created else f"skipped ({r.reason})"
            done(f"{r.project_id}: {made}" + (f"; pruned {len(r.removed)}" if r.removed else ""))

    render(result, human)
