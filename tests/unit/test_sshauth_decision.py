"""The auth decision, the REST endpoint (spoken in the plugin's own request form), authorized-keys
and keys-refresh, against real files and a real host sqlite."""

from __future__ import annotations

import json
import os
import stat
import time
import uuid
from urllib.parse import quote_plus

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from tests.support.keys import KeyHost, PluginClient, rest_server

P = "1b4e28ba-2fa1-41d2-883f-0016d3cca427"
EMPTY = {"user": "", "host": "", "authorizedKeys": "", "privateKey": ""}


@pytest.fixture
def kh(tmp_path) -> KeyHost:
    h = KeyHost(tmp_path / "a")
    h.cli("keys", "ensure")
    return h


@pytest.fixture
def peer(tmp_path) -> KeyHost:
    h = KeyHost(tmp_path / "peer")
    h.cli("keys", "ensure")
    return h


def user_key(n: int) -> str:
    import base64
    import struct

    blob = struct.pack(">I", 11) + b"ssh-ed25519" + struct.pack(">I", 32) + bytes([n]) * 32
    return f"ssh-ed25519 {base64.b64encode(blob).decode()} user{n}@example"


def token(h: KeyHost) -> str:
    return (h.secrets / "sshpiper" / "token").read_text().strip()


def test_running_project_gets_all_three_key_sources(kh):
    kh.set_project(P, keys=user_key(1))
    root = kh.pool / f"project-{P}"
    (root / ".ssh" / ".cocalc").mkdir(parents=True)
    (root / ".ssh" / ".cocalc" / "authorized_keys").write_text(user_key(2) + "\n# comment\ngarbage line\n")
    (root / ".ssh" / "authorized_keys").write_text(user_key(3) + "\n" + user_key(1) + "\n")
    d = kh.json("sshpiper", "auth", f"project-{P}")
    assert d["allowed"] and d["upstream_host"] == f"127.0.0.1:{kh.held_port}" and d["upstream_user"] == "user"
    assert d["authorized_keys"] == [user_key(1), user_key(2), user_key(3)]
    assert kh.cli("sshpiper", "authorized-keys", P.replace("-", "")).stdout.splitlines() == d["authorized_keys"]


def test_stopped_or_unknown_project_is_denied(kh):
    kh.set_project(P, state="stopped", keys=user_key(1))
    assert kh.json("sshpiper", "auth", P)["reason"] == "project is not running"
    kh.set_project(P, state="running", ssh_port=None, keys=user_key(1))
    assert not kh.json("sshpiper", "auth", P)["allowed"]
    other = str(uuid.uuid4())
    assert kh.json("sshpiper", "auth", other)["reason"] == "project is not on this host"
    res = kh.cli("sshpiper", "authorized-keys", other)
    assert res.returncode == 0 and res.stdout == ""


def test_symlinked_fifo_and_oversized_key_files_are_skipped(kh, tmp_path):
    kh.set_project(P, keys=user_key(1))
    root = kh.pool / f"project-{P}"
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "authorized_keys").write_text(user_key(9) + "\n")
    os.symlink(outside, root / ".ssh")  # the project owner points .ssh at a file they must not inject
    d = kh.json("sshpiper", "auth", P)
    assert d["authorized_keys"] == [user_key(1)]
    os.unlink(root / ".ssh")
    (root / ".ssh" / ".cocalc").mkdir(parents=True)
    os.mkfifo(root / ".ssh" / "authorized_keys")  # must not hang the hook
    (root / ".ssh" / ".cocalc" / "authorized_keys").write_text((user_key(5) + "\n") * 20000)
    t = time.monotonic()
    res = kh.cli("--json", "sshpiper", "auth", P)
    assert time.monotonic() - t < 20
    assert json.loads(res.stdout)["authorized_keys"] == [user_key(1)]
    assert "not a regular file" in res.stderr and "more than" in res.stderr


