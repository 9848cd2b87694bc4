"""Real OpenSSH: the move receiver's sshd configured by `sshpiper config`, and known_hosts pinning.

Receiver users like `btrfs-<uuid>` (42 characters) are longer than useradd accepts, so the test adds
them as /etc/passwd lines under the passwd lock (uid-0 aliases with /bin/sh, exactly what the
receiver's `PermitRootLogin forced-commands-only` expects) and removes them afterwards. The
AuthorizedKeysCommand must sit in a root-owned directory chain, so a wrapper lives in /run/<unique>/:
it runs the real `cocalc-ctl sshpiper authorized-keys` and stands in for `move recv` (another area),
recording the SSH_ORIGINAL_COMMAND it was given.
"""

from __future__ import annotations

import contextlib
import stat
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from cocalc_ctl.tools import ssh as ssh_tools
from tests.support.keys import KeyHost, REPO, Sshd, free_port, passwd_users, root_owned_dir, write_script

pytestmark = pytest.mark.integration

WRAPPER = """#!/bin/sh
# test stand-in for cocalc-ctl: the real auth hook, a recording stub for `move recv`
for a in "$@"; do
  if [ "$a" = "sshpiper" ]; then
    PYTHONPATH={repo} exec {python} -m cocalc_ctl "$@"
  fi
done
printf 'argv=%s\\noriginal=%s\\n' "$*" "${{SSH_ORIGINAL_COMMAND-<unset>}}" >> {record}
echo "stub move recv got: ${{SSH_ORIGINAL_COMMAND-<unset>}}"
"""


def run_ssh(argv: list[str], timeout: float = 30) -> subprocess.CompletedProcess:
    return subprocess.run(argv, capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)


@pytest.fixture(params=["file", "command"])
def world(tmp_path, request):
    """Receiver host R (sshd on 127.0.0.2), trusted peers A and B, a pinned hub key, login users for them
    (`btrfs-<peer>`, `cocalc-hub`); R's sshd reads
    the static per-login files (`file`, the default) or asks the AuthorizedKeysCommand (`command`)."""
    mode = request.param
    with contextlib.ExitStack() as stack:
        rundir = stack.enter_context(root_owned_dir())
        record = tmp_path / "forced.log"
        record.touch()
        wrapper = write_script(rundir / "cocalc-ctl", WRAPPER.format(repo=REPO, python=sys.executable,
                                                                     record=record))
        port = free_port("127.0.0.2")
        r = KeyHost(tmp_path / "r", extra={"sshpiper.cocalc_ctl": str(wrapper),
                                            "sshpiper.receiver_listen": f"127.0.0.2:{port}",
                                            "sshpiper.receiver_auth": mode,
                                            "sshpiper.receiver_keys_dir": str(rundir / "keys")})
        a, b = KeyHost(tmp_path / "a"), KeyHost(tmp_path / "b")
        hub = KeyHost(tmp_path / "hub")  # its host-to-host key stands in for a hub key (any ed25519 key)
        for h in (r, a, b, hub):
            h.cli("keys", "ensure")
        hub_key = hub.secrets / "host-to-host" / "id_ed25519"
        r.pin_hub_keys([hub.pub("host-to-host/id_ed25519")])  # what `keys sync` pins from the hub

        def refresh() -> None:
            """What `keys sync` does after it changed host sqlite (tests plant peers directly)."""
            r.cli("sshpiper", "receiver-keys")

        for peer in (a, b):
            r.add_peer(peer.host_id, peer.pub("host-to-host/id_ed25519"))
            peer.add_peer(r.host_id, r.pub("host-to-host/id_ed25519"), ssh_server=f"127.0.0.2:{port}",
                          sshpiperd=r.pub("sshpiperd/host_key"))
            peer.cli("keys", "known-hosts")
        refresh()
        stranger = str(uuid.uuid4())
        stack.enter_context(passwd_users([f"btrfs-{a.host_id}", f"btrfs-{b.host_id}", f"btrfs-{stranger}",
                                          "cocalc-hub"]))
        sshd = Sshd(r.cli("sshpiper", "config", "--sshd").stdout, tmp_path, "receiver")
        stack.callback(sshd.stop)
        sshd.start("127.0.0.2", port)
        yield {"r": r, "a": a, "b": b, "port": port, "record": record, "sshd": sshd, "stranger": stranger,
               "mode": mode, "refresh": refresh, "keys_dir": rundir / "keys", "hub_key": hub_key}


def login(host: KeyHost, user: str, port: int, words: list[str], *, identity: Path | None = None,
          extra: list[str] = (), server: str = "127.0.0.2") -> subprocess.CompletedProcess:
    paths = ssh_tools.paths_for(host)
    if identity is not None:
        paths = ssh_tools.SshPaths(paths.known_hosts, identity)
    return run_ssh(ssh_tools.ssh_command(paths, user, server, port, words, extra_options=list(extra)))


