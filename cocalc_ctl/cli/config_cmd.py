"""`cocalc-ctl config`: show the effective configuration and where each value came from."""

from __future__ import annotations

import typer

from cocalc_ctl.cli.common import config, render

app = typer.Typer(help="Show the effective configuration.", no_args_is_help=True)


@app.command("show")
def show() -> None:
    """Print every config key, its effective value and its source (secrets redacted)."""
    from cocalc_ctl import config as config_mod
    from cocalc_ctl import output

    cfg = config()
    values = cfg.redacted()
    data = {
        "file": cfg.file,
        "keys": {k: {"value": values[k], "source": cfg.sources[k], "env": config_mod.env_name(k)} for k in values},
        "derived": {"secrets_dir": str(cfg.secrets_dir)},
    }

    def human(_):
        print(f"config file: {cfg.file or '(none: defaults and environment only)'}")
        output.table(["key", "value", "source"], [
            (k, ", ".join(v["value"]) if isinstance(v["value"], tuple) else v["value"], v["source"])
            for k, v in data["keys"].items()])  # list values (proxy.trust_forwarded) comma-separated

    render(data, human)
