"""Write (or with --check, compare) every generated file: completions, man page, examples, help goldens.

Run from a checkout: `scripts/regenerate` (or `python -m cocalc_ctl.docgen.regenerate`), after adding
or changing a command. `--check` exits 1 and names each file that is stale, missing or extra.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def outputs() -> dict[str, str]:
    """Path relative to the repository root -> content."""
    from cocalc_ctl.docgen import completions, examples, helpcache, helptext, man, model

    root = model()
    out = {f"completions/{n}": t for n, t in completions.render_all(root).items()}
    out["man/cocalc-ctl.1"] = man.render(root)
    out["cocalc_ctl/cli/helpcache.py"] = helpcache.render()
    out.update({f"examples/{n}": t for n, t in examples.render_all().items()})
    out.update({f"tests/golden/help/{n}": t for n, t in helptext.render_all().items()})
    return out


# Directories whose every file is generated: files there that are no longer produced are stale.
OWNED_DIRS = ["completions", "man", "examples/systemd", "tests/golden/help"]


def compare(repo: Path, files: dict[str, str]) -> list[str]:
    problems = []
    for rel, text in sorted(files.items()):
        p = repo / rel
        if not p.is_file():
            problems.append(f"missing {rel}")
        elif p.read_text(encoding="utf-8") != text:
            problems.append(f"stale   {rel}")
    for d in OWNED_DIRS:
        for p in sorted((repo / d).glob("*")) if (repo / d).is_dir() else []:
            rel = str(p.relative_to(repo))
            if p.is_file() and rel not in files:
                problems.append(f"extra   {rel}")
    return problems


def write(repo: Path, files: dict[str, str]) -> list[str]:
    changed = []
    for rel, text in sorted(files.items()):
        p = repo / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        if not p.is_file() or p.read_text(encoding="utf-8") != text:
            p.write_text(text, encoding="utf-8")
            changed.append(rel)
    for d in OWNED_DIRS:
        for p in sorted((repo / d).glob("*")) if (repo / d).is_dir() else []:
            if p.is_file() and str(p.relative_to(repo)) not in files:
                p.unlink()
                changed.append(f"{p.relative_to(repo)} (removed)")
    return changed


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="regenerate", description=__doc__.splitlines()[0])
    ap.add_argument("--check", action="store_true", help="compare only; exit 1 if anything is stale")
    ap.add_argument("--repo", default=str(Path(__file__).resolve().parents[2]), help="repository root")
    args = ap.parse_args(argv)
    repo = Path(args.repo)
    files = outputs()
    if args.check:
        problems = compare(repo, files)
        for p in problems:
            print(p)
        if problems:
            print("generated files are out of date: run scripts/regenerate", file=sys.stderr)
            return 1
        print(f"{len(files)} generated files are current")
        return 0
    for rel in write(repo, files):
        print(f"wrote {rel}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
