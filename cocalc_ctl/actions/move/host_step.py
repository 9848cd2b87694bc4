"""`move host-step`: the forced command a host runs for the hub's move worker (ssh transport).

The worker logs in as `cocalc-hub` (only hub keys are accepted for it) and sends one of these lines
in SSH_ORIGINAL_COMMAND; anything else is refused (logged, exit 2, nothing run). Every step that
changes state ends with `--ticket <T>`, the hub's signed move ticket, which the verb checks (this
host in the right role, this project, not expired, not replayed):

    project show <project>
    move send <project> --to <user@host:port> --mode pipe|staged --compress none|lz4|zstd
              --snapshot <name> [--bwlimit <rate>] --ticket <T>
    move send <project> --mode backup --snapshot <name> --ticket <T>
    move finalize <project> [--from-backup <backup-id>] [--quota <bytes>] --ticket <T>
    move cleanup <project> --force --ticket <T>
    move abort <project> --ticket <T>
    move release <project> --ticket <T>

The answer is the step's JSON result on stdout (JSON lines ending with the result for `send`).
"""

from __future__ import annotations

import re

from cocalc_ctl import ids
from cocalc_ctl.actions.move.recv import Refused
from cocalc_ctl.actions.move.transport import parse_peer
from cocalc_ctl.errors import InvalidInput

_SAFE = re.compile(r"[A-Za-z0-9._:+@/= -]+", re.ASCII)
_BACKUP_ID = re.compile(r"[0-9a-f]{8,64}", re.ASCII)
_BYTES = re.compile(r"[1-9][0-9]{0,18}", re.ASCII)
_RATE = re.compile(r"[0-9]+(\.[0-9]+)?[kKmMgG]?", re.ASCII)
_TICKET = re.compile(r"[A-Za-z0-9_.-]{1,1024}", re.ASCII)
MAX_COMMAND = 2048


def parse(command: str | None) -> list[str]:
    """Validate the worker's request; return the argv for `cocalc-ctl --json …` (with its ticket)."""
    words, ticket = _words_and_ticket(command)
    words, quota = _split_quota(words)
    try:
        argv = _step_argv(words, quota, ticket)
    except InvalidInput as exc:
        if isinstance(exc, Refused):
            raise
        raise Refused(f"refused host step: {exc.message}") from None
    if argv is None:
        raise Refused(f"refused host step {ids.quoted(command)}")
    return argv


def _words_and_ticket(command: str | None) -> tuple[list[str], list[str]]:
    """The command's words and its trailing `--ticket T` (required but for `project show`, refused there)."""
    if not command or len(command) > MAX_COMMAND or not _SAFE.fullmatch(command) or "  " in command \
            or command != command.strip():
        raise Refused(f"refused host step {ids.quoted(command)}")
    words = command.split(" ")
    ticket: list[str] = []
    if len(words) >= 2 and words[-2] == "--ticket":
        if not _TICKET.fullmatch(words[-1]):
            raise Refused("refused host step: malformed ticket")
        ticket, words = words[-2:], words[:-2]
    if words[:2] != ["project", "show"] and not ticket:
        raise Refused("refused host step: a step that changes state needs --ticket (the hub's signed move ticket)")
    if words[:2] == ["project", "show"] and ticket:
        raise Refused("refused host step: project show takes no ticket")
    return words, ticket


def _split_quota(words: list[str]) -> tuple[list[str], list[str]]:
    """A finalize's trailing `--quota BYTES`, split off."""
    if words[:2] == ["move", "finalize"] and len(words) >= 5 and words[-2] == "--quota":
        if not _BYTES.fullmatch(words[-1]):
            raise Refused(f"refused host step: quota {ids.quoted(words[-1])} (bytes, digits only)")
        return words[:-2], words[-2:]
    return words, []


def _step_argv(words: list[str], quota: list[str], ticket: list[str]) -> list[str] | None:
    """The argv of one of the known steps, its values validated; None for anything else."""
    if words[:2] == ["project", "show"] and len(words) == 3:
        return ["project", "show", ids.project_id(words[2])]
    if words[:2] in (["move", "abort"], ["move", "release"]) and len(words) == 3 and not quota:
        return [*words[:2], ids.project_id(words[2]), *ticket]
    if words[:2] == ["move", "finalize"] and len(words) == 3:
        return [*words[:2], ids.project_id(words[2]), *quota, *ticket]
    if words[:2] == ["move", "finalize"] and len(words) == 5 and words[3] == "--from-backup":
        if not _BACKUP_ID.fullmatch(words[4]):
            raise Refused(f"refused host step: backup id {ids.quoted(words[4])}")
        return ["move", "finalize", ids.project_id(words[2]), "--from-backup", words[4], *quota, *ticket]
    if words[:2] == ["move", "cleanup"] and len(words) == 4 and words[3] == "--force":
        return ["move", "cleanup", ids.project_id(words[2]), "--force", *ticket]
    if words[:2] == ["move", "send"] and len(words) >= 3:
        return [*_send_argv(ids.project_id(words[2]), words[3:]), *ticket]
    return None


def _send_argv(pid: str, opts: list[str]) -> list[str]:
    """`move send PID` with its options, each flag once with a valid value; backup mode takes only
    --mode and --snapshot, the others need --to and --snapshot."""
    argv = ["move", "send", pid]
    if len(opts) % 2:
        raise Refused("refused host step: options come in pairs")
    seen = set()
    for flag, value in zip(opts[::2], opts[1::2]):
        if flag in seen:
            raise Refused(f"refused host step: {flag} given twice")
        seen.add(flag)
        if flag == "--to":
            parse_peer(value)
        elif flag == "--mode" and value in ("pipe", "staged", "backup"):
            pass
        elif flag == "--compress" and value in ("none", "lz4", "zstd"):
            pass
        elif flag == "--snapshot":
            ids.snapshot_name(value)
        elif flag == "--bwlimit" and _RATE.fullmatch(value):
            pass
        else:
            raise Refused(f"refused host step: option {ids.quoted(flag)} {ids.quoted(value)}")
        argv += [flag, value]
    if dict(zip(opts[::2], opts[1::2])).get("--mode") == "backup":
        if seen != {"--mode", "--snapshot"}:
            raise Refused("refused host step: a backup-mode send takes only --mode and --snapshot")
    elif not {"--to", "--snapshot"} <= seen:
        raise Refused("refused host step: send needs --to and --snapshot")
    return argv