class _Cfg:
    def __init__(self, h: KeyHost):
        self.data_dir, self.secrets_dir = h.data, h.secrets


def test_peer_key_runs_only_the_forced_command(world):
    a, port, record = world["a"], world["port"], world["record"]
    res = login(_Cfg(a), f"btrfs-{a.host_id}", port, ["recv", "--project", "p1"])
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == "stub move recv got: recv --project p1"
    text = record.read_text()
    assert f"move recv --from {a.host_id}" in text and "original=recv --project p1" in text
    # asking for a shell or another command still runs only the forced command
    res = login(_Cfg(a), f"btrfs-{a.host_id}", port, ["id"])
    assert "uid=" not in res.stdout and res.stdout.strip() == "stub move recv got: id"
    res = login(_Cfg(a), f"btrfs-{a.host_id}", port, [])  # a login shell request
    assert res.stdout.strip() == "stub move recv got: <unset>"
    res = login(_Cfg(a), f"btrfs-{a.host_id}", port, [], extra=["-tt"])  # an interactive terminal
    assert "PTY allocation request failed" in res.stderr and "uid=" not in res.stdout


def test_forwarding_and_scp_are_refused(world, tmp_path):
    a, port = world["a"], world["port"]
    user = f"btrfs-{a.host_id}"
    # our own ssh_command clears forwardings; drop that so the *server* has to refuse them
    argv = ssh_tools.ssh_command(ssh_tools.paths_for(_Cfg(a)), user, "127.0.0.2", port, ["x"],
                                 extra_options=["-o", "ExitOnForwardFailure=yes", "-R",
                                                f"127.0.0.1:{free_port()}:127.0.0.1:22"])
    i = argv.index("ClearAllForwardings=yes")
    del argv[i - 1:i + 1]
    res = run_ssh(argv)
    assert res.returncode != 0 and "forwarding failed" in res.stderr.lower()
    res = login(_Cfg(a), user, port, ["x"], extra=["-W", "127.0.0.1:22"])
    assert res.returncode != 0 and "administratively prohibited" in res.stderr
    target = tmp_path / "scp-target"
    src = tmp_path / "scp-src"
    src.write_text("data")
    base = ssh_tools.outbound_options(ssh_tools.paths_for(_Cfg(a)))
    for mode in ([], ["-O"]):  # sftp-based (default) and the legacy scp protocol
        res = run_ssh(["scp", *mode, *base, "-P", str(port), str(src), f"{user}@127.0.0.2:{target}"])
        assert res.returncode != 0 and not target.exists()


def test_wrong_keys_and_unknown_users_are_refused(world):
    a, b, port, stranger = world["a"], world["b"], world["port"], world["stranger"]
    before = world["record"].read_text()
    res = login(_Cfg(b), f"btrfs-{a.host_id}", port, ["recv"])  # B's key for A's user
    assert res.returncode == 255 and "Permission denied" in res.stderr
    res = login(_Cfg(a), f"btrfs-{stranger}", port, ["recv"])  # a user that is no trusted peer
    assert res.returncode == 255 and "Permission denied" in res.stderr
    res = login(_Cfg(a), "root", port, ["recv"])  # not a receiver user at all
    assert res.returncode == 255 and "Permission denied" in res.stderr
    assert world["record"].read_text() == before  # the forced command never ran
    assert login(_Cfg(b), f"btrfs-{b.host_id}", port, ["ok"]).returncode == 0


def test_rotation_accepts_both_keys_until_finish(world):
    a, r, port = world["a"], world["r"], world["port"]
    user = f"btrfs-{a.host_id}"
    a.cli("keys", "rotate", "--which", "host")
    lines = a.db().execute("SELECT host_to_host_public_key FROM project_hosts WHERE is_self=1").fetchone()[0]
    r.add_peer(a.host_id, lines)  # what `keys register` + `keys sync` deliver during a rotation
    world["refresh"]()
    new, old = a.secrets / "host-to-host" / "id_ed25519", a.secrets / "host-to-host" / "id_ed25519.previous"
    assert login(_Cfg(a), user, port, ["new"], identity=new).returncode == 0
    assert login(_Cfg(a), user, port, ["old"], identity=old).returncode == 0
    saved = r.base / "old-key"  # `--finish` deletes the old key on A; keep a copy to prove it is refused
    saved.write_bytes(old.read_bytes())
    saved.chmod(0o600)
    a.cli("keys", "rotate", "--which", "host", "--finish")
    lines = a.db().execute("SELECT host_to_host_public_key FROM project_hosts WHERE is_self=1").fetchone()[0]
    r.add_peer(a.host_id, lines)
    world["refresh"]()
    assert login(_Cfg(a), user, port, ["new"], identity=new).returncode == 0
    assert not old.exists() and not old.with_name("id_ed25519.previous.pub").exists()
    res = login(_Cfg(a), user, port, ["old"], identity=saved)
    assert res.returncode == 255 and "Permission denied" in res.stderr


