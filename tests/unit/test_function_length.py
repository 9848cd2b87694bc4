"""No function in cocalc_ctl is longer than MAX_LINES: a longer one mixes steps that want names.

Counted with `ast` from the `def` line to the function's last line (docstring and comments included,
decorators not). The exceptions are listed by name with their reason; each carries a one-line comment
saying why at the function itself.
"""

from __future__ import annotations

import ast
from pathlib import Path

from tests.unit.test_import_graph import _modules

MAX_LINES = 60

KEPT = {
    # the proxy's per-request / per-chunk hot paths: a call per step costs measurable time (benchmarks/)
    "cocalc_ctl.proxy.http1.parse_request_head": "parses every request head; kept flat for speed",
    "cocalc_ctl.proxy.fastupstream.UpstreamProtocol.data_received": "runs per chunk of every fast-path response",
}


def long_functions(mods: dict[str, Path], limit: int = MAX_LINES, *, where: dict | None = None) -> dict[str, int]:
    """Qualified name (module.Class.function, nested functions too) -> lines, for each over `limit`;
    `where` (if given) gets each one's (file, line of its def)."""
    found: dict[str, int] = {}
    for name, path in mods.items():
        tree = ast.parse(path.read_text(), str(path))

        def visit(node: ast.AST, prefix: str) -> None:
            for child in ast.iter_child_nodes(node):
                if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                    qual = f"{prefix}.{child.name}"
                    if not isinstance(child, ast.ClassDef):
                        lines = child.end_lineno - child.lineno + 1
                        if lines > limit:
                            found[qual] = lines
                            if where is not None:
                                where[qual] = (path, child.lineno)
                    visit(child, qual)
                else:
                    visit(child, prefix)

        visit(tree, name)
    return found


def test_no_function_is_longer_than_the_limit():
    over = long_functions(_modules())
    assert {k: v for k, v in over.items() if k not in KEPT} == {}, \
        "split these into named steps (or, for a measured hot path, add them to KEPT with the reason)"


def test_every_kept_exception_is_still_long_and_says_why_at_the_function():
    where: dict = {}
    over = long_functions(_modules(), where=where)
    for qual in KEPT:
        assert qual in over, f"{qual} is short now: drop it from KEPT"
        path, lineno = where[qual]
        above = path.read_text().splitlines()[lineno - 2]
        assert above.lstrip().startswith("# Kept flat"), f"{qual}: no comment saying why above its def"


def test_the_checker_counts_methods_and_nested_functions(tmp_path):
    pkg = tmp_path / "cocalc_ctl"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    body = "\n".join(f"    x{i} = {i}" for i in range(60))
    (pkg / "m.py").write_text(
        f"def short():\n    return 1\n\n\ndef long():\n{body}\n\n\n"
        f"class C:\n    def meth(self):\n    {body.replace(chr(10), chr(10) + '    ')}\n\n"
        f"def outer():\n    def inner():\n    {body.replace(chr(10), chr(10) + '    ')}\n    return inner\n")
    assert long_functions(_modules(pkg)) == {"cocalc_ctl.m.long": 61, "cocalc_ctl.m.C.meth": 61,
                                             "cocalc_ctl.m.outer": 63, "cocalc_ctl.m.outer.inner": 61}
