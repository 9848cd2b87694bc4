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
    data = {
        "file": cfg.file,
        "keys": {k: {"value": v, "source": src, "env": config_mod.env_name(k)} for k, v, src in effective(cfg)},
        "derived": {"secrets_dir": str(cfg.secrets_dir)},
    }

    def human(_):
        print(f"config file: {cfg.file or '(none: defaults and environment only)'}")
        output.table(["key", "value", "source"], [(k, _text(v["value"]), v["source"]) for k, v in data["keys"].items()])

    render(data, human)


def effective(cfg) -> list[tuple[str, object, str]]:
    """(key, value, source) grouped by section (top-level keys first, then each section's keys together),
    with the value the program actually uses where the setting is unset: the host id `host init` stored,
    the host name, the secrets directory."""
    from cocalc_ctl.actions.host import identity

    values = cfg.redacted()
    sections: dict[str, list[str]] = {}
    for k in values:
        sections.setdefault(k.split(".", 1)[0] if "." in k else "", []).append(k)
    out = []
    for section in sorted(sections, key=lambda s: (s != "", list(sections).index(s))):
        for k in sections[section]:
            value, source = values[k], cfg.sources[k]
            if value is None and source == "default":
                if k == "host_id" and (stored := identity.host_id(cfg)):
                    from cocalc_ctl import layout

                    value, source = stored, f"stored by host init ({layout.host_id_file(cfg)})"
                elif k == "host_name":
                    value, source = cfg.host_name, "default (this machine's hostname)"
                elif k == "secrets_dir":
                    value, source = str(cfg.secrets_dir), "default (data_dir/secrets)"
            out.append((k, value, source))
    return out


def _text(value) -> str:
    if isinstance(value, (tuple, list)):  # list values (proxy.trust_forwarded) comma-separated
        return ", ".join(str(v) for v in value) or "(none)"
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "(unset)"
    return str(value)
