"""man/cocalc-ctl.1 generated from the CLI's own help, the config schema and the exit codes.

One page with a section per noun (COMMANDS has a subsection per command), plus CONFIGURATION
(every schema key with its default and environment variable), EXIT STATUS, ENVIRONMENT, FILES.
The page carries no date, so regenerating it only changes it when the CLI changed.
"""

from __future__ import annotations

import re

from cocalc_ctl import __version__
from cocalc_ctl.docgen import Cmd, model

EXIT_CODES = [
    ("0", "success"),
    ("1", "the operation failed (an external command failed, a check failed)"),
    ("2", "usage error or invalid input (bad id, name, option or config value)"),
    ("3", "not found (project, snapshot, job)"),
    ("4", "busy: a lock is held by another run, a concurrency cap is reached, or the object is locked"),
    ("5", "a required external program is missing or a precondition is not met"),
]

FILES = [
    ("/etc/cocalc-ctl/config.yaml", "the configuration file"),
    ("/var/lib/cocalc-ctl/host.sqlite", "host state (projects, backup jobs, move log); under data_dir"),
    ("/var/lib/cocalc-ctl/secrets/", "private keys and tokens, mode 0700; under data_dir (secrets_dir)"),
    ("/var/lib/cocalc-ctl/locks/", "flock lock files; timers hold timer-<job>.lock while they run"),
    ("/mnt/cocalc/project-<uuid>/.snapshots/", "read-only snapshots of a project (btrfs_root)"),
    ("/etc/systemd/system/cocalc-ctl-*.{service,timer}", "units written by timers install"),
    ("/var/lib/prometheus/node-exporter/cocalc_ctl.prom", "metrics written by metrics write"),
]


def esc(text: str) -> str:
    """Escape text for roff: backslashes, hyphens, leading dots and quotes."""
    text = text.replace("\\", "\\e")
    text = text.replace("-", "\\-")  # a real minus everywhere, so options copy-paste correctly
    text = "".join(c if ord(c) < 128 else f"\\[u{ord(c):04X}]" for c in text)  # troff input is ASCII
    lines = []
    for line in text.split("\n"):
        if line.startswith((".", "'")):
            line = "\\&" + line
        lines.append(line)
    return "\n".join(lines)


def _paragraphs(text: str) -> list[str]:
    out = []
    for para in re.split(r"\n\s*\n", text.strip()):
        para = " ".join(para.split())
        if para:
            out.append(esc(para))
    return out


def _opt_head(o) -> str:
    names = ", ".join(f"\\fB{esc(n)}\\fR" for n in o.names)
    return names + (f" \\fI{esc(o.metavar)}\\fR" if o.takes_value and o.metavar else "")


def _usage(c: Cmd) -> str:
    parts = [f"\\fB{esc(c.name)}\\fR"]
    if any(o.names != ["-h", "--help"] for o in c.options):
        parts.append("[\\fIOPTIONS\\fR]")
    for a in c.arguments:
        parts.append(f"\\fI{esc(a.metavar)}\\fR" if a.required else f"[\\fI{esc(a.metavar)}\\fR]")
    if c.commands:
        parts.append("\\fICOMMAND\\fR")
    return " ".join(parts)


def _command(c: Cmd) -> list[str]:
    usage = _usage(c)
    lines = [f'.SS "{esc(c.name)}"'] + ([".PP", usage] if usage != f"\\fB{esc(c.name)}\\fR" else [])
    for p in _paragraphs(c.help):
        lines += [".PP", p]
    for a in c.arguments:
        lines += [".TP", f"\\fI{esc(a.metavar)}\\fR" + ("" if a.required else " (optional)"), esc(a.help or "")]
    for o in c.options:
        if o.names == ["-h", "--help"]:
            continue
        lines += [".TP", _opt_head(o), esc(" ".join(o.help.split())) + (" Repeatable." if o.repeatable else "")]
    return lines