def test_peer_users_get_only_that_trusted_peers_key(kh, peer):
    h2h = peer.pub("host-to-host/id_ed25519")
    kh.add_peer(peer.host_id, h2h)
    d = kh.json("sshpiper", "auth", f"btrfs-{peer.host_id}")
    assert d["allowed"] and d["authorized_keys"] == [h2h]
    assert d["upstream_user"] == f"btrfs-{peer.host_id}" and d["upstream_host"] == "127.0.0.1:2222"
    lines = kh.cli("sshpiper", "authorized-keys", f"btrfs-{peer.host_id}").stdout.splitlines()
    assert len(lines) == 2  # the peer's key, and this host's sshpiperd relaying that peer
    for line in lines:
        assert line.startswith(f'restrict,command="/usr/local/bin/cocalc-ctl --config {kh.config_path} '
                               f'move recv --from {peer.host_id}" ssh-ed25519 ')
    assert h2h.split()[1] in lines[0]
    # sshpiperd relays with its relay key; the upstream key (project containers) is never accepted here
    relay = kh.pub("sshpiper/relay_key").split()[1]
    assert relay in lines[1]
    upstream = kh.pub("sshpiper/upstream_key").split()[1]
    assert not any(upstream in line for line in lines)
    # project-host-<uuid> is gone: a peer's key never reaches `move host-step`
    assert kh.cli("sshpiper", "authorized-keys", f"project-host-{peer.host_id}").stdout == ""
    assert not kh.json("sshpiper", "auth", f"project-host-{peer.host_id}")["allowed"]
    # the hub's move worker logs in as cocalc-hub with a pinned hub key only, and may only run host-step
    assert not kh.json("sshpiper", "auth", "cocalc-hub")["allowed"]  # no hub key pinned yet
    assert kh.cli("sshpiper", "authorized-keys", "cocalc-hub").stdout == ""  # not even the relay key
    hub_key = peer.pub("sshpiperd/host_key").replace("sshpiperd", "hub")  # any ed25519 key stands in
    kh.pin_hub_keys([hub_key])
    d = kh.json("sshpiper", "auth", "cocalc-hub")
    assert d["allowed"] and d["authorized_keys"] == [hub_key] and h2h not in d["authorized_keys"]
    host_lines = kh.cli("sshpiper", "authorized-keys", "cocalc-hub").stdout.splitlines()
    # the hub's key, and this host's sshpiperd relaying the hub; never the upstream key
    assert len(host_lines) == 2 and hub_key.split()[1] in host_lines[0] and relay in host_lines[1]
    assert not any(upstream in line for line in host_lines)
    assert host_lines and all(
        line.startswith(f'restrict,command="/usr/local/bin/cocalc-ctl --config {kh.config_path} move host-step" ')
        for line in host_lines)
    assert not any(h2h.split()[1] in line for line in host_lines)
    kh.add_peer(peer.host_id, h2h, trusted=False)
    assert kh.cli("sshpiper", "authorized-keys", f"btrfs-{peer.host_id}").stdout == ""


def test_keys_refresh_writes_managed_file_with_modes_and_empties_it(kh):
    kh.set_project(P, keys=user_key(1) + "\n" + user_key(2))
    root = kh.pool / f"project-{P}"
    kh.cli("sshpiper", "keys-refresh", P)
    f = root / ".ssh" / ".cocalc" / "authorized_keys"
    assert f.read_text().splitlines() == [user_key(1), user_key(2)]
    assert stat.S_IMODE(f.stat().st_mode) == 0o600
    assert stat.S_IMODE((root / ".ssh" / ".cocalc").stat().st_mode) == 0o700
    assert stat.S_IMODE((root / ".ssh").stat().st_mode) == 0o700
    kh.set_project(P, keys=None)
    kh.cli("sshpiper", "keys-refresh", P)
    assert f.read_text() == ""


def test_keys_refresh_refuses_a_planted_symlink(kh, tmp_path):
    kh.set_project(P, keys=user_key(1))
    root = kh.pool / f"project-{P}"
    target = tmp_path / "victim"
    target.mkdir()
    os.symlink(target, root / ".ssh")
    res = kh.cli("sshpiper", "keys-refresh", P, check=False)
    assert res.returncode == 5 and not any(target.iterdir())


# -- the REST endpoint --------------------------------------------------------------------------

