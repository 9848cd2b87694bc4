"""SSH into a project end to end, with real podman (runc) containers and real OpenSSH clients.

sshpiperd is not installable here: each test asks `sshpiper auth project-<uuid>` where to go and with
which key (exactly what sshpiperd's REST plugin receives), then logs in to that address with that key,
as sshpiperd would. Everything after sshpiperd is real: the project's dropbear in the container,
sessions in its namespaces, rsync/scp/sftp, forwarding; and the escape attempts fail.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import socket
import subprocess
import threading
import time
import urllib.request
import uuid
from pathlib import Path

import pytest

from tests.support.rootfs import busybox_tree, podman_store  # noqa: F401 (fixture)
from tests.support.poll import wait_for_path as wait_for

pytestmark = pytest.mark.integration

EXTRA_APPLETS = ["nc", "tty", "rm", "env", "ps", "grep", "sha256sum"]
COMMAND = "/bin/sh -c 'echo started > /home/user/started; exec /bin/sleep 100000'"
DEBIAN_TREE = os.environ.get("COCALC_TEST_DEBIAN_TREE", "/var/tmp/cocalc-test-debian-minbase")


def busybox_image(workdir: Path) -> Path:
    t = busybox_tree(workdir / "tree")
    for applet in EXTRA_APPLETS:
        os.link(t / "bin" / "busybox", t / "bin" / applet)
    return t


class Session:
    """Logs in to a running project the way sshpiperd does, from the auth hook's answer."""

    def __init__(self, host, pid: str, work: Path):
        self.host, self.pid, self.work = host, pid, work
        work.mkdir(mode=0o700, parents=True, exist_ok=True)
        # a user's key for the project (the hub-facing list sshpiper reads from the project's ~/.ssh)
        self.user_key = fresh_key(work / "user_key")
        self.user_key_line = " ".join(Path(f"{self.user_key}.pub").read_text().split()[:2])
        top = host.project_path(pid)
        owner = top.stat().st_uid
        ssh_dir = top / ".ssh"
        ssh_dir.mkdir(mode=0o700, exist_ok=True)
        (ssh_dir / "authorized_keys").write_text(self.user_key_line + "\n")
        for p in (ssh_dir, ssh_dir / "authorized_keys"):
            os.chown(p, owner, owner)
        self.refresh()

    def refresh(self) -> None:
        answer = self.host.json("sshpiper", "auth", f"project-{self.pid}")
        assert answer["allowed"] and answer["upstream_host"].startswith("127.0.0.1:"), answer
        assert self.user_key_line in answer["authorized_keys"]
        self.user = answer["upstream_user"]
        self.port = int(answer["upstream_host"].rsplit(":", 1)[1])
        # the REST answer's privateKey: the upstream key (`sshpiper serve` reads this very file)
        self.key = self.host.data / "secrets" / "sshpiper" / "upstream_key"
        status = self.host.json("project", "status", self.pid)
        assert status["ssh_port"] == self.port and status["ssh_host_key"].startswith("ssh-ed25519 ")
        self.known_hosts = self.work / "known_hosts"
        self.known_hosts.write_text(f"[127.0.0.1]:{self.port} {status['ssh_host_key']}\n")

    def options(self, key: Path | None = None) -> list[str]:
        return ["-i", str(key or self.key), "-o", "IdentitiesOnly=yes", "-o", "IdentityAgent=none",
                "-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=yes",
                "-o", f"UserKnownHostsFile={self.known_hosts}", "-o", "GlobalKnownHostsFile=/dev/null",
                "-o", "ConnectTimeout=20"]

    def ssh_argv(self, *extra: str, key: Path | None = None) -> list[str]:
        return ["ssh", *self.options(key), "-p", str(self.port), *extra, f"{self.user}@127.0.0.1"]

    def run(self, command: str, *extra: str, key: Path | None = None, check: bool = True,
            input: str | None = None, timeout: float = 120) -> subprocess.CompletedProcess:
        res = subprocess.run([*self.ssh_argv(*extra, key=key), command], capture_output=True, text=True,
                             input=input, timeout=timeout)
        if check and res.returncode != 0:
            raise AssertionError(f"ssh {command!r} exited {res.returncode}: {res.stderr}")
        return res

    @property
    def rsh(self) -> str:
        return " ".join(["ssh", *self.options(), "-p", str(self.port)])

    def sftp(self, script: str) -> subprocess.CompletedProcess:
        return subprocess.run(["sftp", *self.options(), "-P", str(self.port), "-b", "-", f"{self.user}@127.0.0.1"],
                              input=script, capture_output=True, text=True, timeout=120)


