"""Process entry point: answers sshd's AuthorizedKeysCommand before loading the CLI framework.

`cocalc-ctl [--config F] sshpiper authorized-keys USER` runs for every SSH login attempt on the move
receiver, so it skips typer/rich (tens of milliseconds of imports) and calls the decision directly.
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


def main() -> None:
    fast = fast_authorized_keys(sys.argv[1:])
    if fast is not None:
        from cocalc_ctl.actions.sshauth import authorized_keys_fast

        sys.exit(authorized_keys_fast(fast[1], fast[0]))
    config, rest = _split_config(sys.argv[1:])
    if rest[:1] == ["__complete"] and len(rest) in (2, 3):
        from cocalc_ctl.cli.complete import main as complete

        sys.exit(complete(rest[1], rest[2] if len(rest) == 3 else "", config))
    from cocalc_ctl.cli.main import main as cli_main

    cli_main()
