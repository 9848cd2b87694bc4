"""Mount table lookups (reads /proc/self/mountinfo) and mount/loop command builders."""

from __future__ import annotations

import os
from dataclasses import dataclass


@dataclass
class Mount:
    mountpoint: str
    fstype: str
    source: str
    options: str  # the filesystem's (super block) options
    mount_options: str = ""  # this mount's own flags (nosuid, nodev, ro, ...)


def _unescape(field: str) -> str:
    # mountinfo escapes space, tab, newline and backslash as octal.
    out, i = [], 0
    while i < len(field):
        if field[i] == "\\" and i + 4 <= len(field) and field[i + 1:i + 4].isdigit():
            out.append(chr(int(field[i + 1:i + 4], 8)))
            i += 4
        else:
            out.append(field[i])
            i += 1
    return "".join(out)


def mounts(mountinfo: str = "/proc/self/mountinfo") -> list[Mount]:
    result = []
    with open(mountinfo, encoding="utf-8", errors="surrogateescape") as fh:
        for line in fh:
            left, _, right = line.partition(" - ")
            lf, rf = left.split(), right.split()
            if len(lf) < 5 or len(rf) < 2:
                continue
            result.append(Mount(_unescape(lf[4]), rf[0], _unescape(rf[1]), rf[2] if len(rf) > 2 else "",
                                lf[5] if len(lf) > 5 else ""))
    return result


def mount_at(path: str) -> Mount | None:
    """The mount whose mount point is exactly `path` (the last one if stacked)."""
    real = os.path.realpath(path)
    found = None
    for m in mounts():
        if m.mountpoint == real:
            found = m
    return found


def fstype_of(path: str) -> str | None:
    """Filesystem type of the mount containing `path`."""
    real = os.path.realpath(path)
    best: Mount | None = None
    for m in mounts():
        mp = m.mountpoint
        if real == mp or real.startswith(mp.rstrip("/") + "/") or mp == "/":
            if best is None or len(mp) >= len(best.mountpoint):
                best = m
    return best.fstype if best else None


def mount_loop(image: str, mountpoint: str, options: str | None = None) -> list[str]:
    return ["mount", "-o", "loop" + (f",{options}" if options else ""), image, mountpoint]


def remount(mountpoint: str, options: str) -> list[str]:
    return ["mount", "-o", f"remount,{options}", mountpoint]


def umount(mountpoint: str) -> list[str]:
    return ["umount", mountpoint]


def losetup_detach(device: str) -> list[str]:
    return ["losetup", "-d", device]


def truncate(path: str, size: int) -> list[str]:
    return ["truncate", "-s", str(size), path]
