"""A trusted host that registers another host's ssh_server (its own row, through `keys register`) must
not get its own key pinned for that address: otherwise, with the network position to answer there,
it would receive the moves the hub ticketed to the other host (real hub PostgreSQL, real `keys sync`)."""

from __future__ import annotations

import pytest

from tests.support.keys import KeyHost

pytestmark = pytest.mark.integration


def test_a_host_claiming_another_hosts_address_gets_no_key_pinned_there(tmp_path, hub_dsn):
    a, b, c = (KeyHost(tmp_path / n, extra={"hub_dsn": hub_dsn, "ssh_server": s})
               for n, s in (("a", "127.0.0.2:2222"), ("b", "127.0.0.3:22"), ("c", "127.0.0.4:2200")))
    a.cli("hub", "migrate")
    for h in (a, b, c):
        h.cli("keys", "ensure")
        h.cli("keys", "register")
        h.cli("keys", "trust", h.host_id)

    def line(h, addr):
        return f"{addr} {' '.join(h.pub('sshpiperd/host_key').split()[:2])}"

    def pinned():
        b.cli("keys", "sync")
        return (b.data / "ssh" / "known_hosts").read_text().splitlines()

    kh = pinned()
    assert line(c, "[127.0.0.4]:2200") in kh and line(a, "[127.0.0.2]:2222") in kh
    # A, compromised, claims C's address as its own
    res = a.cli("keys", "register", env={"COCALC_CTL_SSH_SERVER": "127.0.0.4:2200"})
    assert res.returncode == 0
    kh = pinned()
    assert line(a, "[127.0.0.4]:2200") not in kh, kh
    assert not any(ln.startswith("[127.0.0.4]:2200 ") for ln in kh), kh  # nobody is pinned for a contested one
    res = b.cli("keys", "sync", check=False)
    assert "claimed by 2 trusted hosts" in res.stderr, res.stderr
    # the admin untrusts A: C's address is C's again
    b.cli("keys", "untrust", a.host_id)
    kh = pinned()
    assert line(c, "[127.0.0.4]:2200") in kh and not any(a.pub("sshpiperd/host_key").split()[1] in ln for ln in kh)
