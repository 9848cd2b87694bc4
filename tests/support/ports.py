"""Loopback ports for test servers: pick a free one, and know when *our* server listens on it.

A port picked with bind(0) is free only until someone else binds it, and a connect() that succeeds
may reach another program. `wait_listening` therefore waits until the started process itself has a
listening socket on the port; a server that could not bind exits, and `bind_failed` tells the caller
to pick another port.
"""

from __future__ import annotations

import socket
import subprocess
import time

from tests.support.procfs import listening_ports

_IN_USE = ("address already in use", "cannot bind any address", "bind: address already in use")


def free_port(addr: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((addr, 0))
        return s.getsockname()[1]


def bind_failed(log_text: str) -> bool:
    """The server's output says its port was taken (so a retry on another port may work)."""
    low = log_text.lower()
    return any(m in low for m in _IN_USE)


def wait_listening(proc: subprocess.Popen, port: int, timeout: float = 60.0, what: str = "server") -> None:
    """Wait until `proc` listens on `port`. RuntimeError if it exits first, TimeoutError after `timeout`."""
    deadline = time.monotonic() + timeout
    while True:
        if port in listening_ports(proc.pid):
            return
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited with {proc.returncode} before listening on port {port}")
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} did not listen on port {port} within {timeout:.0f}s")
        time.sleep(0.05)
