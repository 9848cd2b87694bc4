"""State shared by the commands of one invocation: global flags and the lazily loaded config."""

from __future__ import annotations

from typing import Any, Callable

from cocalc_ctl import output, proc


class Globals:
    config_path: str | None = None
    json: bool = False
    dry_run: bool = False
    verbose: bool = False
    quiet: bool = False
    wide: bool = False
    _config = None


G = Globals()

# Runs a whole command line in this process and returns its exit status: cli/main.py's `run`, set
# when that module loads. `move host-step` runs the step it was given this way; it cannot import
# cli.main, which imports every noun's module (that would be an import cycle).
run_command_line: Callable[[list[str]], int] | None = None


def apply_globals(*, config: str | None, json: bool, dry_run: bool, verbose: bool, quiet: bool,
                  wide: bool = False) -> None:
    G.config_path = config or G.config_path
    G.json = json or G.json
    G.dry_run = dry_run or G.dry_run
    G.verbose = verbose or G.verbose
    G.quiet = quiet or G.quiet
    G.wide = wide or G.wide
    output.JSON, output.QUIET, output.VERBOSE, output.WIDE = G.json, G.quiet, G.verbose, G.wide
    proc.DRY_RUN, proc.VERBOSE = G.dry_run, G.verbose
    proc.ECHO_PLAN = not G.json


def config():
    """The effective config, loaded once (errors name the key and the file)."""
    if G._config is None:
        from cocalc_ctl import config as config_mod

        G._config = config_mod.load(G.config_path)
        proc.DEFAULT_TIMEOUT = float(G._config["command_timeout"])
        if G._config.file is None:  # say so: quietly running on defaults surprises (stderr, not with -q)
            output.note(f"cocalc-ctl: note: no config file ({config_mod.DEFAULT_CONFIG_PATH} does not exist); "
                        "using defaults and COCALC_CTL_* variables")
        elif G.verbose:
            output.note(f"cocalc-ctl: config file {G._config.file}")
    return G._config


def render(result: Any, human: Callable[[Any], None]) -> None:
    """--json: the result as one JSON document (plus the dry-run plan); else the human form."""
    if G.json:
        data = output.to_jsonable(result)
        if G.dry_run:
            data = {"dry_run": True, "commands": list(proc.PLAN), "result": data}
        output.print_json(data)
    elif G.dry_run:
        pass  # the plan printed above is the whole answer; "created X" would be a lie
    else:
        human(result)


def done(*parts: Any, **kwargs: Any) -> None:
    """A confirmation (`created snapshot X`): stdout, but nothing with -q (errors and requested output only)."""
    if not G.quiet:
        print(*parts, **kwargs)


def exit_for(exc: BaseException) -> int:
    """The one mapping of an exception that ended a command (click's own aside, see main.run) to its
    one-line `cocalc-ctl: error: …` on stderr and exit code; a traceback only with -v."""
    import sys

    from cocalc_ctl.errors import EXIT_FAILED, CocalcError, from_exception

    if isinstance(exc, BrokenPipeError):
        return 141
    if isinstance(exc, KeyboardInterrupt):
        msg, code = "interrupted", 130
    else:
        mapped = exc if isinstance(exc, CocalcError) else from_exception(exc)
        if mapped is not None:
            msg, code = mapped.one_line(), mapped.exit_code
        else:
            msg = (f"internal error: {type(exc).__name__}: {' '.join(str(exc).split())[:300]} "
                   "(rerun with -v for a traceback)")
            code = EXIT_FAILED
        if G.verbose:
            import traceback

            traceback.print_exception(exc)
    print(f"cocalc-ctl: error: {msg}", file=sys.stderr, flush=True)
    return code
