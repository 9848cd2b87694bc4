"""The project sshd's pieces that need no container: ldd parsing, dropbear's command line, the
passwd line and the in-container script that adds it, login-name validation."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from cocalc_ctl.actions.project import project_ssh
from cocalc_ctl.errors import InvalidInput
from cocalc_ctl.tools import dropbear

LDD = """\tlinux-vdso.so.1 (0x00007ffd4c5f2000)
\tlibz.so.1 => /lib/x86_64-linux-gnu/libz.so.1 (0x00007f249d55b000)
\tlibc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x00007f249d33d000)
\t/lib64/ld-linux-x86-64.so.2 (0x00007f249d6b9000)
"""


def test_parse_ldd_gives_libraries_and_the_loader():
    libs, interp = dropbear.parse_ldd(LDD)
    assert libs == [("libz.so.1", "/lib/x86_64-linux-gnu/libz.so.1"), ("libc.so.6", "/lib/x86_64-linux-gnu/libc.so.6")]
    assert interp == "/lib64/ld-linux-x86-64.so.2"


def test_parse_ldd_refuses_a_missing_library():
    with pytest.raises(ValueError, match="libgone"):
        dropbear.parse_ldd("\tlibgone.so.1 => not found\n")


def test_server_refuses_remote_forwarding_unless_allowed():
    argv = dropbear.server("/b/dropbear", host_key="/s/k", port=22, forced_command="/s/session", pid_file="/tmp/p",
                           remote_forwarding=False)
    assert argv[0] == "/b/dropbear" and "-k" in argv and "-s" in argv
    assert argv[argv.index("-c") + 1] == "/s/session" and argv[argv.index("-r") + 1] == "/s/k"
    allowed = dropbear.server("/b/dropbear", host_key="/s/k", port=22, forced_command="/s/session",
                              pid_file="/tmp/p", remote_forwarding=True)
    assert "-k" not in allowed



@pytest.mark.parametrize("name", ["root:x", "User", "a b", "", "x" * 40, "-rf", "user\n"])
def test_login_user_refuses_what_is_not_a_login_name(name):
    class C(dict):
        pass

    with pytest.raises(InvalidInput):
        project_ssh.login_user(C({"sshpiper.upstream_user": name}))


def test_passwd_line_is_uid_0_with_the_state_home():
    line = project_ssh.passwd_line({"sshpiper.upstream_user": "user"})
    assert line == f"user:*:0:0:{project_ssh.GECOS}:{project_ssh.STATE_MOUNT}/home:/bin/sh"


def run_ensure(path, line="user:*:0:0:g:/h:/bin/sh"):
    return subprocess.run(["/bin/sh", "-c", project_ssh.ENSURE_USER, "sh", line, str(path)],
                          capture_output=True, text=True)


def test_ensure_user_appends_once_and_keeps_a_last_line_without_newline(tmp_path):
    passwd = tmp_path / "passwd"
    passwd.write_text("root:x:0:0:root:/root:/bin/sh")  # no newline at the end
    assert run_ensure(passwd).returncode == 0
    assert run_ensure(passwd).returncode == 0
    assert passwd.read_text() == "root:x:0:0:root:/root:/bin/sh\nuser:*:0:0:g:/h:/bin/sh\n"


def test_ensure_user_creates_a_missing_passwd(tmp_path):
    passwd = tmp_path / "passwd"
    assert run_ensure(passwd).returncode == 0
    assert passwd.read_text() == "user:*:0:0:g:/h:/bin/sh\n"


def test_ensure_user_refuses_a_name_the_image_already_has(tmp_path):
    passwd = tmp_path / "passwd"
    passwd.write_text("user:x:1000:1000::/home/user:/bin/bash\n")
    res = run_ensure(passwd)
    assert res.returncode == 3 and "already has a user user" in res.stderr
    assert passwd.read_text() == "user:x:1000:1000::/home/user:/bin/bash\n"


def test_ensure_user_never_opens_a_passwd_that_is_not_a_regular_file(tmp_path):
    """The project may make its /etc/passwd a FIFO: reading it would block the start that runs this."""
    passwd = tmp_path / "passwd"
    os.mkfifo(passwd)
    res = subprocess.run(["/bin/sh", "-c", project_ssh.ENSURE_USER, "sh", "user:*:0:0:g:/h:/bin/sh", str(passwd)],
                         capture_output=True, text=True, timeout=10)
    assert res.returncode == 3 and "not a regular file" in res.stderr


def test_authorized_keys_carry_the_restrictions():
    text = project_ssh.authorized_keys_text({"ssh.agent_forwarding": False}, ["ssh-ed25519 AAAA"])
    assert text == "no-X11-forwarding,no-agent-forwarding ssh-ed25519 AAAA\n"


def test_two_builders_of_one_bundle_both_end_with_it(tmp_path, monkeypatch):
    """A second start that built the same bundle concurrently keeps the first one and succeeds."""
    class C(dict):
        data_dir = tmp_path

    cfg = C()
    monkeypatch.setattr(project_ssh, "_bundle_digest", lambda: "d1")
    real_rename = os.rename

    def racing_rename(src, dst):
        Path(dst).mkdir(parents=True)  # the other builder won
        (Path(dst) / "bin").mkdir()
        return real_rename(src, dst)

    monkeypatch.setattr(project_ssh.os, "rename", racing_rename)
    final = project_ssh.ensure_bundle(cfg)
    assert final == tmp_path / "ssh-bundle" / "d1" and (final / "bin").is_dir()
    assert not (final / "bin" / "dropbear").exists()  # the winner's bundle, not a mix
    assert [p.name for p in final.parent.iterdir()] == ["d1"]  # no temporary left


def test_upstream_rotation_rewrites_every_running_projects_key_list(tmp_path):
    """`keys rotate --which upstream`: each project's sshd state (what its read-only mount shows) accepts
    both keys at once, and after `--finish` only the new one; replaced by a rename (a new file, never
    written in place), keeping the project root's owner and 0600; a run dir not named by a project id
    is not touched."""
    import uuid

    from tests.support.keys import KeyHost

    h = KeyHost(tmp_path / "a")
    h.cli("keys", "ensure")
    pid, owner = str(uuid.uuid4()), 1 << 20
    ssh_dir = h.data / "project-ssh" / pid / "state" / "home" / ".ssh"
    ssh_dir.mkdir(parents=True)
    os.chown(ssh_dir, owner, owner)
    keys_file = ssh_dir / "authorized_keys"
    keys_file.write_text("no-X11-forwarding ssh-ed25519 AAAA-stale\n")
    stray = h.data / "project-ssh" / "not-a-project" / "state" / "home" / ".ssh" / "authorized_keys"
    stray.parent.mkdir(parents=True)
    stray.write_text("stray\n")

    def accepted() -> list[str]:
        return [line.split()[2] for line in keys_file.read_text().splitlines()]

    def upstream(suffix: str = "") -> str:
        return (h.secrets / "sshpiper" / f"upstream_key{suffix}.pub").read_text().split()[1]

    before = keys_file.stat().st_ino
    h.cli("keys", "rotate", "--which", "upstream")
    assert accepted() == [upstream(), upstream(".previous")]
    st = keys_file.stat()
    assert st.st_ino != before and (st.st_uid, st.st_gid, st.st_mode & 0o777) == (owner, owner, 0o600)
    new = upstream()
    h.cli("keys", "rotate", "--which", "upstream", "--finish")
    assert accepted() == [new]
    assert stray.read_text() == "stray\n"
    assert not [p for p in ssh_dir.iterdir() if p.name != "authorized_keys"]  # no temporary left


def test_upstream_rotation_reaches_the_projects_before_sshpiperd_can_hand_out_the_new_key(tmp_path, monkeypatch):
    """sshpiperd logs in with whatever key file is in place: the projects' key lists must list the new
    key before the file is replaced, not after (else logins fail in between)."""
    from cocalc_ctl import config as config_mod
    from cocalc_ctl.actions.keys import keys
    from cocalc_ctl.actions.project import ssh_state
    from tests.support.keys import KeyHost

    h = KeyHost(tmp_path / "a")
    h.cli("keys", "ensure")
    cfg = config_mod.load(str(h.config_path))
    key_file = h.secrets / "sshpiper" / "upstream_key.pub"
    old = key_file.read_text().split()[1]
    calls = []
    real = ssh_state.refresh_upstream_keys
    monkeypatch.setattr(ssh_state, "refresh_upstream_keys",
                        lambda c, upstream: calls.append((key_file.read_text().split()[1], upstream))
                        or real(c, upstream))
    keys.rotate(cfg, "upstream")
    new = key_file.read_text().split()[1]
    in_place, listed = calls[0]
    assert in_place == old and [line.split()[1] for line in listed] == [new, old]


def test_project_ssh_reads_no_ssh_config_and_forwards_nothing(tmp_path, monkeypatch):
    """`project ssh` runs as root into an untrusted container: root's ~/.ssh/config (an agent to
    forward, a RemoteForward, a ControlPath) must not apply. `ssh -G` shows what ssh would use."""
    from cocalc_ctl.actions.keys import keys

    class C(dict):
        pass

    key = tmp_path / "upstream_key"
    key.write_text("k")
    monkeypatch.setattr(keys, "key_path", lambda cfg, which: key)
    monkeypatch.setattr(project_ssh, "host_public_key", lambda cfg, pid: "ssh-ed25519 AAAA")
    monkeypatch.setattr(project_ssh, "run_dir", lambda cfg, pid: tmp_path / "run")
    plan = project_ssh.session_argv(C({"sshpiper.upstream_user": "user"}), "p", 40022, ["echo", "hi"])
    argv = plan.argv
    assert argv[:3] == ["ssh", "-F", "/dev/null"] and argv[-3:] == ["--", "echo", "hi"]
    dest = argv.index("user@127.0.0.1")

    def resolved(options: list[str]) -> list[str]:
        return subprocess.run([*options, "-G", argv[dest]], capture_output=True, text=True, check=True,
                              timeout=30).stdout.lower().splitlines()

    plain = resolved(argv[:dest])
    assert "forwardagent no" in plain and "clearallforwardings yes" in plain and "forwardx11 no" in plain
    assert "identityagent none" in plain and "stricthostkeychecking true" in plain
    assert not [ln for ln in plain if ln.startswith(("remoteforward", "localforward", "controlpath", "proxycommand"))]
    # even a config file that asks for everything (were one read) forwards nothing: the -o options win
    config = tmp_path / "config"
    config.write_text("Host *\n  ForwardAgent yes\n  RemoteForward 9999 127.0.0.1:22\n  LocalForward 9998 127.0.0.1:22\n"
                      "  ForwardX11 yes\n  IdentityAgent /tmp/agent.sock\n")
    hostile = resolved([argv[0], "-F", str(config), *argv[3:dest]])
    assert "forwardagent no" in hostile and "forwardx11 no" in hostile and "identityagent none" in hostile
    assert "clearallforwardings yes" in hostile