def test_known_hosts_pinning_on_port_22_and_a_high_port(tmp_path):
    with contextlib.ExitStack() as stack:
        rundir = stack.enter_context(root_owned_dir())
        record = tmp_path / "forced.log"
        wrapper = write_script(rundir / "cocalc-ctl", WRAPPER.format(repo=REPO, python=sys.executable,
                                                                     record=record))
        high = free_port("127.0.0.3")
        a = KeyHost(tmp_path / "a")
        other = KeyHost(tmp_path / "other")
        a.cli("keys", "ensure")
        other.cli("keys", "ensure")
        servers = []
        for port in (22, high):
            r = KeyHost(tmp_path / f"r{port}", extra={"sshpiper.cocalc_ctl": str(wrapper),
                                                      "sshpiper.receiver_listen": f"127.0.0.3:{port}",
                                                      "sshpiper.receiver_auth": "command"})
            r.cli("keys", "ensure")
            r.add_peer(a.host_id, a.pub("host-to-host/id_ed25519"))
            sshd = Sshd(r.cli("sshpiper", "config", "--sshd").stdout, tmp_path, f"sshd{port}")
            stack.callback(sshd.stop)
            servers.append((port, r, sshd))
        stack.enter_context(passwd_users([f"btrfs-{a.host_id}"]))
        for port, r, sshd in servers:
            sshd.start("127.0.0.3", port, timeout=60)
        for port, r, _ in servers:
            a.add_peer(r.host_id, r.pub("host-to-host/id_ed25519"), ssh_server=f"127.0.0.3:{port}",
                       sshpiperd=r.pub("sshpiperd/host_key"))
        a.cli("keys", "known-hosts")
        kh = (a.data / "ssh" / "known_hosts").read_text().splitlines()
        assert any(line.startswith("127.0.0.3 ssh-ed25519 ") for line in kh)  # port 22: bare host
        assert any(line.startswith(f"[127.0.0.3]:{high} ssh-ed25519 ") for line in kh)
        for port, _, _ in servers:
            res = login(_Cfg(a), f"btrfs-{a.host_id}", port, ["hello"], server="127.0.0.3")
            assert res.returncode == 0 and "stub move recv got: hello" in res.stdout, res.stderr
        # swap the pinned keys for someone else's: both connections must now fail host key checking
        for port, r, _ in servers:
            a.add_peer(r.host_id, r.pub("host-to-host/id_ed25519"), ssh_server=f"127.0.0.3:{port}",
                       sshpiperd=other.pub("sshpiperd/host_key"))
        a.cli("keys", "known-hosts")
        for port, _, _ in servers:
            res = login(_Cfg(a), f"btrfs-{a.host_id}", port, ["hello"], server="127.0.0.3")
            assert res.returncode == 255 and "Host key verification failed" in res.stderr


def test_hub_trust_end_to_end_login_then_untrust_refuses(tmp_path, hub_dsn):
    """Register and trust through the hub, sync, log in for real; untrust, sync, and the login is refused."""
    with contextlib.ExitStack() as stack:
        rundir = stack.enter_context(root_owned_dir())
        record = tmp_path / "forced.log"
        wrapper = write_script(rundir / "cocalc-ctl", WRAPPER.format(repo=REPO, python=sys.executable,
                                                                     record=record))
        port = free_port("127.0.0.2")
        r = KeyHost(tmp_path / "r", extra={"hub_dsn": hub_dsn, "ssh_server": f"127.0.0.2:{port}",
                                            "sshpiper.cocalc_ctl": str(wrapper),
                                            "sshpiper.receiver_listen": f"127.0.0.2:{port}",
                                            "sshpiper.receiver_keys_dir": str(rundir / "keys")})
        a = KeyHost(tmp_path / "a", extra={"hub_dsn": hub_dsn, "ssh_server": "127.0.0.3:22"})
        r.cli("hub", "migrate")
        for h in (r, a):
            h.cli("keys", "ensure")
            h.cli("keys", "register")
            h.cli("keys", "trust", h.host_id)
        for h in (r, a):
            h.cli("keys", "sync")  # A pins R's sshpiperd key in its known_hosts from the hub
        stack.enter_context(passwd_users([f"btrfs-{a.host_id}"]))
        sshd = Sshd(r.cli("sshpiper", "config", "--sshd").stdout, tmp_path, "receiver")
        stack.callback(sshd.stop)
        sshd.start("127.0.0.2", port)
        res = login(_Cfg(a), f"btrfs-{a.host_id}", port, ["recv"])
        assert res.returncode == 0 and "stub move recv got: recv" in res.stdout, res.stderr
        # `keys sync` wrote the static file sshd read (no AuthorizedKeysCommand in this config)
        assert f"AuthorizedKeysFile {rundir / 'keys'}/%u" in sshd.config.read_text()
        assert "AuthorizedKeysCommand" not in sshd.config.read_text()
        assert (rundir / "keys" / f"btrfs-{a.host_id}").is_file()
        r.cli("keys", "untrust", a.host_id)
        assert r.json("keys", "sync")["removed"] == [a.host_id]
        assert not (rundir / "keys" / f"btrfs-{a.host_id}").exists()
        res = login(_Cfg(a), f"btrfs-{a.host_id}", port, ["recv"])
        assert res.returncode == 255 and "Permission denied" in res.stderr


