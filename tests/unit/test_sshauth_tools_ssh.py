"""tools/ssh.py: exact command lines and file syntax (golden)."""

from __future__ import annotations

from pathlib import Path

import pytest

from cocalc_ctl.tools import ssh

PATHS = ssh.SshPaths(Path("/var/lib/cocalc-ctl/ssh/known_hosts"), Path("/var/lib/cocalc-ctl/secrets/host-to-host/id_ed25519"))


@pytest.mark.parametrize("host,port,expected", [
    ("10.0.0.5", 22, "10.0.0.5"), ("10.0.0.5", 2222, "[10.0.0.5]:2222"), ("host.example", 22, "host.example"),
    ("::1", 22, "::1"), ("::1", 2200, "[::1]:2200"),
])
def test_known_hosts_pattern_port_22_is_bare(host, port, expected):
    assert ssh.known_hosts_pattern(host, port) == expected


@pytest.mark.parametrize("text,expected", [
    ("h", ("h", 22)), ("h:2222", ("h", 2222)), ("[::1]:22", ("::1", 22)), ("::1", ("::1", 22)),
    ("127.0.0.3:22", ("127.0.0.3", 22)),
])
def test_parse_host_port(text, expected):
    assert ssh.parse_host_port(text) == expected


@pytest.mark.parametrize("text", ["", "h:", "h:0", "h:70000", "h:x", "-oProxyCommand=x:22", "a b:22", "[zz]:22",
                                  "h\n:22", "h;rm:22"])
def test_parse_host_port_rejects_junk(text):
    with pytest.raises(ValueError):
        ssh.parse_host_port(text)


def test_ssh_command_pins_known_hosts_and_identity():
    argv = ssh.ssh_command(PATHS, "btrfs-1b4e28ba-2fa1-41d2-883f-0016d3cca427", "10.0.0.5", 2222,
                           ["recv", "--snapshot", "s1"])
    assert argv[0] == "ssh"
    opts = {argv[i + 1] for i, a in enumerate(argv) if a == "-o"}
    assert {"StrictHostKeyChecking=yes", "IdentitiesOnly=yes", "BatchMode=yes", "IdentityAgent=none",
            f"UserKnownHostsFile={PATHS.known_hosts}", f"IdentityFile={PATHS.identity}",
            "GlobalKnownHostsFile=/dev/null", "UpdateHostKeys=no"} <= opts
    assert argv[argv.index("-F") + 1] == "/dev/null"
    assert argv[-7:] == ["-l", "btrfs-1b4e28ba-2fa1-41d2-883f-0016d3cca427", "--", "10.0.0.5", "recv", "--snapshot",
                         "s1"][-7:]
    assert argv[argv.index("-p") + 1] == "2222"


def test_ssh_command_from_config_uses_agreed_paths(tmp_path):
    class Cfg:
        data_dir = tmp_path / "data"
        secrets_dir = tmp_path / "data" / "secrets"

    argv = ssh.ssh_command(Cfg(), "btrfs-x", "h", 22, [])
    assert f"UserKnownHostsFile={tmp_path}/data/ssh/known_hosts" in argv
    assert f"IdentityFile={tmp_path}/data/secrets/host-to-host/id_ed25519" in argv


@pytest.mark.parametrize("bad", [["a b"], ["$(id)"], ["x;y"], ["'q'"], [""]])
def test_ssh_command_refuses_words_that_need_quoting(bad):
    with pytest.raises(ValueError):
        ssh.ssh_command(PATHS, "btrfs-x", "h", 22, bad)


@pytest.mark.parametrize("user,host", [("-oProxyCommand=x", "h"), ("u", "-oProxyCommand=x"), ("U", "h")])
def test_ssh_command_refuses_option_injection(user, host):
    with pytest.raises(ValueError):
        ssh.ssh_command(PATHS, user, host, 22, [])


def test_sshpiperd_command_golden():
    assert ssh.sshpiperd_command(Path("/s/sshpiperd/host_key"), "http://127.0.0.1:8089/T", port=2022) == [
        "sshpiperd", "-i", "/s/sshpiperd/host_key", "--server-key-generate-mode", "disable",
        "--address", "0.0.0.0", "--port", "2022", "sshpiperd-rest", "--url", "http://127.0.0.1:8089/T"]


def test_receiver_sshd_config_locks_everything_down():
    text = ssh.receiver_sshd_config(listen_host="127.0.0.2", listen_port=2222, host_key=Path("/s/hk"),
                                    authorized_keys_command="/usr/local/bin/cocalc-ctl sshpiper authorized-keys %u")
    lines = set(text.splitlines())
    for need in ["ListenAddress 127.0.0.2:2222", "AuthorizedKeysFile none", "PasswordAuthentication no",
                 "KbdInteractiveAuthentication no", "DisableForwarding yes", "PermitTTY no",
                 "PermitRootLogin forced-commands-only", "AuthenticationMethods publickey",
                 "AuthorizedKeysCommand /usr/local/bin/cocalc-ctl sshpiper authorized-keys %u",
                 "AuthorizedKeysCommandUser root", "HostKey /s/hk"]:
        assert need in lines
    assert not any(line.startswith("Subsystem") for line in lines)


def test_public_key_parsing_rejects_mismatched_type_and_junk():
    good = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIFvcC4/PNNYUrTG0xY69KQqAAWqeojmDMonKDUtxUpdc c"
    assert ssh.parse_public_key(good).type == "ssh-ed25519"
    assert ssh.parse_public_key(good.replace("ssh-ed25519", "ssh-rsa", 1)) is None
    assert ssh.parse_public_key("ssh-ed25519 !!!") is None
    assert ssh.authorized_key_line_ok('restrict,command="echo hi there" ' + good)
    assert not ssh.authorized_key_line_ok('command="unterminated ' + good)
    assert ssh.fingerprint(good.split()[1]).startswith("SHA256:")
