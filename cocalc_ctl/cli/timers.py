"""`cocalc-ctl timers`: systemd units (and crontab lines) for the periodic and long-running jobs."""

from __future__ import annotations

from typing import List, Optional

import typer

from cocalc_ctl.cli.common import G, config, done, render

app = typer.Typer(help="Install, list and remove the systemd timers and services (or print crontab lines).",
                  no_args_is_help=True)

UNIT_DIR = typer.Option(None, "--user-unit-dir", "--unit-dir", metavar="DIR",
                        help="Unit directory to use instead of ops.unit_dir (/etc/systemd/system); "
                             "systemctl is then left alone.")
ROLE = typer.Option("host", "--role", metavar="host|hub|all",
                    help="Which jobs: host (project hosts), hub (move worker) or all.")
ONLY = typer.Option(None, "--only", metavar="JOB", help="Just this job (repeatable); see `timers list`.")
BIN = typer.Option(None, "--bin", metavar="PATH", help="cocalc-ctl executable the units run (default ops.bin or PATH).")


@app.command("install")
def install(unit_dir: Optional[str] = UNIT_DIR, role: str = ROLE, only: Optional[List[str]] = ONLY,
            bin: Optional[str] = BIN,
            no_enable: bool = typer.Option(False, "--no-enable", help="Write and reload, but do not enable/start.")) -> None:
    """Write service + timer units (hardened, lock-guarded) and enable them."""
    from cocalc_ctl.actions.ops import timers

    result = timers.install(config(), unit_dir=unit_dir, role=role, only=only, bin=bin, enable=not no_enable)

    def human(r):
        for n in r.written:
            done(f"wrote {r.unit_dir}/{n}")
        if r.unchanged:
            done(f"unchanged: {', '.join(r.unchanged)}")
        if r.enabled:
            done(f"enabled and started: {', '.join(r.enabled)}")
        for n in r.notes:
            print(n)

    render(result, human)


@app.command("list")
def list_(unit_dir: Optional[str] = UNIT_DIR, bin: Optional[str] = BIN) -> None:
    """Every job: kind, schedule, role, whether its units are installed (and enabled/active)."""
    from cocalc_ctl import output
    from cocalc_ctl.actions.ops import timers

    result = timers.list_jobs(config(), unit_dir=unit_dir, bin=bin)
    cols = ["job", "kind", "schedule", "role", "installed"]
    with_state = any(j.enabled is not None for j in result)

    def human(rs):
        if output.is_tty():  # fit 80 columns: the program once above the table, unit state in one column
            programs = {j.command.split(" ", 1)[0] for j in rs}
            program = programs.pop() if len(programs) == 1 else None
            output.table(cols + (["state"] if with_state else []) + ["command"],
                         [(j.name + ("" if j.default else " (opt)"), j.kind, j.schedule, j.role, j.installed,
                           *((f"{j.enabled} {j.active}",) if with_state else ()),
                           j.command.split(" ", 1)[1] if program and " " in j.command else j.command)
                          for j in rs], title=f"commands run {program}" if program else None)
            return
        output.table(cols + (["enabled", "active"] if with_state else []) + ["command"],
                     [(j.name + ("" if j.default else " (opt)"), j.kind, j.schedule, j.role, j.installed,
                       *((j.enabled, j.active) if with_state else ()), j.command)
                      for j in rs])

    render(result, human)


@app.command("remove")
def remove(unit_dir: Optional[str] = UNIT_DIR, only: Optional[List[str]] = ONLY) -> None:
    """Stop, disable and delete the units `timers install` wrote (others are never touched)."""
    from cocalc_ctl.actions.ops import timers

    result = timers.remove(config(), unit_dir=unit_dir, only=only)
    render(result, lambda r: done("\n".join(f"removed {r.unit_dir}/{n}" for n in r.removed)
                                   if r.removed else f"no cocalc-ctl units in {r.unit_dir}"))


@app.command("cron")
def cron(role: str = ROLE, only: Optional[List[str]] = ONLY, bin: Optional[str] = BIN,
         user: str = typer.Option("root", "--user", metavar="USER", help="User field of the cron.d lines.")) -> None:
    """Print the same schedule as /etc/cron.d lines, for hosts without systemd."""
    from cocalc_ctl.actions.ops import timers

    text = timers.crontab(config(), role=role, only=only, bin=bin, user=user)
    if G.json:
        render({"crontab": text}, lambda r: None)
    else:
        print(text, end="")
