"""`cocalc-ctl hub`: the hub's PostgreSQL schema."""

from __future__ import annotations

import typer

from cocalc_ctl.cli.common import config, render

app = typer.Typer(help="Hub PostgreSQL schema (projects, project_hosts, project_moves).", no_args_is_help=True)


@app.command("migrate")
def migrate() -> None:
    """Create or extend the hub tables (idempotent, versioned, never drops)."""
    from cocalc_ctl.actions import hub

    result = hub.migrate(config())
    render(result, lambda r: print(
        "\n".join(f"applied {a}" for a in r.applied) + ("\n" if r.applied else "") + f"hub schema at version {r.version}"))
