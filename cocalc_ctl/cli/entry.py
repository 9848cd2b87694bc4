"""Process entry point: answers what it can before loading the CLI framework (typer, ~60 ms).

- `cocalc-ctl [--config F] sshpiper authorized-keys USER` runs for every SSH login attempt on the move
  receiver: it calls the decision directly.
- `move start PROJECT [--to|--mode|--compress V]` (plain forms only, see cli/fast_move.py): the
  hub's frequent enqueue, without typer.
- `[--config F] move recv --from HOST` (exactly): the move receiver's forced command, run once per
  request of a move (every snapshot stream, the inventories, the final check).
- `--version`, `--help`/`-h` of any command (text pre-rendered by scripts/regenerate into
  `cocalc_ctl/cli/helpcache.py`; used when the terminal is at least 80 columns wide, where click's
  help is 78 columns whatever the width, so the text is byte for byte what typer prints), a noun
  without a verb, an unknown command, and `__complete` (shell completion values).
Every other command line goes to `cocalc_ctl.cli.main`.
"""

from __future__ import annotations

import sys


def fast_authorized_keys(argv: list[str]) -> tuple[str | None, str] | None:
    """(config path, user) when argv is exactly `[--config F] [-q|-v] sshpiper authorized-keys USER`."""
    config, rest, i = None, [], 0
    while i < len(argv):
        a = argv[i]
        if a == "--config" and i + 1 < len(argv):
            config, i = argv[i + 1], i + 2
            continue
        if a.startswith("--config="):
            config = a.split("=", 1)[1]
        elif a in ("-q", "--quiet", "-v", "--verbose"):
            pass
        else:
            rest.append(a)
        i += 1
    if len(rest) == 3 and rest[:2] == ["sshpiper", "authorized-keys"] and not rest[2].startswith("-"):
        return config, rest[2]
    return None


def _split_config(argv: list[str]) -> tuple[str | None, list[str]]:
    config, rest, i = None, [], 0
    while i < len(argv):
        a = argv[i]
        if a == "--config" and i + 1 < len(argv):
            config, i = argv[i + 1], i + 2
            continue
        if a.startswith("--config="):
            config = a.split("=", 1)[1]
        else:
            rest.append(a)
        i += 1
    return config, rest


def fast_recv(argv: list[str]) -> tuple[str | None, str] | None:
    """(config path, source host) when argv is exactly `[--config F] move recv --from HOST` (or `--from=HOST`):
    the form a receiver's authorized_keys forced command has. Any other flag goes to the full CLI."""
    config, rest = _split_config(argv)
    if len(rest) == 4 and rest[:3] == ["move", "recv", "--from"] and not rest[3].startswith("-"):
        return config, rest[3]
    if len(rest) == 3 and rest[:2] == ["move", "recv"] and rest[2].startswith("--from=") and len(rest[2]) > 7:
        return config, rest[2].split("=", 1)[1]
    return None


def _run_recv(config_path: str | None, source: str) -> int:
    """`move recv` without typer: the same action and error mapping as cli/move.py's command."""
    import os

    from cocalc_ctl.cli import common

    common.apply_globals(config=config_path, json=False, dry_run=False, verbose=False, quiet=False)
    try:
        from cocalc_ctl.actions.move import recv

        return recv.serve(common.config(), source, os.environ.get("SSH_ORIGINAL_COMMAND"))
    except BaseException as exc:  # noqa: BLE001 - every failure becomes its one line and exit code
        if isinstance(exc, SystemExit):
            raise
        return common.exit_for(exc)


GLOBAL_FLAGS = {"--json", "--dry-run", "-v", "--verbose", "-q", "--quiet", "--wide"}


def fast_path(argv: list[str]) -> int | None:
    """Exit code after answering argv without typer, or None when the full CLI must run."""
    _, words = _split_config(argv)
    words = [w for w in words if w not in GLOBAL_FLAGS]
    if "--" in words:
        return None
    if words == ["--version"] or (words and words[0] == "--version"):
        from cocalc_ctl import __version__

        print(f"cocalc-ctl {__version__}")
        return 0
    helps = [w for w in words if w in ("--help", "-h")]
    path = tuple(w for w in words if w not in ("--help", "-h"))
    if any(w.startswith("-") for w in path) or len(helps) > 1:
        return None
    if path and not helps:
        from cocalc_ctl.cli.helpcache import NOUNS

        if path[0] not in NOUNS and path[0] != "__complete":
            print(f"cocalc-ctl: error: No such command '{path[0]}'. (see `cocalc-ctl --help`)", file=sys.stderr)
            return 2
    import shutil

    if shutil.get_terminal_size().columns < 80:
        return None
    from cocalc_ctl.cli.helpcache import GROUPS, HELP

    if helps and words[-1] in ("--help", "-h") and path in HELP:
        sys.stdout.write(HELP[path])
        return 0
    if not helps and path in GROUPS and (path or not argv):  # `cocalc-ctl project`: the noun's help, exit 2 (as the full CLI does)
        sys.stderr.write(HELP[path])
        return 2
    return None


def _exit_now(code: int) -> None:
    """Flush and exit without the interpreter's teardown (as cli.main does: all work is done)."""
    try:
        sys.stdout.flush()
        sys.stderr.flush()
    except (BrokenPipeError, ValueError):
        pass
    import os

    os._exit(code)


def main() -> None:
    fast = fast_authorized_keys(sys.argv[1:])
    if fast is not None:
        from cocalc_ctl.actions.keys.sshauth import authorized_keys_fast

        sys.exit(authorized_keys_fast(fast[1], fast[0]))
    recv = fast_recv(sys.argv[1:]) if "recv" in sys.argv else None
    if recv is not None:
        _exit_now(_run_recv(*recv))
    if "start" in sys.argv:
        from cocalc_ctl.cli import fast_move

        args = fast_move.parse(sys.argv[1:])
        if args is not None:
            _exit_now(fast_move.run(args))
    code = fast_path(sys.argv[1:])
    if code is not None:
        sys.exit(code)
    config, rest = _split_config(sys.argv[1:])
    if rest[:1] == ["__complete"] and len(rest) in (2, 3):
        from cocalc_ctl.cli.complete import main as complete

        sys.exit(complete(rest[1], rest[2] if len(rest) == 3 else "", config))
    from cocalc_ctl.cli.main import main as cli_main

    cli_main()
