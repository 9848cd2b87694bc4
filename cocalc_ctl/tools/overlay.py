"""overlayfs mount command lines and the option escaping they need.

overlayfs splits `lowerdir=` on `:` (several lower layers) and mount(8) splits options on `,`:
a `:` or `\\` in a path is escaped with a backslash, and a `,` cannot be expressed at all.
"""

from __future__ import annotations


def escape_path(path: str) -> str:
    if "," in path or "\n" in path:
        raise ValueError(f"path {path!r} cannot be an overlay layer (contains ',' or a newline)")
    return path.replace("\\", "\\\\").replace(":", "\\:")


def options(lower: str, upper: str, work: str) -> str:
    return f"lowerdir={escape_path(lower)},upperdir={escape_path(upper)},workdir={escape_path(work)}"


def mount(lower: str, upper: str, work: str, merged: str) -> list[str]:
    return ["mount", "-t", "overlay", "overlay", "-o", options(lower, upper, work), merged]


def lowerdir_of(mount_options: str) -> str | None:
    """The (escaped) lowerdir of a mountinfo super-options string."""
    # Split on commas that are option separators: overlay never prints a raw ',' inside a path.
    for opt in mount_options.split(","):
        if opt.startswith("lowerdir="):
            return opt[len("lowerdir="):]
    return None
