"""One way to write a whole file atomically: `safepath.write_atomic` (root's own paths) or
`safepath.write_file` (under a project tree). Any other module renaming a temporary into place is a
second, hand-rolled way (with its own ideas about fsync, modes and cleanup), so this scan fails on every
rename outside safepath except the moves listed below, which move trees, not freshly written files.

Built with `ast` like test_import_graph: `os.rename`/`os.replace`/`os.renames`, `shutil.move`, the
one-argument `<path>.rename(x)`/`<path>.replace(x)` of pathlib (str.replace takes two), and
`from os import rename` all count.
"""

from __future__ import annotations

import ast
from pathlib import Path

from tests.unit.test_import_graph import _modules

HELPER = "cocalc_ctl.safepath"

# (module, function, the source of the renamed thing): renames that move directories, subvolumes or a
# file written by another program, never a file the module itself just wrote.
ALLOWED = {
    # trash a project subvolume (a btrfs subvolume moves by rename)
    ("cocalc_ctl.actions.project.projects", "_rename_aside", "path"),
    # swap a pulled image tree into the cache: the old tree aside, the new one in place
    ("cocalc_ctl.actions.project.rootfs", "pull", "entry"),
    ("cocalc_ctl.actions.project.rootfs", "pull", "new_root"),
    # the ssh bundle directory (programs + libraries), built beside its final name
    ("cocalc_ctl.actions.project.project_ssh", "ensure_bundle", "tmp"),
    # the host key file is written by dropbearkey (a child process that needs a path), under umask 077
    ("cocalc_ctl.actions.project.project_ssh", "ensure_host_key", "tmp"),
    # the persist store directory, unpacked from the sender's tar beside its final name
    ("cocalc_ctl.actions.move.recv", "_persist", "tmp"),
    # the persist store directory into its place after a move
    ("cocalc_ctl.actions.move.finalize", "_restore_persist", "str(src)"),
    # restore: subvolumes and the persist directory swapped in and out (staging, aside, rollback)
    ("cocalc_ctl.actions.backup.restore", "_rename", "src"),
    # restore: a path moved between the live project and the restore area, by directory fds
    ("cocalc_ctl.actions.backup.restore", "_move_between", "src[-1]"),
    ("cocalc_ctl.actions.backup.restore", "_restore_path", "name"),
    ("cocalc_ctl.actions.backup.restore", "_restore_path", "rel"),
    ("cocalc_ctl.actions.backup.restore", "_restore_path", "'.old'"),
}


def _is_rename(call: ast.Call) -> bool:
    f = call.func
    if isinstance(f, ast.Attribute) and isinstance(f.value, ast.Name):
        if f.value.id == "os" and f.attr in ("rename", "replace", "renames"):
            return True
        if f.value.id == "shutil" and f.attr == "move":
            return True
    if isinstance(f, ast.Attribute) and f.attr in ("rename", "replace"):
        return len(call.args) == 1 and not call.keywords  # pathlib; str.replace has two arguments
    return False


def renames(mods: dict[str, Path]) -> set[tuple[str, str, str]]:
    """Every rename call outside the helper's module: (module, enclosing function, renamed thing)."""
    found: set[tuple[str, str, str]] = set()
    for name, path in mods.items():
        if name == HELPER:
            continue
        tree = ast.parse(path.read_text(), str(path))

        def visit(node: ast.AST, fn: str) -> None:
            for child in ast.iter_child_nodes(node):
                here = child.name if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)) else fn
                if isinstance(child, ast.ImportFrom) and child.module == "os":
                    for a in child.names:
                        if a.name in ("rename", "replace", "renames"):
                            found.add((name, here, f"from os import {a.name}"))
                if isinstance(child, ast.Call) and _is_rename(child):
                    src = ast.unparse(child.args[0] if child.args else child.func)
                    if isinstance(child.func.value, ast.Name) and child.func.value.id in ("os", "shutil"):
                        found.add((name, here, src))
                    else:
                        found.add((name, here, ast.unparse(child.func.value)))
                visit(child, here)

        visit(tree, "<module>")
    return found


def test_only_the_helper_renames_a_written_file_into_place():
    found = renames(_modules())
    assert sorted(found - ALLOWED) == [], "write files with safepath.write_atomic / safepath.write_file"


def test_the_allowlist_has_no_stale_entries():
    assert sorted(ALLOWED - renames(_modules())) == []


def test_the_scan_finds_hand_rolled_atomic_writes(tmp_path):
    pkg = tmp_path / "cocalc_ctl"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "safepath.py").write_text("import os\n\ndef commit(t, n):\n    os.rename(t, n)\n")
    (pkg / "a.py").write_text(
        "import os\nfrom os import replace\n\n"
        "def save(path, text):\n    tmp = path.with_name('x.tmp')\n    tmp.write_text(text)\n"
        "    os.replace(tmp, path)\n    tmp.rename(path)\n    return text.replace('a', 'b')\n")
    found = renames(_modules(pkg))
    # os.replace(tmp, …) and tmp.rename(…) both name `tmp`; text.replace is no rename; safepath may
    assert sorted(found) == [("cocalc_ctl.a", "<module>", "from os import replace"), ("cocalc_ctl.a", "save", "tmp")]
    (pkg / "a.py").write_text("import shutil\n\ndef f(a, b):\n    shutil.move(a, b)\n")
    assert renames(_modules(pkg)) == {("cocalc_ctl.a", "f", "a")}
