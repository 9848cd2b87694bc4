"""Static bash, zsh and fish completion scripts generated from the command tree.

Static tables of commands, options and fixed option values (`--mode pipe|staged|backup`); only project
ids and cached images call back into `cocalc-ctl __complete projects|images` (a fast path that loads
neither typer nor rich and only reads this host's sqlite and rootfs cache). Each script finds
the command path typed so far by walking the words, skipping options and the value of any option
that takes one; global flags may appear anywhere (the CLI hoists them), so they are offered at
every level.
"""

from __future__ import annotations

from cocalc_ctl.docgen import Cmd, model, value_options

HEADER = "generated from the CLI by scripts/regenerate; do not edit"


def _subs(root: Cmd) -> dict[str, list[Cmd]]:
    return {c.name: c.commands for c in root.walk() if c.commands}


def _sh_words(items: list[str]) -> str:
    return " ".join(items)


def _squote(text: str) -> str:
    return "'" + text.replace("'", "'\\''") + "'"


def _per_command(root: Cmd, fixed, dynamic) -> list[str]:
    """`case "$cmdpath $prev"` arms: an option's fixed values or dynamic values, per command
    (`move start --mode` and `proxy serve --mode` take different values)."""
    lines = []
    for c in root.walk():
        for o in c.options:
            if o.completes == "choice":
                action = fixed(" ".join(o.choices))
            elif o.completes in ("projects", "images"):
                action = dynamic(o.completes)
            else:
                continue
            for n in o.names:
                lines.append(f"        {_squote(c.name + ' ' + n)}) {action}; return ;;")
    return lines


def _options_by_kind(root: Cmd) -> dict[str, set[str]]:
    """Every option name of the tree, by what its value completes to (file, dir, value, projects, images)."""
    kinds: dict[str, set[str]] = {"file": set(), "dir": set(), "value": set(), "projects": set(), "images": set()}
    for c in root.walk():
        for o in c.options:
            if o.completes in kinds:
                kinds[o.completes].update(o.names)
    return kinds


def _project_commands(root: Cmd) -> list[str]:
    """The leaf commands whose arguments are project ids."""
    return [c.name for c in root.walk() if c.path and not c.commands and c.completes_args == "projects"]


# -- bash --------------------------------------------------------------------------------------------

_BASH_WALK = [
    '    local cmdpath=cocalc-ctl i w cfg=',
    "    for ((i = 1; i < COMP_CWORD; i++)); do",
    '        w="${COMP_WORDS[i]}"',
    '        if [[ $w == --config ]]; then cfg="${COMP_WORDS[i+1]}"; fi',
    '        if [[ $valopts == *" $w "* ]]; then ((i++)); continue; fi',
    "        [[ $w == -* ]] && continue",
    '        if [[ -n ${subs[$cmdpath]+x} && " ${subs[$cmdpath]} " == *" $w "* ]]; then',
    '            cmdpath="$cmdpath $w"',
    "        fi",
    "    done",
    '    case "$cmdpath $prev" in',
]

_BASH_TAIL = [
    "    esac",
    '    if [[ $cur == -* ]]; then',
    '        COMPREPLY=($(compgen -W "${opts[$cmdpath]-} $globals" -- "$cur"))',
    '    elif [[ -n ${subs[$cmdpath]+x} ]]; then',
    '        COMPREPLY=($(compgen -W "${subs[$cmdpath]}" -- "$cur"))',
    '    elif [[ $projcmds == *"|$cmdpath|"* ]]; then',
    "        _cocalc_ctl_dyn projects",
    "    else",
    '        COMPREPLY=($(compgen -f -- "$cur"))',
    "    fi",
    "}",
    "",
    "# project ids (host sqlite) and cached images, from the same program the user typed",
    "_cocalc_ctl_dyn() {",
    '    local cur="${COMP_WORDS[COMP_CWORD]}" cfg=',
    "    local i",
    "    for ((i = 1; i < COMP_CWORD; i++)); do",
    '        [[ ${COMP_WORDS[i]} == --config ]] && cfg="${COMP_WORDS[i+1]}"',
    "    done",
    '    COMPREPLY=($(compgen -W "$("${COMP_WORDS[0]}" ${cfg:+--config "$cfg"} __complete "$1" "$cur" 2>/dev/null)" -- "$cur"))',
    "}",
    "complete -F _cocalc_ctl cocalc-ctl",
    "",
]


def _bash_tables(root: Cmd) -> list[str]:
    """The function's tables: subcommands and options per command path, global and value-taking options,
    the commands taking project ids."""
    lines = ["    local -A subs=("]
    for path, cmds in _subs(root).items():
        lines.append(f"        [{_squote(path)}]={_squote(_sh_words([c.path[-1] for c in cmds]))}")
    lines.append("    )")
    lines.append("    local -A opts=(")
    for c in root.walk():
        if c.path:
            names = [n for o in c.options for n in o.names]
            lines.append(f"        [{_squote(c.name)}]={_squote(_sh_words(names))}")
    lines.append("    )")
    lines.append(f"    local globals={_squote(_sh_words([n for o in root.options for n in o.names]))}")
    lines.append(f"    local valopts={_squote(' ' + _sh_words(value_options(root)) + ' ')}")
    lines.append(f"    local projcmds={_squote('|' + '|'.join(_project_commands(root)) + '|')}")
    return lines