def test_rest_contract_allow_deny_wrong_token_healthz(kh, peer):
    kh.set_project(P, keys=user_key(1))
    kh.add_peer(peer.host_id, peer.pub("host-to-host/id_ed25519"))
    with rest_server(kh) as (port, proc):
        c = PluginClient("127.0.0.1", port)
        tok = token(kh)
        status, body = c.lookup(tok, f"project-{P}")
        assert status == 200 and set(body) == {"user", "host", "authorizedKeys", "privateKey"}
        assert body["host"] == f"127.0.0.1:{kh.held_port}" and body["user"] == "user"
        assert body["authorizedKeys"] == user_key(1) + "\n"
        assert body["privateKey"] == (kh.secrets / "sshpiper" / "upstream_key").read_text()
        status, body = c.lookup(tok, f"btrfs-{peer.host_id}")
        assert body["authorizedKeys"].split()[:2] == peer.pub("host-to-host/id_ed25519").split()[:2]
        assert body["host"] == "127.0.0.1:2222" and body["user"] == f"btrfs-{peer.host_id}"
        assert body["privateKey"] == (kh.secrets / "sshpiper" / "relay_key").read_text()  # never the upstream key
        assert c.lookup(tok[:-1] + ("A" if tok[-1] != "A" else "B"), f"project-{P}") == (200, EMPTY)
        assert c.lookup("", f"project-{P}") == (200, EMPTY)
        assert c.lookup(tok, "root") == (200, EMPTY)
        assert c.lookup(tok, f"btrfs-{uuid.uuid4()}") == (200, EMPTY)
        assert c.lookup_path("/healthz") == (200, {"ok": True})
        # the plugin escapes with url.QueryEscape; a valid name arrives unchanged or %-escaped
        assert c.lookup_path(f"/{tok}/{quote_plus('project-' + P)}")[1]["host"] == f"127.0.0.1:{kh.held_port}"
        c.close()
    log = proc.stderr.read()
    assert "Traceback" not in log and "listening on http://127.0.0.1:" in log
    private = (kh.secrets / "sshpiper" / "upstream_key").read_text().splitlines()[1]
    assert tok not in log and private not in log


def test_rest_stopping_a_project_denies_at_once(kh):
    kh.set_project(P, keys=user_key(1))
    with rest_server(kh) as (port, _):
        c = PluginClient("127.0.0.1", port)
        assert c.lookup(token(kh), P)[1]["host"] == f"127.0.0.1:{kh.held_port}"
        kh.set_project(P, state="stopped", ssh_port=None, keys=user_key(1))
        assert c.lookup(token(kh), P) == (200, EMPTY)


HOSTILE = st.one_of(
    st.text(max_size=120),
    st.binary(max_size=60).map(lambda b: b.decode("latin-1")),
    st.builds(lambda pre, u, post: f"{pre}{u}{post}", st.sampled_from(["project-", "btrfs-", "project-host-", "",
                                                                        "../", "%2F", "PROJECT-"]),
              st.uuids().map(str), st.text(max_size=4)),
)


def test_rest_survives_thousands_of_hostile_names_and_paths(kh, peer):
    kh.set_project(P, keys=user_key(1))
    kh.add_peer(peer.host_id, peer.pub("host-to-host/id_ed25519"))
    valid = {f"project-{P}", P, P.replace("-", ""), f"btrfs-{peer.host_id}"}
    with rest_server(kh) as (port, proc):
        c = PluginClient("127.0.0.1", port)
        tok = token(kh)

        @settings(max_examples=2500, deadline=None, suppress_health_check=list(HealthCheck))
        @given(HOSTILE)
        def names(name):
            status, body = c.lookup(tok, name)
            assert status == 200 and set(body) == set(EMPTY)
            if name not in valid:
                assert body == EMPTY

        names()

        @settings(max_examples=800, deadline=None, suppress_health_check=list(HealthCheck))
        @given(st.binary(min_size=0, max_size=200))
        def raw_paths(junk):
            path = b"/" + tok.encode() + b"/" + bytes(b for b in junk if b > 32 and b != 127)
            status, _, body, _ = c.raw(b"GET " + path + b" HTTP/1.1\r\nHost: x\r\n\r\n")
            assert status == 200
            data = json.loads(body)
            assert data == EMPTY or data["host"] in (f"127.0.0.1:{kh.held_port}", "127.0.0.1:2222")

        raw_paths()
        # garbage that is not HTTP at all still gets a 200 deny and the server keeps serving
        for junk in [b"\x00\x01\x02\r\n\r\n", b"GET\r\n\r\n", b"POST /x HTTP/1.1\r\nContent-Length: 5\r\n\r\nhello",
                     b"GET /" + b"a" * 20000 + b" HTTP/1.1\r\n\r\n"]:
            c2 = PluginClient("127.0.0.1", port)
            status, _, body, _ = c2.raw(junk)
            assert status == 200 and json.loads(body) == EMPTY
            c2.close()
        assert c.lookup(tok, P)[1]["host"] == f"127.0.0.1:{kh.held_port}"
        c.close()
    assert "Traceback" not in proc.stderr.read()


def test_rest_refuses_a_non_loopback_listen_address(kh):
    res = kh.cli("sshpiper", "serve", "--listen", "0.0.0.0:18099", check=False)
    assert res.returncode == 2 and "--allow-remote" in res.stderr


