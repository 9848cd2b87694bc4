"""`move start` without the CLI framework: the hub's most frequent short command, answered before
typer is loaded (building the command tree costs about as much as the move's own transaction).

Only the plain forms take this path — `[--config F] [--json] [-q] move start PROJECT` with
`--to`/`--mode`/`--compress` each at most once (`--opt VALUE` or `--opt=VALUE`); anything else
(`--dry-run`, `-v`, `--help`, a repeated or unknown option) goes to the full CLI. Output, errors and
exit codes are the full CLI's: the same action, the same `render`/`done`, the same `exit_for`.
"""

from __future__ import annotations

OPTIONS = ("--to", "--mode", "--compress")
FLAGS = ("--json", "-q", "--quiet")


def parse(argv: list[str]) -> dict | None:
    """The fast path's arguments, or None when the full CLI must parse argv."""
    config, flags, words, opts = None, set(), [], {}
    i = 0
    while i < len(argv):
        a = argv[i]
        name, eq, value = a.partition("=")
        if a == "--config" or (eq and name == "--config"):
            if config is not None or (not eq and i + 1 >= len(argv)):
                return None
            config, i = (value, i + 1) if eq else (argv[i + 1], i + 2)
            continue
        if a in FLAGS:
            flags.add("--quiet" if a == "-q" else a)
        elif name in OPTIONS and words[:2] == ["move", "start"]:
            if name[2:] in opts:
                return None
            if not eq:
                if i + 1 >= len(argv):
                    return None
                value, i = argv[i + 1], i + 1
            if not value or value.startswith("-"):
                return None
            opts[name[2:]] = value
        elif a.startswith("-") or len(words) >= 3:
            return None
        else:
            words.append(a)
        i += 1
    if words[:2] != ["move", "start"] or len(words) != 3:
        return None
    return {"config": config, "json": "--json" in flags, "quiet": "--quiet" in flags, "project": words[2], **opts}


def run(args: dict) -> int:
    from cocalc_ctl.cli import common

    common.apply_globals(config=args["config"], json=args["json"], dry_run=False, verbose=False,
                         quiet=args["quiet"])
    try:
        from cocalc_ctl.actions.move import hub

        result = hub.start(common.config(), args["project"], to=args.get("to"), mode=args.get("mode"),
                           compress=args.get("compress"))
        common.render(result, lambda m: common.done(f"move of {m.project_id} to {m.dest_host_id}: {m.state}"
                                                    + (f" ({m.status_reason})" if m.status_reason else "")))
        return 0
    except BaseException as exc:  # noqa: BLE001 - every failure becomes its one line and exit code
        if isinstance(exc, SystemExit):
            raise
        return common.exit_for(exc)
