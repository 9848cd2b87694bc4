"""Fixtures for the move tests: two loopback hosts, each with a real sshd receiver."""

from __future__ import annotations

import contextlib

import pytest

from tests.support.move import Receiver, ensure_host_key, install_rig_hub


@contextlib.contextmanager
def _pair(make_host, workdir, b_size: str):
    a = make_host("a", "1G")
    b = make_host("b", b_size)
    ensure_host_key(a)
    ensure_host_key(b)
    receivers = []
    try:
        rb = Receiver(b, "127.0.0.3", workdir / "sshd-b").start()
        receivers.append(rb)
        rb.allow(a)
        ra = Receiver(a, "127.0.0.2", workdir / "sshd-a").start()
        receivers.append(ra)
        ra.allow(b)
        install_rig_hub([a, b], {rb.addr: b, ra.addr: a})
        yield a, b, rb, ra
    finally:
        for r in receivers:
            r.close()


@pytest.fixture
def pair(make_host, workdir):
    """(A, B, rb, ra): host A sends to B through sshd `rb` on 127.0.0.3 (and B to A through `ra`)."""
    with _pair(make_host, workdir, "1G") as p:
        yield p


@pytest.fixture
def small_pair(make_host, workdir):
    """Like `pair`, but B's pool is a tiny 128M filesystem (about 48M free)."""
    with _pair(make_host, workdir, "128M") as p:
        yield p
