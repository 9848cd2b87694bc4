"""`--help` of every command, captured in-process at a fixed width (for golden files)."""

from __future__ import annotations

import contextlib
import io
import os

from cocalc_ctl.docgen import model

WIDTH = "80"


def help_of(path: tuple[str, ...]) -> str:
    from cocalc_ctl.cli.main import run

    out = io.StringIO()
    saved = os.environ.get("COLUMNS")
    os.environ["COLUMNS"] = WIDTH
    try:
        with contextlib.redirect_stdout(out):
            code = run([*path, "--help"])
    finally:
        if saved is None:
            os.environ.pop("COLUMNS", None)
        else:
            os.environ["COLUMNS"] = saved
    if code != 0:
        raise RuntimeError(f"cocalc-ctl {' '.join(path)} --help exited {code}")
    return out.getvalue()


def golden_name(path: tuple[str, ...]) -> str:
    return "_".join(("cocalc-ctl", *path)) + ".txt"


def render_all() -> dict[str, str]:
    return {golden_name(c.path): help_of(c.path) for c in model().walk()}
