"""Reading /proc in tests, where any process may exit between being listed and being read."""

from __future__ import annotations

import os


def _read(path: str) -> bytes:
    try:
        with open(path, "rb") as fh:
            return fh.read()
    except OSError:  # the process is gone (or was never there)
        return b""


def children(pid: int) -> list[int]:
    """Direct children of `pid`, whichever of its threads started them (empty when it has exited)."""
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return []
    return sorted({int(x) for t in tasks for x in _read(f"/proc/{pid}/task/{t}/children").split()})


def comm(pid: int) -> str:
    """The process's short name, "" when it has exited."""
    return _read(f"/proc/{pid}/comm").decode(errors="replace").strip()


def cmdline(pid: int) -> str:
    """The process's command line joined by spaces, "" when it has exited."""
    return _read(f"/proc/{pid}/cmdline").replace(b"\0", b" ").decode(errors="replace").strip()


def exe(pid: int) -> str:
    """The path of the program the process runs, "" when it has exited (or is a kernel thread)."""
    try:
        return os.readlink(f"/proc/{pid}/exe")
    except OSError:
        return ""



def listening_ports(pid: int) -> set[int]:
    """TCP ports the process itself has a listening socket on (empty when it has exited). A connect()
    that succeeds may reach another program on that port; this says whether it is this one."""
    inodes = set()
    try:
        fds = os.listdir(f"/proc/{pid}/fd")
    except OSError:
        return set()
    for fd in fds:
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    ports = set()
    for table in ("tcp", "tcp6"):
        for line in _read(f"/proc/{pid}/net/{table}").decode(errors="replace").splitlines()[1:]:
            f = line.split()
            if len(f) > 9 and f[3] == "0A" and f[9] in inodes:  # 0A: LISTEN
                ports.add(int(f[1].rsplit(":", 1)[1], 16))
    return ports