def tree_digest(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def make_files(root: Path, n: int = 20) -> None:
    (root / "sub" / "deeper").mkdir(parents=True)
    for i in range(n):
        (root / ("sub" if i % 2 else "sub/deeper") / f"f{i}.bin").write_bytes(os.urandom(1000 + i * 7919))
    (root / "empty").write_bytes(b"")


def free_local_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def fresh_key(path: Path) -> Path:
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(path)], check=True)
    return path


class HostListener:
    """A TCP service on the host's loopback that records whether anyone ever connected."""

    def __init__(self):
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(8)
        self.sock.settimeout(0.2)
        self.port = self.sock.getsockname()[1]
        self.accepted = 0
        self._stop = False
        self.thread = threading.Thread(target=self._loop, daemon=True)
        self.thread.start()

    def _loop(self):
        while not self._stop:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                continue
            self.accepted += 1
            conn.sendall(b"HOST-SECRET\n")
            conn.close()

    def close(self):
        self._stop = True
        self.thread.join(5)
        self.sock.close()


@pytest.fixture
def ssh_host(make_host, podman_store):  # noqa: F811
    h = make_host("a", **podman_store.config, **{"podman.command": COMMAND,
                                                 "podman.ulimits": "nofile=1024:1024,nproc=1024:1024"})
    h.cli("keys", "ensure")
    return h


def start_project(h, image_dir: Path) -> str:
    pid = str(uuid.uuid4())
    h.cli("project", "create", pid)
    out = h.json("project", "start", pid, "--image", f"dir:{image_dir}")
    assert out["sshd"] == "running", out
    wait_for(h.project_path(pid) / "started")
    return pid


def check_full_session(h, pid: str, work: Path, marker: str) -> Session:
    """What every image must give: exec, PTY, rsync both ways, scp, sftp confined to the project, -L."""
    s = Session(h, pid, work / "client")
    out = s.run("id -u; echo $HOME; pwd; cat /etc/image; echo $COCALC_PROJECT_ID").stdout.split()
    assert out == ["0", "/home/user", "/home/user", marker, pid]

    tty = s.run("tty", "-tt").stdout.strip()
    assert tty.startswith("/dev/pts/"), tty

    # rsync both ways, contents compared by checksum
    src, back = work / "src", work / "back"
    make_files(src)
    subprocess.run(["rsync", "-a", "-e", s.rsh, f"{src}/", f"{s.user}@127.0.0.1:up/"], check=True, timeout=120,
                   capture_output=True)
    assert tree_digest(h.project_path(pid) / "up") == tree_digest(src)
    s.run("echo made-inside > up/sub/inside.txt")
    subprocess.run(["rsync", "-a", "-e", s.rsh, f"{s.user}@127.0.0.1:up/", f"{back}/"], check=True, timeout=120,
                   capture_output=True)
    want = tree_digest(src)
    want["sub/inside.txt"] = hashlib.sha256(b"made-inside\n").hexdigest()
    assert tree_digest(back) == want

    # scp (SFTP protocol) and legacy scp (-O: the bundle's scp on the server side)
    for flag, name in (([], "scp-sftp.bin"), (["-O"], "scp-legacy.bin")):
        subprocess.run(["scp", *flag, *s.options(), "-P", str(s.port), str(src / "sub" / "f1.bin"),
                        f"{s.user}@127.0.0.1:{name}"], check=True, timeout=120, capture_output=True)
        assert (h.project_path(pid) / name).read_bytes() == (src / "sub" / "f1.bin").read_bytes()

    # sftp: the project's files, its root is the container's root, `..` stops there
    res = s.sftp("pwd\nls up/sub\ncd ../../../../..\npwd\nls -1 /\nget /etc/image " + str(work / "image.txt") + "\n")
    assert res.returncode == 0, res.stderr
    assert "Remote working directory: /home/user" in res.stdout
    assert "up/sub/inside.txt" in res.stdout
    assert "Remote working directory: /\n" in res.stdout
    assert (work / "image.txt").read_text() == marker + "\n"
    host_var_tmp = h.base.parent.name  # this test's directory below the host's /var/tmp
    res = s.sftp("-ls -1 /var/tmp\n-ls -1 " + str(h.base.parent) + "\n")
    listed = [ln for ln in res.stdout.splitlines() if not ln.startswith("sftp>")]
    assert not any(host_var_tmp in ln for ln in listed) and "not found" in res.stderr, (listed, res.stderr)

    # -L into the project's own network: a server only the container's loopback has
    s.run("mkdir -p www && echo served-inside > www/index.html && "
          "busybox httpd -p 127.0.0.1:8888 -h $HOME/www")
    local = free_local_port()
    fwd = subprocess.Popen(s.ssh_argv("-N", "-o", "ExitOnForwardFailure=yes", "-L", f"127.0.0.1:{local}:127.0.0.1:8888"),
                           stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{local}/index.html", timeout=10) as resp:
                    assert resp.read() == b"served-inside\n"
                break
            except OSError:
                assert fwd.poll() is None, fwd.stderr.read()
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.3)
    finally:
        fwd.terminate()
        fwd.wait(10)
    return s


