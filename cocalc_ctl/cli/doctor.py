"""`cocalc-ctl doctor`: check this host's prerequisites, one line each, with a fix-it hint."""

from __future__ import annotations

import typer

from cocalc_ctl.cli.common import config, render


def doctor() -> None:
    """Check pool, programs, secrets, keys, hub, backup repo, time and free space; exit 1 on any fail."""
    from cocalc_ctl.actions.ops import doctor as doctor_action

    report = doctor_action.run_checks(config())

    def human(r):
        width = max((len(c.name) for c in r.checks), default=0)
        for c in r.checks:
            line = f"{c.status.upper() if c.status == 'fail' else c.status:<5} {c.name:<{width}}  {c.detail}"
            if c.hint and c.status in ("warn", "fail"):
                line += f"  -> {c.hint}"
            print(line)
        print(f"{r.counts.get('ok', 0)} ok, {r.counts.get('warn', 0)} warn, {r.counts.get('fail', 0)} fail, "
              f"{r.counts.get('skip', 0)} skipped")

    render(report, human)
    if report.failed:
        raise typer.Exit(1)
