"""Fixtures for the move tests: two loopback hosts, each with a real sshd receiver."""

from __future__ import annotations

import pytest

from tests.support.move import Receiver, ensure_host_key


@pytest.fixture
def pair(make_host, workdir):
    """(A, B, rb, ra): host A sends to B through sshd `rb` on 127.0.0.3 (and B to A through `ra`)."""
    a = make_host("a", "1G")
    b = make_host("b", "1G")
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
        yield a, b, rb, ra
    finally:
        for r in receivers:
            r.close()

