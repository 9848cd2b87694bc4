"""`cocalc-ctl proxy`: the HTTP/WebSocket reverse proxy (host and hub modes)."""

from __future__ import annotations

from typing import Optional

import typer

from cocalc_ctl.cli.common import G, config, render

app = typer.Typer(help="HTTP/WebSocket reverse proxy to project servers.", no_args_is_help=True)


@app.command("serve")
def serve(
    mode: str = typer.Option("host", "--mode", metavar="host|hub", help="host: route to this host's projects (sqlite); "
                                                    "hub: route to each project's host (PostgreSQL)."),
    listen: Optional[str] = typer.Option(None, "--listen", metavar="ADDR:PORT",
                                         help="Listen address (default: proxy.listen)."),
    access_log: bool = typer.Option(True, "--access-log/--no-access-log",
                                    help="One line per request on stderr (JSON lines with --json)."),
    workers: Optional[str] = typer.Option(None, "--workers", metavar="N",
                                          help="Worker processes (a number, or auto) on one SO_REUSEPORT "
                                               "address, supervised (default: proxy.workers, auto = one per "
                                               "core; 1 = one process)."),
) -> None:
    """Serve `/<project_id>/...` until SIGTERM/SIGINT; also /healthz and /metrics."""
    from cocalc_ctl.actions.proxy import serve as proxy_actions

    cfg = config()
    result = proxy_actions.serve(cfg, mode=mode, listen=listen, access_log=access_log, json_log=G.json,
                                 workers=workers)
    if not G.json:
        return
    render(result, lambda r: None)