def _bash_prev_cases(kinds: dict[str, set[str]]) -> list[str]:
    """`case "$prev"` arms: files, directories or nothing after an option taking such a value."""
    lines = []
    for n in sorted(kinds["file"] - kinds["dir"]):
        lines.append(f'        {n}) COMPREPLY=($(compgen -f -- "$cur")); return ;;')
    for n in sorted(kinds["dir"]):
        lines.append(f'        {n}) COMPREPLY=($(compgen -d -- "$cur")); return ;;')
    for n in sorted(kinds["value"] - kinds["file"] - kinds["dir"]):
        lines.append(f"        {n}) COMPREPLY=(); return ;;")
    return lines


def bash(root: Cmd | None = None) -> str:
    root = root or model()
    lines = [f"# bash completion for cocalc-ctl ({HEADER})", "",
             "_cocalc_ctl() {",
             '    local cur="${COMP_WORDS[COMP_CWORD]}" prev="${COMP_WORDS[COMP_CWORD-1]}"',
             *_bash_tables(root), *_BASH_WALK]
    lines += _per_command(root, lambda vals: f'COMPREPLY=($(compgen -W {_squote(vals)} -- "$cur"))',
                          lambda kind: f"_cocalc_ctl_dyn {kind}")
    lines += ["    esac", '    case "$prev" in', *_bash_prev_cases(_options_by_kind(root)), *_BASH_TAIL]
    return "\n".join(lines)


# -- zsh ---------------------------------------------------------------------------------------------

def _zq(text: str) -> str:
    """A zsh _describe entry: escape colons in the name part and quote the whole."""
    return _squote(text)


def _zdesc(text: str) -> str:
    return " ".join(text.split()).replace("[", "(").replace("]", ")")


_ZSH_WALK = [
    '    local cmdpath=cocalc-ctl w i cfg=',
    "    for ((i = 2; i < CURRENT; i++)); do",
    '        w="${words[i]}"',
    '        [[ $w == --config ]] && cfg="${words[i+1]}"',
    '        if [[ $valopts == *" $w "* ]]; then ((i++)); continue; fi',
    "        [[ $w == -* ]] && continue",
    '        if (( ${+subs[$cmdpath]} )) && [[ " ${subs[$cmdpath]} " == *" $w "* ]]; then',
    '            cmdpath="$cmdpath $w"',
    "        fi",
    "    done",
    '    case "$cmdpath ${words[CURRENT-1]}" in',
]

_ZSH_REGISTER = [
    "}",
    "",
    "# autoloaded from $fpath as _cocalc-ctl: complete now; sourced: register",
    "if [[ $zsh_eval_context[-1] == loadautofunc ]]; then",
    '    _cocalc_ctl "$@"',
    "else",
    "    compdef _cocalc_ctl cocalc-ctl",
    "fi",
    "",
]


def _zsh_prev_cases(kinds: dict[str, set[str]]) -> list[str]:
    lines = []
    for n in sorted(kinds["file"] - kinds["dir"]):
        lines.append(f"        {n}) _files; return ;;")
    for n in sorted(kinds["dir"]):
        lines.append(f"        {n}) _files -/; return ;;")
    for n in sorted(kinds["value"] - kinds["file"] - kinds["dir"]):
        lines.append(f"        {n}) _message {_squote(n.lstrip('-') + ' value')}; return ;;")
    return lines


def _zsh_descriptions(root: Cmd) -> list[str]:
    """`case "$cmdpath"` arms: each command's subcommands and options with their descriptions."""
    lines = []
    for c in root.walk():
        lines.append(f"        {_squote(c.name)})")
        if c.commands:
            entries = [_zq(f"{s.path[-1]}:{_zdesc(s.short)}") for s in c.commands]
            lines.append(f"            cmds=({' '.join(entries)})")
        opts = c.options + ([] if not c.path else [o for o in root.options if o.names != ["-h", "--help"]])
        entries = [_zq(f"{n}:{_zdesc(o.help)}") for o in opts for n in o.names]
        lines.append(f"            opts=({' '.join(entries)})")
        lines.append("            ;;")
    return lines


