"""`cocalc-ctl __complete projects|images [PREFIX]`: values for the shell completions, without typer.

Called by the generated bash/zsh/fish scripts on TAB: project ids from this host's sqlite (read-only,
never created or migrated) and images from the local rootfs cache. Prints one value per line and never
fails loudly: a missing config, pool or database just completes nothing.
"""

from __future__ import annotations

import sqlite3
import sys

KINDS = ("projects", "images")


def values(kind: str, config_path: str | None) -> list[str]:
    from cocalc_ctl import config as config_mod

    cfg = config_mod.load(config_path)
    if kind == "projects":
        from cocalc_ctl.state import host_db

        path = host_db.db_path(cfg.data_dir)
        if not path.exists():
            return []
        conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=1)
        try:
            return sorted(r[0] for r in conn.execute("SELECT project_id FROM projects"))
        finally:
            conn.close()
    from cocalc_ctl.actions.project import rootfs

    out = set()
    for key in rootfs.cached_keys(cfg):
        data = rootfs.read_marker(cfg, key)
        if data is not None:
            out.add(str(data.get("image") or key))
    return sorted(out)


def main(kind: str, prefix: str, config_path: str | None) -> int:
    if kind not in KINDS:
        print(f"cocalc-ctl: error: __complete takes one of {', '.join(KINDS)}", file=sys.stderr)
        return 2
    try:
        found = values(kind, config_path)
    except Exception:  # completion must never print a traceback into the user's prompt
        return 0
    for v in found:
        if v.startswith(prefix):
            print(v)
    return 0
