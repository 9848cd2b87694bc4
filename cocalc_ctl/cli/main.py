"""Entry point: global flags, the noun apps, and the one place errors become exit codes."""

from __future__ import annotations

import sys
from typing import Optional

import typer
from typer._click import _textwrap

from cocalc_ctl import __version__
from cocalc_ctl.cli import common

GLOBAL_FLAGS = {"--json", "--dry-run", "-v", "--verbose", "-q", "--quiet", "--wide"}

app = typer.Typer(
    name="cocalc-ctl",
    help="Operate a CoCalc-style project host: btrfs projects and snapshots, backups, moves, keys, "
         "the SSH auth hook and the HTTP proxy.\n\nExit codes: 0 ok, 1 operation failed, 2 usage or invalid "
         "input, 3 not found, 4 busy/locked, 5 missing tool or precondition.",
    no_args_is_help=True,
    add_completion=False,
    rich_markup_mode=None,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _version(value: bool) -> None:
    if value:
        print(f"cocalc-ctl {__version__}")
        raise typer.Exit(0)


@app.callback()
def _root(
    config: Optional[str] = typer.Option(None, "--config", metavar="FILE",
                                         help="Config file (default $COCALC_CTL_CONFIG or /etc/cocalc-ctl/config.yaml)."),
    json: bool = typer.Option(False, "--json", help="Print one JSON document (JSON lines for progress)."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Print the exact commands; change nothing."),
    verbose: bool = typer.Option(False, "-v", "--verbose", help="Log each command; tracebacks on errors."),
    quiet: bool = typer.Option(False, "-q", "--quiet", help="Only errors and requested output."),
    wide: bool = typer.Option(False, "--wide", help="Terminal tables: whole ids and fingerprints."),
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Print the version."),
) -> None:
    common.apply_globals(config=config, json=json, dry_run=dry_run, verbose=verbose, quiet=quiet, wide=wide)


def _register() -> None:
    from cocalc_ctl.cli import (backup, config_cmd, doctor, host, hub, keys, metrics, move, project, rootfs,
                                snapshot, sshpiper, timers)
    from cocalc_ctl.cli import proxy as proxy_cmd

    app.add_typer(backup.app, name="backup")
    app.add_typer(config_cmd.app, name="config")
    app.command("doctor")(doctor.doctor)
    app.add_typer(host.app, name="host")
    app.add_typer(hub.app, name="hub")
    app.add_typer(keys.app, name="keys")
    app.add_typer(metrics.app, name="metrics")
    app.add_typer(move.app, name="move")
    app.add_typer(project.app, name="project")
    app.add_typer(proxy_cmd.app, name="proxy")
    app.command("restore")(backup.restore)
    app.add_typer(rootfs.app, name="rootfs")
    app.add_typer(snapshot.app, name="snapshot")
    app.add_typer(sshpiper.app, name="sshpiper")
    app.add_typer(timers.app, name="timers")


_register()

# `cocalc-ctl --help` lists the nouns in the order an admin meets them, not in registration order.
ORDER = ["host", "project", "snapshot", "backup", "restore", "move", "rootfs", "keys", "sshpiper", "proxy", "hub",
         "timers", "metrics", "doctor", "config"]


def _list_commands(self, ctx) -> list[str]:
    names = list(self.commands)
    if self.name in (None, "cocalc-ctl") and ctx.parent is None:
        return sorted(names, key=lambda n: ORDER.index(n) if n in ORDER else len(ORDER))
    return names


def _format_commands(self, ctx, formatter) -> None:
    """Each command's whole first paragraph, wrapped (click cuts it at the terminal width with "...")."""
    rows = []
    for name in self.list_commands(ctx):
        cmd = self.get_command(ctx, name)
        if cmd is not None and not cmd.hidden:
            rows.append((name, cmd.get_short_help_str(limit=10_000)))
    if rows:
        with formatter.section("Commands"):
            formatter.write_dl(rows)


typer.core.TyperGroup.list_commands = _list_commands
# help text never splits a word at a hyphen (`/etc/cocalc-` + `ctl/config.yaml`, `crash-` + `safely`)


class _Wrapper(_textwrap.TextWrapper):
    def __init__(self, *args, **kwargs) -> None:
        kwargs.setdefault("break_on_hyphens", False)
        super().__init__(*args, **kwargs)


_textwrap.TextWrapper = _Wrapper
typer.core.TyperGroup.format_commands = _format_commands


def hoist_global_flags(argv: list[str]) -> list[str]:
    """Allow global flags anywhere (`project list --json`) by moving them in front of the noun."""
    front, rest = [], []
    i = 0
    while i < len(argv):
        a = argv[i]
        if a == "--":
            rest.extend(argv[i:])
            break
        if a in GLOBAL_FLAGS:
            front.append(a)
        elif a == "--config" and i + 1 < len(argv):
            front.extend([a, argv[i + 1]])
            i += 1
        elif a.startswith("--config="):
            front.append(a)
        else:
            rest.append(a)
        i += 1
    return front + rest


def _error(msg: str, code: int) -> int:
    import re

    from cocalc_ctl.authnames import SESSION_PREFIX, TOKEN_PREFIX

    # a token or session value typed where something else belongs is never echoed back (nor logged)
    secret = re.compile(f"(?:{re.escape(TOKEN_PREFIX)}|{re.escape(SESSION_PREFIX)})[A-Za-z0-9_-]{{8,}}")
    msg = secret.sub(lambda m: m.group(0)[:len(TOKEN_PREFIX)] + "…(redacted)", msg)
    print(f"cocalc-ctl: error: {msg}", file=sys.stderr, flush=True)
    return code


def run(argv: list[str]) -> int:
    from cocalc_ctl.errors import EXIT_USAGE, CocalcError

    argv = hoist_global_flags(argv)
    command = typer.main.get_command(app)
    try:
        rv = command.main(args=argv, prog_name="cocalc-ctl", standalone_mode=False)
        return rv if isinstance(rv, int) else 0
    except (CocalcError, KeyboardInterrupt, BrokenPipeError) as exc:
        return common.exit_for(exc)
    except Exception as exc:  # click's own exceptions, expected system failures, and real bugs
        from cocalc_ctl.errors import from_exception

        if from_exception(exc) is not None:  # a full disk, a refused connection, ...
            return common.exit_for(exc)
        name = type(exc).__name__
        if name == "Exit":
            return getattr(exc, "exit_code", 0)
        if name == "Abort":
            return _error("aborted", 1)
        if name == "NoArgsIsHelpError" and getattr(exc, "ctx", None) is not None:
            # `cocalc-ctl project`: the noun's help, as git and restic do (exit 2: no verb given)
            sys.stderr.write(exc.ctx.get_help() + "\n")
            return EXIT_USAGE
        if hasattr(exc, "format_message") and hasattr(exc, "exit_code"):
            ctx = getattr(exc, "ctx", None)
            where = f" (see `{ctx.command_path} --help`)" if ctx is not None else ""
            return _error(" ".join(exc.format_message().split()) + where, exc.exit_code or EXIT_USAGE)
        return common.exit_for(exc)


common.run_command_line = run


def main() -> None:
    code = run(sys.argv[1:])
    # Skip the interpreter's teardown (~0.1 s with typer, pydantic and rich loaded): by now every
    # database write is committed, every child has exited and only buffered output remains.
    try:
        sys.stdout.flush()
        sys.stderr.flush()
    except (BrokenPipeError, ValueError):
        pass
    import os

    os._exit(code)