def test_upstream_key_reaches_no_receiver_login_relay_key_only_btrfs(world):
    """Least privilege (real sshd): the key sshpiperd logs into project containers with is accepted for no
    receiver login; the relay key (sshpiperd relaying a peer or the hub) only for `btrfs-<peer>` and
    `cocalc-hub`, each with its forced command; a peer's own key never reaches `cocalc-hub`, the hub's key
    never a `btrfs-<peer>` login."""
    a, r, port, record = world["a"], world["r"], world["port"], world["record"]
    upstream, relay = r.secrets / "sshpiper" / "upstream_key", r.secrets / "sshpiper" / "relay_key"
    before = record.read_text()
    for user in (f"btrfs-{a.host_id}", "cocalc-hub"):
        res = login(_Cfg(a), user, port, ["recv"], identity=upstream)
        assert res.returncode == 255 and "Permission denied" in res.stderr, (user, res.stderr)
    res = login(_Cfg(a), "cocalc-hub", port, ["x"])  # a peer's own key
    assert res.returncode == 255 and "Permission denied" in res.stderr
    res = login(_Cfg(a), f"btrfs-{a.host_id}", port, ["x"], identity=world["hub_key"])  # the hub's key
    assert res.returncode == 255 and "Permission denied" in res.stderr
    assert record.read_text() == before  # nothing ran
    res = login(_Cfg(a), f"btrfs-{a.host_id}", port, ["relayed"], identity=relay)
    assert res.returncode == 0 and res.stdout.strip() == "stub move recv got: relayed", res.stderr
    assert f"move recv --from {a.host_id}" in record.read_text()
    # the hub's move worker, directly or relayed by sshpiperd: only `move host-step` runs
    for identity in (world["hub_key"], relay):
        res = login(_Cfg(a), "cocalc-hub", port, ["project", "show"], identity=identity)
        assert res.returncode == 0 and res.stdout.strip() == "stub move recv got: project show", res.stderr
        assert record.read_text().splitlines()[-2].endswith(" move host-step")


@pytest.mark.parametrize("world", ["file"], indirect=True)  # static files are the `file` mode only
def test_static_receiver_files_are_root_owned_atomic_and_follow_the_peers(world):
    assert world["mode"] == "file"
    a, b, r, port, d = world["a"], world["b"], world["r"], world["port"], world["keys_dir"]
    config = world["sshd"].config.read_text()
    assert f"AuthorizedKeysFile {d}/%u" in config.splitlines() and "AuthorizedKeysCommand" not in config
    st = d.stat()
    assert st.st_uid == 0 and stat.S_IMODE(st.st_mode) == 0o755
    files = sorted(p.name for p in d.iterdir())
    assert files == sorted([f"btrfs-{h.host_id}" for h in (a, b)] + ["cocalc-hub"])
    f = d / f"btrfs-{a.host_id}"
    st = f.stat()
    assert st.st_uid == 0 and stat.S_IMODE(st.st_mode) == 0o644
    lines = [ln for ln in f.read_text().splitlines() if not ln.startswith("#")]
    assert len(lines) == 2 and all(ln.startswith('restrict,command="') and f"move recv --from {a.host_id}" in ln
                                   for ln in lines)
    # unchanged peers: nothing is rewritten (same inode); a change replaces the file by rename
    ino = f.stat().st_ino
    assert r.json("sshpiper", "receiver-keys")["written"] == []
    assert f.stat().st_ino == ino
    r.add_peer(a.host_id, a.pub("host-to-host/id_ed25519"), trusted=False)
    res = r.json("sshpiper", "receiver-keys")
    assert res["removed"] == [f"btrfs-{a.host_id}"]
    assert login(_Cfg(a), f"btrfs-{a.host_id}", port, ["x"]).returncode == 255
    assert login(_Cfg(b), f"btrfs-{b.host_id}", port, ["ok"]).returncode == 0
    assert not any(p.name.startswith(".") for p in d.iterdir())  # no temporary file left behind
