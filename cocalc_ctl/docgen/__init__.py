"""Reference material generated from the CLI itself: shell completions, the man page, examples.

`model()` walks the typer/click command tree once into plain dataclasses; the generators in
`completions`, `man` and `examples` render from that, so adding a command updates every output
the next time `scripts/regenerate` runs (and the regenerate-and-diff tests notice if it did not).
"""

from __future__ import annotations

from dataclasses import dataclass, field

# Metavars whose values are paths: completed as files (or directories).
FILE_METAVARS = {"FILE", "PATH"}
DIR_METAVARS = {"DIR"}
# Metavars completed by calling `cocalc-ctl __complete KIND` (project ids from host sqlite, cached images).
DYNAMIC_METAVARS = {"PROJECT": "projects", "OTHER": "projects", "IMAGE": "images"}


def choices_of(metavar: str | None) -> list[str]:
    """Fixed values of an option: `pipe|staged|backup` lists them; JOB is a timers job name."""
    if not metavar:
        return []
    if "|" in metavar and " " not in metavar:
        return metavar.split("|")
    if metavar == "JOB":
        from cocalc_ctl.actions.ops.timers import job_names

        return job_names()
    return []


@dataclass
class Opt:
    names: list[str]
    takes_value: bool
    metavar: str | None
    help: str
    repeatable: bool = False

    @property
    def choices(self) -> list[str]:
        return choices_of(self.metavar) if self.takes_value else []

    @property
    def completes(self) -> str:
        """"file", "dir", "choice", "projects"/"images" (dynamic), "value" (free text) or "flag"."""
        if not self.takes_value:
            return "flag"
        if self.choices:
            return "choice"
        if self.metavar in DYNAMIC_METAVARS:
            return DYNAMIC_METAVARS[self.metavar]
        if self.metavar in DIR_METAVARS:
            return "dir"
        if self.metavar in FILE_METAVARS:
            return "file"
        return "value"


@dataclass
class Arg:
    name: str
    metavar: str
    help: str
    required: bool


@dataclass
class Cmd:
    path: tuple[str, ...]
    help: str
    short: str
    options: list[Opt] = field(default_factory=list)
    arguments: list[Arg] = field(default_factory=list)
    commands: list["Cmd"] = field(default_factory=list)

    @property
    def name(self) -> str:
        return " ".join(("cocalc-ctl", *self.path))

    @property
    def completes_args(self) -> str:
        """How positional words of this command complete: "projects" when it takes a project id, else "file"."""
        if self.arguments and DYNAMIC_METAVARS.get(self.arguments[0].metavar) == "projects":
            return "projects"
        return "file"

    def walk(self):
        yield self
        for c in self.commands:
            yield from c.walk()


HELP_OPT = Opt(["-h", "--help"], False, None, "Show the help and exit.")


def _clean(text: str | None) -> str:
    return (text or "").strip()


def _short(cmd) -> str:
    text = _clean(cmd.short_help or cmd.help)
    return text.split("\n\n")[0].replace("\n", " ").strip()


def _build(cmd, path: tuple[str, ...]) -> Cmd:
    out = Cmd(path, _clean(cmd.help), _short(cmd))
    for p in cmd.params:
        if getattr(p, "hidden", False) or not p.opts:
            continue
        if p.param_type_name == "option":
            names = list(p.opts) + list(p.secondary_opts or [])
            out.options.append(Opt(names, not p.is_flag, p.metavar, _clean(p.help), bool(p.multiple)))
        elif p.param_type_name == "argument":
            metavar = (p.metavar or p.name.upper()).strip("[]")
            out.arguments.append(Arg(p.name, metavar, _clean(getattr(p, "help", "")), bool(p.required)))
    out.options.append(HELP_OPT)
    for name, sub in getattr(cmd, "commands", {}).items():
        if not getattr(sub, "hidden", False):
            out.commands.append(_build(sub, (*path, name)))
    out.commands.sort(key=lambda c: c.path)
    return out


def model() -> Cmd:
    import typer

    from cocalc_ctl.cli.main import app

    return _build(typer.main.get_command(app), ())


def value_options(root: Cmd) -> list[str]:
    """Every option name (at any level) that takes a value: skipped with its value when walking argv."""
    names = set()
    for c in root.walk():
        for o in c.options:
            if o.takes_value:
                names.update(o.names)
    return sorted(names)