def zsh(root: Cmd | None = None) -> str:
    root = root or model()
    lines = ["#compdef cocalc-ctl", f"# zsh completion for cocalc-ctl ({HEADER})", "",
             "_cocalc_ctl() {",
             "    local -A subs",
             "    subs=("]
    for path, cmds in _subs(root).items():
        lines.append(f"        {_squote(path)} {_squote(' '.join(c.path[-1] for c in cmds))}")
    lines += ["    )",
              f"    local valopts={_squote(' ' + ' '.join(value_options(root)) + ' ')}",
              *_ZSH_WALK]
    lines += _per_command(root, lambda vals: f"compadd -- {vals}",
                          lambda kind: f'compadd -- ${{(f)"$(${{words[1]}} ${{cfg:+--config=$cfg}} __complete {kind} 2>/dev/null)"}}')
    lines += ["    esac",
              '    case "${words[CURRENT-1]}" in',
              *_zsh_prev_cases(_options_by_kind(root)),
              "    esac",
              "    local -a cmds opts",
              '    case "$cmdpath" in',
              *_zsh_descriptions(root)]
    lines += ["    esac",
              '    if [[ ${words[CURRENT]} == -* ]]; then',
              "        _describe -t options option opts",
              "    elif (( ${#cmds} )); then",
              "        _describe -t commands command cmds",
              f"    elif [[ {_squote('|' + '|'.join(_project_commands(root)) + '|')} == *\"|$cmdpath|\"* ]]; then",
              '        compadd -- ${(f)"$(${words[1]} ${cfg:+--config=$cfg} __complete projects 2>/dev/null)"}',
              "    else",
              "        _files",
              "    fi",
              *_ZSH_REGISTER]
    return "\n".join(lines)


# -- fish --------------------------------------------------------------------------------------------

def _fq(text: str) -> str:
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"


_FISH_FUNCTIONS = [
    "function __cocalc_ctl_path",
    "    set -l cmdpath cocalc-ctl",
    "    set -l skip 0",
    "    for w in (commandline -opc)[2..-1]",
    "        if test $skip = 1",
    "            set skip 0",
    "            continue",
    "        end",
    "        if contains -- $w $__cocalc_ctl_valopts",
    "            set skip 1",
    "            continue",
    "        end",
    "        string match -q -- '-*' $w; and continue",
    '        if contains -- "$cmdpath:$w" $__cocalc_ctl_subs',
    '            set cmdpath "$cmdpath $w"',
    "        end",
    "    end",
    '    echo "$cmdpath"',
    "end",
    "",
    "# project ids (host sqlite) and cached images, from the program the user typed",
    "function __cocalc_ctl_dyn",
    "    set -l words (commandline -opc)",
    "    set -l cfg",
    "    set -l i (contains -i -- --config $words)",
    "    and set cfg --config $words[(math $i + 1)]",
    "    command -q $words[1]; or return 0",
    "    command $words[1] $cfg __complete $argv[1] 2>/dev/null",
    "end",
    "",
    "complete -c cocalc-ctl -f",
]


def _fish_option(cond: str, o) -> str:
    """One `complete` line for option `o` under condition `cond`, with what its value completes to."""
    parts = ["complete -c cocalc-ctl", f"-n {_fq(cond)}"]
    for n in o.names:
        parts.append(f"-l {n[2:]}" if n.startswith("--") else f"-s {n[1:]}")
    if o.completes == "file":
        parts.append("-r -F")
    elif o.completes == "dir":
        parts.append("-r -F -a '(__fish_complete_directories)'")
    elif o.completes == "choice":
        parts.append(f"-x -a {_fq(' '.join(o.choices))}")
    elif o.completes in ("projects", "images"):
        parts.append(f"-x -a '(__cocalc_ctl_dyn {o.completes})'")
    elif o.completes == "value":
        parts.append("-x")
    if o.help:
        parts.append(f"-d {_fq(' '.join(o.help.split())[:90])}")
    return " ".join(parts)


def _fish_command(root: Cmd, c: Cmd) -> list[str]:
    """`complete` lines for command `c`: its subcommands, its options, its arguments."""
    cond = f'test (__cocalc_ctl_path) = "{c.name}"'
    lines = []
    for s in c.commands:
        lines.append(f"complete -c cocalc-ctl -n {_fq(cond)} -a {s.path[-1]} -d {_fq(' '.join(s.short.split())[:90])}")
    for o in c.options:
        lines.append(_fish_option(cond, o))
    if c.arguments and not c.commands:
        if c.completes_args == "projects":
            lines.append(f"complete -c cocalc-ctl -n {_fq(cond)} -a '(__cocalc_ctl_dyn projects)'")
        else:
            lines.append(f"complete -c cocalc-ctl -n {_fq(cond)} -F")
    return lines


def fish(root: Cmd | None = None) -> str:
    root = root or model()
    pairs = [f"{path}:{c.path[-1]}" for path, cmds in _subs(root).items() for c in cmds]
    lines = [f"# fish completion for cocalc-ctl ({HEADER})", "",
             f"set -g __cocalc_ctl_subs {' '.join(_fq(p) for p in pairs)}",
             f"set -g __cocalc_ctl_valopts {' '.join(_fq(v) for v in value_options(root))}",
             "",
             *_FISH_FUNCTIONS]
    for o in root.options:
        if o.names != ["-h", "--help"]:
            lines.append(_fish_option("true", o))
    for c in root.walk():
        lines += _fish_command(root, c)
    return "\n".join(lines) + "\n"


FILES = {"cocalc-ctl.bash": bash, "_cocalc-ctl": zsh, "cocalc-ctl.fish": fish}


def render_all(root: Cmd | None = None) -> dict[str, str]:
    root = root or model()
    return {name: fn(root) for name, fn in FILES.items()}
