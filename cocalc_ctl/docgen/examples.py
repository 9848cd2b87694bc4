"""examples/: a fully commented config.yaml (every schema key), the systemd units and a crontab.

The units and crontab are rendered for a host with the default paths and the binary at
/usr/local/bin/cocalc-ctl, exactly as `timers install` / `timers cron` would write them there.
"""

from __future__ import annotations

from cocalc_ctl.config import SCHEMA, Config

EXAMPLE_BIN = "/usr/local/bin/cocalc-ctl"
EXAMPLE_HOST = "host-1.example.internal"

# Values a typical project host sets; every other key is shown commented out with its default.
EXAMPLE_VALUES = {
    "host_name": "host-1",
    "ssh_server": "host-1.example.internal:2222",
    "hub_dsn": ("host=hub.example.internal dbname=cocalc user=cocalc_host_6f1c2a0e8d3b4c559a712b0f4e9d1c11 "
                "passfile=/etc/cocalc-ctl/hub.pgpass sslmode=verify-full"),  # from `hub host-role`
    "project.quota": "10G",
    "backup.repo": "rest:https://backup.example.internal:8000/cocalc",
    "backup.password_file": "/var/lib/cocalc-ctl/secrets/backup-password",
}


def default_config() -> Config:
    values = {k.name: k.default for k in SCHEMA.values()}
    return Config(values=values, sources={k: "default" for k in values}, file=None)


def _yaml_scalar(value) -> str:
    import yaml

    if value is None:
        return ""
    text = yaml.safe_dump(value, default_flow_style=True, width=1000).strip()
    return text[:-4].rstrip() if text.endswith("\n...") else text.removesuffix("...").strip()


def _wrap(text: str, indent: str) -> list[str]:
    import textwrap

    return [f"{indent}# {line}" for line in textwrap.wrap(text, 96 - len(indent))]


def config_yaml() -> str:
    lines = ["# cocalc-ctl configuration (/etc/cocalc-ctl/config.yaml).",
             "#",
             "# Every key is listed with its meaning and default. Keys set below are what a typical project",
             "# host changes; the commented ones show the defaults. Any key can also be set with an environment",
             "# variable: COCALC_CTL_<KEY> with dots as underscores (COCALC_CTL_BACKUP_REPO).",
             "# Check the result with: cocalc-ctl config show",
             ""]
    sections: dict[str, list] = {}
    for key in SCHEMA.values():
        section = key.name.split(".", 1)[0] if "." in key.name else ""
        sections.setdefault(section, []).append(key)
    for section, keys in sections.items():
        indent = "  " if section else ""
        active = any(k.name in EXAMPLE_VALUES for k in keys)
        if section:
            lines.append(f"{section}:" if active else f"# {section}:")
        for key in keys:
            short = key.name.split(".", 1)[1] if section else key.name
            lines += _wrap(key.help + (" (secret: redacted in output)" if key.secret else ""), indent)
            if key.name in EXAMPLE_VALUES:
                value = EXAMPLE_VALUES[key.name]
                lines.append(f"{indent}{short}: {_yaml_scalar(value)}")
                default = _yaml_scalar(key.default) or "unset"
                lines.append(f"{indent}#   default: {default}")
            else:
                value = _yaml_scalar(key.default)
                lines.append(f"{indent}# {short}: {value}".rstrip() if value else f"{indent}# {short}:")
        lines.append("")
    return "\n".join(lines).rstrip("\n") + "\n"


def _context():
    from cocalc_ctl.actions.ops import timers

    ctx = timers.context(default_config(), bin=EXAMPLE_BIN)
    ctx.seed = EXAMPLE_HOST
    return ctx


def systemd_units() -> dict[str, str]:
    from cocalc_ctl.actions.ops import timers

    return timers.render_units(_context(), timers.select("all"))


def crontab() -> str:
    from cocalc_ctl.actions.ops import timers

    return timers.render_crontab(_context(), timers.select("all"))


def render_all() -> dict[str, str]:
    """Relative path under examples/ -> content."""
    out = {"config.yaml": config_yaml(), "crontab": crontab()}
    for name, text in systemd_units().items():
        out[f"systemd/{name}"] = text
    return out