def check_escapes_fail(h, s: Session, work: Path) -> None:
    # host processes: the session's /proc is the container's pid namespace
    comms = s.run("for f in /proc/[0-9]*/comm; do cat $f; done 2>/dev/null").stdout.split()
    assert comms and "pytest" not in comms and not any(c.startswith("python") for c in comms), comms
    # "/proc/1/environ" names the container's first process (the project's env), never the host's init
    res = s.run("cat /proc/1/environ", check=False)
    assert f"COCALC_PROJECT_ID={s.pid}" in res.stdout.split("\0"), res.stdout
    assert Path("/proc/1/comm").read_text().strip() not in s.run("cat /proc/1/comm").stdout.split()

    # the host's loopback services: not reachable by connect nor by -L
    listener = HostListener()
    try:
        res = s.run(f"echo x | busybox nc -w 3 127.0.0.1 {listener.port}", check=False)
        assert "HOST-SECRET" not in res.stdout
        local = free_local_port()
        fwd = subprocess.Popen(s.ssh_argv("-N", "-L", f"127.0.0.1:{local}:127.0.0.1:{listener.port}"),
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            time.sleep(3)
            got = b""
            try:
                with socket.create_connection(("127.0.0.1", local), timeout=5) as c:
                    c.settimeout(5)
                    got = c.recv(100)
            except OSError:
                pass
            assert b"HOST-SECRET" not in got
        finally:
            fwd.terminate()
            fwd.wait(10)
        assert listener.accepted == 0
    finally:
        listener.close()

    # -R is off by default
    res = s.run("true", "-o", "ExitOnForwardFailure=yes", "-R", "127.0.0.1:0:127.0.0.1:22", check=False)
    assert res.returncode == 255 and "remote port forwarding failed" in res.stderr, res.stderr

    # host files: a file only the host has is not there, whatever the path
    secret = h.base / "host-only.txt"
    secret.write_text("host only\n")
    res = s.run(f"cat {secret}; cat /../../{secret}", check=False)
    assert "host only" not in res.stdout


def check_only_the_upstream_key(h, s: Session, pid: str, work: Path) -> None:
    other = fresh_key(work / "other_key")
    res = s.run("true", key=other, check=False)
    assert res.returncode == 255 and "Permission denied" in res.stderr
    # a user's key (the hub-facing list in the project's own ~/.ssh) does not open the sshd itself
    assert s.run("cat .ssh/authorized_keys").stdout.strip() == s.user_key_line
    res = s.run("true", key=s.user_key, check=False)
    assert res.returncode == 255 and "Permission denied" in res.stderr
    # and the project cannot add one to the sshd's own list (a read-only mount)
    res = s.run("echo x >> /opt/cocalc/ssh-state/home/.ssh/authorized_keys", check=False)
    assert res.returncode != 0


def with_agent(s: Session, command: str) -> subprocess.CompletedProcess:
    """`ssh -A` with a running ssh-agent of the client's."""
    agent = subprocess.run(["ssh-agent", "-s"], capture_output=True, text=True, check=True).stdout
    env = dict(os.environ)
    for part in agent.replace("\n", ";").split(";"):
        if "=" in part and not part.strip().startswith("export"):
            k, v = part.strip().split("=", 1)
            env[k] = v
    try:
        argv = [a.replace("IdentityAgent=none", "IdentityAgent=" + env["SSH_AUTH_SOCK"]) for a in s.ssh_argv("-A")]
        return subprocess.run([*argv, command], capture_output=True, text=True, env=env, timeout=60)
    finally:
        subprocess.run(["ssh-agent", "-k"], env=env, capture_output=True)


def test_busybox_project_gets_a_full_confined_ssh_session(ssh_host, workdir):
    h = ssh_host
    pid = start_project(h, busybox_image(workdir))
    st = h.json("project", "status", pid)
    assert st["sshd"] == "running" and st["ssh_port"]
    s = check_full_session(h, pid, workdir / "s", "one")
    check_only_the_upstream_key(h, s, pid, workdir / "s")
    check_escapes_fail(h, s, workdir / "s")

    # agent forwarding: the session gets a socket
    res = with_agent(s, 'test -S "$SSH_AUTH_SOCK" && echo agent-ok')
    assert "agent-ok" in res.stdout, res.stderr

    # the project may stop its own sshd: status says so, and `project start` of the running project revives it
    s.run("kill $(cat /tmp/.cocalc-sshd.pid)", check=False)
    deadline = time.monotonic() + 30
    while h.json("project", "status", pid)["sshd"] != "not answering":
        assert time.monotonic() < deadline, "the sshd is still answering"
        time.sleep(0.5)
    again = h.json("project", "start", pid)
    assert again["already_running"] is True and again["sshd"] == "running"
    assert s.run("echo back").stdout == "back\n"

    # the host key is kept root-only outside the project, and survives stop/start
    key = h.data / "sync" / "projects" / pid / "ssh" / "ssh_host_ed25519_key"
    assert key.stat().st_uid == 0 and key.stat().st_mode & 0o777 == 0o600
    assert (key.parent.stat().st_mode & 0o777) == 0o700
    before = st["ssh_host_key"]
    port = s.port
    h.cli("project", "stop", pid)
    st = h.json("project", "status", pid)
    assert st["sshd"] == "stopped" and st["ssh_port"] is None and st["ssh_host_key"] == before
    answer = h.json("sshpiper", "auth", f"project-{pid}")
    assert not answer["allowed"] and "not running" in answer["reason"]  # the auth hook refuses it
    res = s.run("true", check=False)
    assert res.returncode == 255 and port  # nothing listens on the old port
    h.json("project", "start", pid)
    s.refresh()  # pins the same host key with StrictHostKeyChecking=yes
    assert h.json("project", "status", pid)["ssh_host_key"] == before
    assert s.run("cat up/sub/inside.txt").stdout == "made-inside\n"
    h.cli("project", "stop", pid)


def test_project_ssh_command_opens_a_session_as_sshpiperd_would(ssh_host, workdir):
    h = ssh_host
    pid = start_project(h, busybox_image(workdir))
    res = h.cli("project", "ssh", pid, "--", "echo", "hello-from", "$HOME")
    assert res.stdout == "hello-from /home/user\n"
    res = h.cli("project", "ssh", pid, "--", "exit 7", check=False)
    assert res.returncode == 7
    h.cli("project", "stop", pid)
    res = h.cli("project", "ssh", pid, "--", "true", check=False)
    assert res.returncode == 5 and "not running" in res.stderr


def debian_tree(workdir: Path) -> Path:
    """A glibc Debian root (debootstrap minbase, cached outside the test: building it takes minutes)."""
    cache = Path(DEBIAN_TREE)
    if not (cache / "bin" / "bash").exists():
        if not shutil.which("debootstrap"):
            pytest.skip("debootstrap is not installed")
        tmp = cache.with_name(cache.name + f".tmp{os.getpid()}")
        shutil.rmtree(tmp, ignore_errors=True)
        mirror = [os.environ["COCALC_TEST_DEBIAN_MIRROR"]] if os.environ.get("COCALC_TEST_DEBIAN_MIRROR") else []
        subprocess.run(["debootstrap", "--variant=minbase", "bookworm", str(tmp), *mirror],
                       check=True, capture_output=True, timeout=1800)
        os.rename(tmp, cache)
    dest = workdir / "debian"
    subprocess.run(["cp", "-a", "--reflink=auto", f"{cache}/.", str(dest)], check=True)
    (dest / "etc" / "image").write_text("debian\n")
    (dest / "home" / "user").mkdir(parents=True, exist_ok=True)
    # the test's server inside the project (-L) and its nc: the image has neither; the session's
    # tools (rsync, sftp-server, scp) must come from the bundle, so none of those is added
    shutil.copy2(shutil.which("busybox") or "/bin/busybox", dest / "usr" / "local" / "bin" / "busybox")
    return dest


def test_debian_project_gets_the_same_session(make_host, podman_store, workdir):  # noqa: F811
    tree = debian_tree(workdir)
    assert not (tree / "usr" / "bin" / "rsync").exists(), "the bundle must bring rsync"
    h = make_host("d", **podman_store.config, **{"podman.command": COMMAND,
                                                 "podman.ulimits": "nofile=1024:1024,nproc=1024:1024"})
    h.cli("keys", "ensure")
    pid = start_project(h, tree)
    s = check_full_session(h, pid, workdir / "s", "debian")
    assert s.run("echo $SHELL").stdout.strip() == "/bin/bash"
    check_escapes_fail(h, s, workdir / "s")
    h.cli("project", "stop", pid)


def test_dry_run_start_prints_the_sshd_and_makes_nothing(ssh_host, workdir):
    h = ssh_host
    tree = busybox_image(workdir)
    pid = str(uuid.uuid4())
    h.cli("project", "create", pid)
    out = h.cli("--dry-run", "project", "start", pid, "--image", f"dir:{tree}").stdout
    assert "/opt/cocalc/ssh/bin/dropbear -F -E -e -s -k -c /opt/cocalc/ssh-state/session" in out, out
    assert "exec --user 0:0 --detach -- project-" in out  # a numeric user: no name to resolve
    assert not (h.data / "ssh-bundle").exists()
    assert not (h.data / "sync" / "projects" / pid / "ssh").exists()
    assert not (h.data / "project-ssh" / pid).exists()


def test_a_restore_on_another_host_brings_the_same_host_key(make_host, workdir, podman_store):  # noqa: F811
    from tests.support.backup import backup_host

    common = {**podman_store.config, "podman.command": COMMAND, "podman.ulimits": "nofile=1024:1024,nproc=1024:1024"}
    a = backup_host(make_host, workdir, "a", **common)
    tree = busybox_image(workdir)
    pid = str(uuid.uuid4())
    a.cli("keys", "ensure")
    a.cli("project", "create", pid)
    assert a.json("project", "start", pid, "--image", f"dir:{tree}")["sshd"] == "running"
    key_a = a.json("project", "status", pid)["ssh_host_key"]
    a.cli("project", "stop", pid)
    a.cli("backup", "create", pid)

    b = backup_host(make_host, workdir, "b", init_repo=False, **common, **{"isolation.uid_base": (1 << 20) + 7 * 65536})
    b.cli("keys", "ensure")
    b.cli("restore", pid, "latest")
    key = b.data / "sync" / "projects" / pid / "ssh" / "ssh_host_ed25519_key"
    assert key.stat().st_uid == 0 and key.stat().st_mode & 0o777 == 0o600
    assert b.json("project", "start", pid, "--image", f"dir:{tree}")["sshd"] == "running"
    assert b.json("project", "status", pid)["ssh_host_key"] == key_a
    assert b.cli("project", "ssh", pid, "--", "echo", "restored").stdout == "restored\n"
    b.cli("project", "stop", pid)


def test_remote_forwarding_and_agent_forwarding_follow_the_config(make_host, workdir, podman_store):  # noqa: F811
    h = make_host("r", **podman_store.config, **{"podman.command": COMMAND,
                                                 "podman.ulimits": "nofile=1024:1024,nproc=1024:1024",
                                                 "ssh.remote_forwarding": True, "ssh.agent_forwarding": False})
    h.cli("keys", "ensure")
    pid = start_project(h, busybox_image(workdir))
    s = Session(h, pid, workdir / "r")
    res = s.run("echo forwarded", "-o", "ExitOnForwardFailure=yes", "-R", "127.0.0.1:0:127.0.0.1:22", check=False)
    assert res.returncode == 0 and res.stdout == "forwarded\n", res.stderr
    res = with_agent(s, 'echo "agent=$SSH_AUTH_SOCK"')
    assert res.returncode == 0 and res.stdout == "agent=\n", res  # no-agent-forwarding on the upstream key
    h.cli("project", "stop", pid)
