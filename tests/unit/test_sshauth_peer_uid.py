"""`sshpiper serve`'s peer check: the owner of the connecting socket, read from /proc/net/tcp{,6}."""

from __future__ import annotations

import socket

from cocalc_ctl.actions.keys.sshauth_server import _hex_addr, _unmapped, socket_owner

HEADER = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n"


def row(n: int, local: str, remote: str, uid: int) -> str:
    return f"   {n}: {local} {remote} 01 00000000:00000000 00:00000000 00000000 {uid:>5}        0 {1000 + n} 1 0\n"


def test_hex_addr_is_procs_host_order_form():
    assert _hex_addr("127.0.0.1") == "0100007F"  # little-endian word, as the kernel prints it
    assert _hex_addr("::1") == "00000000000000000000000001000000"
    assert _hex_addr("not an address") is None


def test_owner_is_the_row_of_the_peers_socket_not_ours(tmp_path):
    # our accepted socket (local 8089, remote 40000, uid 0) and the client's (local 40000, remote 8089, uid 65534)
    (tmp_path / "tcp").write_text(HEADER + row(0, "0100007F:1F99", "0100007F:9C40", 0)
                                  + row(1, "0100007F:9C40", "0100007F:1F99", 65534)
                                  + row(2, "0100007F:9C41", "0100007F:1F99", 1000))
    (tmp_path / "tcp6").write_text(HEADER)
    peer, local = ("127.0.0.1", 40000), ("127.0.0.1", 8089)
    assert socket_owner(peer, local, proc_net=str(tmp_path)) == 65534
    assert socket_owner(("127.0.0.1", 40001), local, proc_net=str(tmp_path)) == 1000
    assert socket_owner(("127.0.0.1", 40002), local, proc_net=str(tmp_path)) is None  # no such socket: deny
    assert socket_owner(("10.0.0.9", 40000), local, proc_net=str(tmp_path)) is None  # a remote peer


def test_real_loopback_connection_is_owned_by_us():
    import os

    with socket.socket() as srv:
        srv.bind(("127.0.0.1", 0))
        srv.listen()
        with socket.create_connection(srv.getsockname()) as c:
            a, peer = srv.accept()
            with a:
                assert socket_owner(peer, a.getsockname()) == os.geteuid()
                assert c  # keep the client open while looking


def test_ipv4_mapped_peer_is_looked_up_as_ipv4():
    assert _unmapped(("::ffff:127.0.0.1", 5, 0, 0)) == ("127.0.0.1", 5)
    assert _unmapped(("::1", 5, 0, 0)) == ("::1", 5, 0, 0)