def render(root: Cmd | None = None) -> str:
    from cocalc_ctl.config import SCHEMA, env_name

    root = root or model()
    out = [
        f'.TH COCALC\\-CTL 1 "" "cocalc\\-ctl {__version__}" "cocalc-ctl manual"',
        ".\\\" generated from the CLI by scripts/regenerate; do not edit",
        ".SH NAME",
        "cocalc\\-ctl \\- operate a CoCalc\\-style project host",
        ".SH SYNOPSIS",
        "\\fBcocalc\\-ctl\\fR [\\fIGLOBAL OPTIONS\\fR] \\fINOUN\\fR \\fIVERB\\fR [\\fIARGS\\fR]",
        ".br",
        "\\fBcocalc\\-ctl doctor\\fR [\\fB\\-\\-json\\fR]",
        ".SH DESCRIPTION",
    ]
    for i, p in enumerate(_paragraphs(root.help)):
        out += ([".PP"] if i else []) + [p]
    out += [".PP",
            "Global options may be given anywhere on the command line. With \\fB\\-\\-json\\fR every command "
            "prints one JSON document on stdout (JSON lines for progress) and logs on stderr; with "
            "\\fB\\-\\-dry\\-run\\fR it prints the exact commands it would run and changes nothing.",
            ".SH GLOBAL OPTIONS"]
    for o in root.options:
        out += [".TP", _opt_head(o), esc(" ".join(o.help.split()))]
    out.append(".SH COMMANDS")
    for c in root.walk():
        if c.path:  # every level: nouns, verbs and nested groups (`hub project add`)
            out += _command(c)
    out += [".SH CONFIGURATION",
            "Keys are read from the YAML config file (nested sections map to dotted keys, e.g. "
            "\\fBbackup:\\fR \\fBrepo:\\fR is \\fBbackup.repo\\fR); each can be overridden by an environment "
            "variable. \\fBcocalc\\-ctl config show\\fR prints the effective values and their sources."]
    for key in SCHEMA.values():
        default = "unset" if key.default is None else str(key.default)
        out += [".TP", f"\\fB{esc(key.name)}\\fR (\\fB{esc(env_name(key.name))}\\fR)",
                esc(key.help) + f". Default: {esc(default)}." + (" Secret: redacted in output." if key.secret else "")]
    out.append(".SH EXIT STATUS")
    for code, text in EXIT_CODES:
        out += [".TP", f"\\fB{code}\\fR", esc(text)]
    out += [".SH ENVIRONMENT",
            ".TP", "\\fBCOCALC_CTL_CONFIG\\fR", "path of the config file (overridden by \\fB\\-\\-config\\fR)",
            ".TP", "\\fBCOCALC_CTL_\\fR\\fIKEY\\fR", "overrides config key \\fIKEY\\fR (dots become underscores, "
            "upper case): see CONFIGURATION",
            ".SH FILES"]
    for path, text in FILES:
        out += [".TP", f"\\fI{esc(path)}\\fR", esc(text)]
    out += [".SH EXAMPLES",
            ".PP", "Check a host, then install its timers:",
            ".PP", ".nf", ".RS", "cocalc\\-ctl doctor", "cocalc\\-ctl timers install", "cocalc\\-ctl timers list",
            ".RE", ".fi",
            ".PP", "See what pruning would delete, without deleting:",
            ".PP", ".nf", ".RS", "cocalc\\-ctl \\-\\-dry\\-run snapshot prune PROJECT \\-\\-keep\\-daily 7", ".RE", ".fi",
            ".SH SEE ALSO",
            "\\fBbtrfs\\fR(8), \\fBrestic\\fR(1), \\fBpodman\\fR(1), \\fBsshd\\fR(8), \\fBsystemd.timer\\fR(5), "
            "\\fBsystemd.exec\\fR(5), \\fBcrontab\\fR(5)"]
    return "\n".join(out) + "\n"
