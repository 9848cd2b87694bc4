"""`cocalc-ctl metrics`: Prometheus textfile-collector metrics."""

from __future__ import annotations

from typing import Optional

import typer

from cocalc_ctl.cli.common import config, done, render

app = typer.Typer(help="Prometheus metrics for node_exporter's textfile collector.", no_args_is_help=True)


@app.command("write")
def write(textfile_dir: Optional[str] = typer.Option(
        None, "--textfile-dir", metavar="DIR", help="Directory to write cocalc_ctl.prom into (default metrics.textfile_dir).")) -> None:
    """Write backup ages, failed jobs, snapshot counts, pool usage and move states atomically."""
    from cocalc_ctl.actions.ops import metrics

    result = metrics.write(config(), textfile_dir=textfile_dir)
    render(result, lambda r: done(f"wrote {r.samples} samples to {r.path}"))


@app.command("show")
def show() -> None:
    """Print the metrics in the Prometheus text format instead of writing them."""
    from cocalc_ctl.actions.ops import metrics
    from cocalc_ctl.cli.common import G

    families = metrics.collect(config())
    if G.json:
        render([{"name": f.name, "type": f.kind, "help": f.help,
                 "samples": [{"labels": labels, "value": value} for labels, value in f.samples]}
                for f in families], lambda r: None)
    else:
        print(metrics.render(families), end="")