def test_rest_closes_idle_connections(kh):
    import socket
    import threading

    from cocalc_ctl import config
    from cocalc_ctl.actions.keys import sshauth_server
    from tests.support.keys import free_port, wait_port

    port = free_port()
    cfg = config.load(str(kh.config_path), env={})
    t = threading.Thread(target=sshauth_server.serve, args=(cfg,),
                         kwargs={"listen": f"127.0.0.1:{port}", "max_seconds": 3, "idle_timeout": 0.4}, daemon=True)
    t.start()
    wait_port("127.0.0.1", port)
    s = socket.create_connection(("127.0.0.1", port), timeout=5)
    s.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
    assert b"200 OK" in s.recv(4096)
    s.sendall(b"GET /hea")  # then nothing more: an idle, half-sent request
    assert s.recv(4096) == b""  # the server closed it (well before the test's 5 s socket timeout)
    s.close()
    t.join(10)


def test_receiver_users_rewrites_only_its_own_lines(kh, peer, tmp_path):
    passwd = tmp_path / "passwd"
    passwd.write_text("root:x:0:0:root:/root:/bin/bash\nalice:x:1000:1000::/home/alice:/bin/sh\n")
    kh.add_peer(peer.host_id, peer.pub("host-to-host/id_ed25519"))
    printed = kh.cli("sshpiper", "receiver-users").stdout.splitlines()
    assert printed == [f"btrfs-{peer.host_id}:*:0:0:cocalc-ctl move receiver:/:/bin/sh"]
    r = kh.json("sshpiper", "receiver-users", "--out", str(passwd))
    assert r["added"] == [f"btrfs-{peer.host_id}"]
    assert passwd.read_text().splitlines() == ["root:x:0:0:root:/root:/bin/bash",
                                               "alice:x:1000:1000::/home/alice:/bin/sh", *printed]
    kh.add_peer(peer.host_id, peer.pub("host-to-host/id_ed25519"), trusted=False)
    r = kh.json("sshpiper", "receiver-users", "--out", str(passwd))
    assert len(r["removed"]) == 1
    assert passwd.read_text().splitlines() == ["root:x:0:0:root:/root:/bin/bash",
                                               "alice:x:1000:1000::/home/alice:/bin/sh"]


@pytest.mark.parametrize("argv,expected", [
    (["sshpiper", "authorized-keys", "btrfs-x"], (None, "btrfs-x")),
    (["--config", "/etc/c.yaml", "sshpiper", "authorized-keys", "u"], ("/etc/c.yaml", "u")),
    (["--config=/c", "-q", "sshpiper", "authorized-keys", "u"], ("/c", "u")),
    (["sshpiper", "authorized-keys", "--help"], None),
    (["sshpiper", "authorized-keys"], None),
    (["sshpiper", "auth", "u"], None),
    (["--json", "sshpiper", "authorized-keys", "u"], None),
])
def test_entry_fast_path_only_for_the_exact_command(argv, expected):
    from cocalc_ctl.cli.entry import fast_authorized_keys

    assert fast_authorized_keys(argv) == expected


def test_authorized_keys_fast_path_imports_no_cli_framework(kh):
    import subprocess
    import sys

    res = subprocess.run([sys.executable, "-X", "importtime", "-m", "cocalc_ctl", "sshpiper", "authorized-keys",
                          f"btrfs-{uuid.uuid4()}"], env=kh.env, capture_output=True, text=True)
    assert res.returncode == 0 and res.stdout == ""
    imported = {line.split("|")[-1].strip() for line in res.stderr.splitlines() if "import time:" in line}
    assert not imported & {"typer", "click", "rich", "psycopg", "cryptography", "asyncio"}


@pytest.mark.parametrize("argv,expected", [
    (["move", "recv", "--from", "h1"], (None, "h1")),
    (["--config", "/etc/c.yaml", "move", "recv", "--from", "h1"], ("/etc/c.yaml", "h1")),
    (["--config=/c", "move", "recv", "--from=h1"], ("/c", "h1")),
    (["move", "recv", "--from="], None),
    (["move", "recv", "--from", "--help"], None),
    (["move", "recv", "--help"], None),
    (["-v", "move", "recv", "--from", "h1"], None),  # any other flag: the full CLI
    (["move", "recv", "--from", "h1", "extra"], None),
    (["move", "send", "--from", "h1"], None),
])
def test_entry_fast_recv_only_for_the_exact_forced_command(argv, expected):
    from cocalc_ctl.cli.entry import fast_recv

    assert fast_recv(argv) == expected


