"""The package's import graph: no cycles, and no module reaching into another module's `_private` names.

Built with `ast` from the source (module-level and function-local imports alike), so a cycle hidden in a
function body or a private name used as public API fails here, not in review.
"""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

import cocalc_ctl

ROOT = Path(cocalc_ctl.__file__).parent
PACKAGE = "cocalc_ctl"


def _modules(root: Path = ROOT) -> dict[str, Path]:
    mods = {}
    for p in sorted(root.rglob("*.py")):
        parts = (PACKAGE, *p.relative_to(root).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        mods[".".join(parts)] = p
    return mods


def _is_private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def _resolve(name: str, path: Path, node: ast.ImportFrom) -> str:
    if not node.level:
        return node.module or ""
    pkg = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
    base = pkg[: len(pkg) - node.level + 1]
    return ".".join(base + ([node.module] if node.module else []))


def analyse(mods: dict[str, Path]) -> tuple[dict[str, set[str]], list[str]]:
    """(import edges between our modules, cross-module private-name uses as readable lines)."""
    edges: dict[str, set[str]] = defaultdict(set)
    private: list[str] = []
    for name, path in mods.items():
        tree = ast.parse(path.read_text(), str(path))
        aliases: dict[str, str] = {}  # local name -> our module it is bound to
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom):
                mod = _resolve(name, path, node)
                if mod != PACKAGE and not mod.startswith(PACKAGE + "."):
                    continue
                for a in node.names:
                    sub = f"{mod}.{a.name}"
                    if sub in mods:
                        edges[name].add(sub)
                        aliases[a.asname or a.name] = sub
                    else:
                        edges[name].add(mod)
                        if _is_private(a.name) and mod != name:
                            private.append(f"{name}: from {mod} import {a.name}")
            elif isinstance(node, ast.Import):
                for a in node.names:
                    if a.name == PACKAGE or a.name.startswith(PACKAGE + "."):
                        edges[name].add(a.name)
                        if a.asname:
                            aliases[a.asname] = a.name
        for node in ast.walk(tree):
            if isinstance(node, ast.Attribute) and _is_private(node.attr):
                target = _dotted(node.value, aliases)
                if target in mods and target != name:
                    private.append(f"{name}: {target}.{node.attr}")
    return edges, private


def _dotted(node: ast.expr, aliases: dict[str, str]) -> str | None:
    """The module an expression like `proc` or `cocalc_ctl.proc` names, if it is one of ours."""
    if isinstance(node, ast.Name):
        return aliases.get(node.id)
    parts = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if isinstance(node, ast.Name) and node.id == PACKAGE:
        return ".".join([PACKAGE, *reversed(parts)])
    return None


def cycles(edges: dict[str, set[str]], nodes) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    found: list[list[str]] = []
    counter = 0
    for start in sorted(nodes):
        if start in index:
            continue
        work = [(start, iter(sorted(edges.get(start, ()))))]
        index[start] = low[start] = counter
        counter += 1
        stack.append(start)
        on.add(start)
        while work:
            v, it = work[-1]
            for w in it:
                if w not in nodes or w == v:
                    continue
                if w not in index:
                    index[w] = low[w] = counter
                    counter += 1
                    stack.append(w)
                    on.add(w)
                    work.append((w, iter(sorted(edges.get(w, ())))))
                    break
                if w in on:
                    low[v] = min(low[v], index[w])
            else:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[v])
                if low[v] == index[v]:
                    comp = []
                    while True:
                        w = stack.pop()
                        on.discard(w)
                        comp.append(w)
                        if w == v:
                            break
                    if len(comp) > 1:
                        found.append(sorted(comp))
    return found


def test_no_import_cycles():
    mods = _modules()
    edges, _ = analyse(mods)
    assert cycles(edges, set(mods)) == []


def test_capability_packages_import_nothing_on_their_own():
    """An actions package's __init__ is its map (a docstring): importing one module of it (as the
    start-up fast paths do) loads nothing else, and the graph above has every edge there is."""
    inits = sorted((ROOT / "actions").glob("*/__init__.py"))
    assert len(inits) >= 8
    for init in inits:
        tree = ast.parse(init.read_text())
        assert ast.get_docstring(tree), init
        assert [type(n).__name__ for n in tree.body] == ["Expr"], init
    assert sorted(p.name for p in (ROOT / "actions").glob("*.py")) == ["__init__.py"]


def test_no_private_names_across_modules():
    _, private = analyse(_modules())
    assert private == []


def test_the_checker_finds_a_cycle_and_a_private_import(tmp_path):
    pkg = tmp_path / PACKAGE
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "sub" / "__init__.py").write_text("")
    (pkg / "sub" / "a.py").write_text("def f():\n    from cocalc_ctl.sub import b\n")
    (pkg / "sub" / "b.py").write_text("from . import a\nfrom cocalc_ctl.sub.a import _hidden\n")
    (pkg / "c.py").write_text("from cocalc_ctl.sub import a\n\ndef g():\n    return a._hidden, a.__name__\n")
    mods = _modules(pkg)
    edges, private = analyse(mods)
    assert cycles(edges, set(mods)) == [["cocalc_ctl.sub.a", "cocalc_ctl.sub.b"]]
    assert sorted(private) == ["cocalc_ctl.c: cocalc_ctl.sub.a._hidden", "cocalc_ctl.sub.b: from cocalc_ctl.sub.a import _hidden"]
