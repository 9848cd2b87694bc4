"""Reading a process's cgroup counters (v1 controllers or the v2 unified tree). No policy here.

On hybrid hosts (v1 memory and pids controllers next to an empty v2 tree) podman's `OOMKilled` stays
false even when the kernel killed a container's process for memory, so `project status` reads the
memory cgroup's own OOM-kill counter while the container runs.
"""

from __future__ import annotations

import os

ROOT = "/sys/fs/cgroup"


def _paths(pid: int) -> dict[str, str]:
    """{controller: cgroup path} of a process ('' = the v2 unified hierarchy)."""
    out: dict[str, str] = {}
    try:
        with open(f"/proc/{int(pid)}/cgroup", encoding="utf-8") as fh:
            for line in fh:
                parts = line.rstrip("\n").split(":", 2)
                if len(parts) == 3:
                    for ctl in parts[1].split(","):
                        out[ctl] = parts[2]
    except OSError:
        pass
    return out


def _read(path: str) -> str | None:
    try:
        with open(path, encoding="utf-8") as fh:
            return fh.read()
    except OSError:
        return None


def _field(text: str | None, key: str) -> int | None:
    for line in (text or "").splitlines():
        k, _, v = line.partition(" ")
        if k == key and v.strip().isdigit():
            return int(v)
    return None


def oom_kills(pid: int) -> int | None:
    """How many processes the kernel OOM-killed in the memory cgroup of `pid` (None: unknown)."""
    paths = _paths(pid)
    if "memory" in paths:
        return _field(_read(os.path.join(ROOT, "memory", paths["memory"].lstrip("/"), "memory.oom_control")),
                      "oom_kill")
    if "" in paths:
        return _field(_read(os.path.join(ROOT, paths[""].lstrip("/"), "memory.events")), "oom_kill")
    return None


def pids_current(pid: int) -> int | None:
    """Number of tasks in the pids cgroup of `pid` (None: unknown)."""
    paths = _paths(pid)
    base = os.path.join(ROOT, "pids", paths["pids"].lstrip("/")) if "pids" in paths else \
        os.path.join(ROOT, paths[""].lstrip("/")) if "" in paths else None
    text = _read(os.path.join(base, "pids.current")) if base else None
    return int(text) if text and text.strip().isdigit() else None