def test_move_recv_fast_path_imports_no_cli_framework_and_answers_as_the_full_cli(kh):
    import subprocess
    import sys

    env = {k: v for k, v in kh.env.items() if k != "SSH_ORIGINAL_COMMAND"}
    src = str(uuid.uuid4())
    fast = subprocess.run([sys.executable, "-X", "importtime", "-m", "cocalc_ctl", "move", "recv", "--from", src],
                          env=env, capture_output=True, text=True)
    imported = {line.split("|")[-1].strip() for line in fast.stderr.splitlines() if "import time:" in line}
    assert "cocalc_ctl.actions.move.recv" in imported  # the method sees the action's import
    assert not imported & {"typer", "click", "rich", "cocalc_ctl.cli.main"}
    full = subprocess.run([sys.executable, "-m", "cocalc_ctl", "-q", "move", "recv", "--from", src],  # -q: full CLI
                          env=env, capture_output=True, text=True)
    errors = [ln for ln in fast.stderr.splitlines() if not ln.startswith("import time:")]
    assert fast.returncode == full.returncode != 0
    assert errors == full.stderr.splitlines() and len(errors) == 1 and errors[0].startswith("cocalc-ctl: error:")


# -- the port a running project is routed to must still be its container's ----------------------

TABLE_HEAD = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n"


def _table(tmp_path, *rows: tuple[str, str, int]) -> str:
    """A /proc/net/tcp with (local address, state, uid) rows."""
    lines = [f"   {i}: {local} 00000000:0000 {state} 00000000:00000000 00:00000000 00000000 {uid:>5}        0 {100 + i} 1 "
             "0000000000000000 100 0 0 10 0\n" for i, (local, state, uid) in enumerate(rows)]
    p = tmp_path / "tcp"
    p.write_text(TABLE_HEAD + "".join(lines))
    return str(p)


def test_port_held_only_by_a_root_listener_counts(tmp_path):
    from cocalc_ctl.actions.keys.sshauth import port_held_by_root

    port = 0xB4B1
    assert port_held_by_root(port, _table(tmp_path, ("0100007F:B4B1", "0A", 0)))
    assert port_held_by_root(port, _table(tmp_path, ("00000000:B4B1", "0A", 0)))
    # nobody listening, only a connection from the port, another address or port: not held
    assert not port_held_by_root(port, _table(tmp_path))
    assert not port_held_by_root(port, _table(tmp_path, ("0100007F:B4B1", "01", 0)))
    assert not port_held_by_root(port, _table(tmp_path, ("0200007F:B4B1", "0A", 0), ("0100007F:B4B2", "0A", 0)))
    # a local user's listener (the container died and `nobody` bound the port), alone or beside root's
    assert not port_held_by_root(port, _table(tmp_path, ("0100007F:B4B1", "0A", 65534)))
    assert not port_held_by_root(port, _table(tmp_path, ("0100007F:B4B1", "0A", 0), ("00000000:B4B1", "0A", 65534)))
    assert not port_held_by_root(port, str(tmp_path / "missing"))


def test_running_project_whose_port_nobody_holds_is_denied(kh):
    from tests.support.ports import free_port

    kh.set_project(P, state="running", ssh_port=free_port(), keys=user_key(1))
    d = kh.json("sshpiper", "auth", P)
    assert not d["allowed"] and d["reason"] == "project's ssh port is not held by its container"
    assert kh.cli("sshpiper", "authorized-keys", P).stdout == ""
    kh.set_project(P, keys=user_key(1))  # the port held (as a running container's monitor holds it)
    assert kh.json("sshpiper", "auth", P)["allowed"]


def test_port_check_by_sock_diag_agrees_with_the_table_and_refuses_another_users_listener():
    import socket
    import subprocess

    from cocalc_ctl.actions.keys import sshauth

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen(1)
        port = s.getsockname()[1]
        assert sshauth._listeners_netlink(port) == sshauth._listeners_table(port, sshauth.TCP_TABLE) == [os.geteuid()]
        assert sshauth.port_held_by_root(port)
    assert sshauth._listeners_netlink(port) == [] and not sshauth.port_held_by_root(port)
    if os.geteuid() != 0:
        return
    code = ("import socket,sys\ns=socket.socket()\ns.bind(('127.0.0.1',0))\ns.listen(1)\n"
            "print(s.getsockname()[1],flush=True)\nsys.stdin.read()\n")
    p = subprocess.Popen(["runuser", "-u", "nobody", "--", "/usr/bin/python3", "-c", code], stdin=subprocess.PIPE,
                         stdout=subprocess.PIPE, text=True)
    try:
        theirs = int(p.stdout.readline())
        assert sshauth._listeners_netlink(theirs) == [65534] and not sshauth.port_held_by_root(theirs)
    finally:
        p.stdin.close()
        p.wait(timeout=30)
