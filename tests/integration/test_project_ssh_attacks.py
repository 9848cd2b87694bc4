"""Attacks on SSH into a project, each asserting that the boundary holds (real podman/runc, dropbear,
nft, btrfs; sshpiperd is not installable here, so a login is what sshpiperd would do with the auth
hook's answer: the upstream key to 127.0.0.1:<ssh_port>).

The attacker is the project's user: root of its container (files, processes, the image's contents,
/etc/passwd, anything in $HOME), or a local unprivileged user of the host (`nobody`). One project is
shared by most tests (module fixture); the tests that kill, rotate or stop use their own or restart it.
The strongest attacks come first.
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil
import socket
import subprocess
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.support.hosts import Host, cleanup_mounts_under, release_guarded_ports
from tests.support.rootfs import PodmanStore, busybox_tree
from tests.support.poll import wait_for_path as wait_for
from tests.support.poll import wait_until

pytestmark = pytest.mark.integration

COMMAND = "/bin/sh -c 'echo started > /home/user/started; exec /bin/sleep 100000'"
PIDS = 96  # the containers' pids limit (podman.pids_limit)
EXTRA_APPLETS = ["nc", "rm", "env", "ps", "grep", "kill", "head", "yes", "tr", "mkfifo", "mv", "seq", "sed",
                 "printf", "readlink", "cp", "ln", "timeout"]


@dataclass
class Rig:
    """One host, one podman store, one busybox image; projects started here are stopped at the end."""

    base: Path
    host: Host
    store: PodmanStore
    tree: Path | None = None
    started: list[str] = field(default_factory=list)
    ports: dict[str, int] = field(default_factory=dict)

    @property
    def key(self) -> Path:  # the upstream key (the REST answer's privateKey is this very file)
        return self.host.data / "secrets" / "sshpiper" / "upstream_key"

    def start(self, pid: str | None = None) -> str:
        h = self.host
        if pid is None:
            pid = str(uuid.uuid4())
            h.cli("project", "create", pid)
            self.started.append(pid)
        out = h.json("project", "start", pid, "--image", f"dir:{self.tree}")
        assert out["sshd"] == "running", out
        wait_for(h.project_path(pid) / "started")
        self.refresh(pid)
        return pid

    def refresh(self, pid: str) -> None:
        st = self.host.json("project", "status", pid)
        assert st["ssh_port"] and st["ssh_host_key"], st
        self.ports[pid] = st["ssh_port"]
        (self.base / f"known_hosts-{pid}").write_text(f"[127.0.0.1]:{st['ssh_port']} {st['ssh_host_key']}\n")

    def restart(self, pid: str) -> None:
        self.host.cli("project", "stop", pid)
        self.start(pid)

    def ssh_argv(self, pid: str, *extra: str, key: Path | None = None) -> list[str]:
        return ["ssh", "-i", str(key or self.key), "-o", "IdentitiesOnly=yes", "-o", "IdentityAgent=none",
                "-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=yes", "-o", "ConnectTimeout=20",
                "-o", f"UserKnownHostsFile={self.base / f'known_hosts-{pid}'}", "-o", "GlobalKnownHostsFile=/dev/null",
                "-p", str(self.ports[pid]), *extra, "user@127.0.0.1"]

    def ssh(self, pid: str, command: str, *extra: str, key: Path | None = None, check: bool = True,
            timeout: float = 90) -> subprocess.CompletedProcess:
        res = subprocess.run([*self.ssh_argv(pid, *extra, key=key), command], capture_output=True, text=True,
                             timeout=timeout)
        if check and res.returncode != 0:
            raise AssertionError(f"ssh {command!r} exited {res.returncode}: {res.stderr}")
        return res

    def inspect(self, pid: str) -> dict:
        return json.loads(self.store.run("container", "inspect", f"project-{pid}").stdout)[0]

    def container_exec(self, pid: str, script: str) -> subprocess.CompletedProcess:
        return self.store.run("exec", f"project-{pid}", "/bin/sh", "-c", script, check=False)


def disk_bytes(*roots: Path) -> int:
    """Bytes allocated on disk by every file below `roots` (st_blocks, no symlink followed)."""
    total = 0
    for root in roots:
        for d, _, files in os.walk(root):
            for f in files:
                try:
                    total += os.lstat(os.path.join(d, f)).st_blocks * 512
                except OSError:
                    pass
    return total


def banner(host: str, port: int, timeout: float = 5, netns: str | None = None) -> bytes:
    """The first bytes a TCP server at host:port sends (b'' when nothing answers), optionally from a netns."""
    code = ("import socket,sys\ntry:\n s=socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=float(sys.argv[3]))\n"
            " s.settimeout(float(sys.argv[3]))\n sys.stdout.write(s.recv(64).decode('latin-1'))\nexcept OSError:\n pass\n")
    argv = ["/usr/bin/python3", "-c", code, host, str(port), str(timeout)]
    if netns:
        argv = ["ip", "netns", "exec", netns, *argv]
    res = subprocess.run(argv, capture_output=True, text=True, timeout=timeout * 3 + 10)
    return res.stdout.encode("latin-1")


@pytest.fixture(scope="module")
def rig():
    if os.geteuid() != 0:
        pytest.skip("needs root")
    base = Path(tempfile.mkdtemp(prefix="cocalc-test-", dir="/var/tmp"))
    os.chmod(base, 0o711)
    store = PodmanStore(base / "podman" / "root", base / "podman" / "run", base / "podman" / "tmp")
    for p in (store.root, store.runroot, store.tmpdir):
        p.mkdir(parents=True, exist_ok=True)
    # a uid range no other test host on this machine hands out (they all start at 2^20): the process
    # checks below look for the range's processes host-wide
    uid_base = (1 << 20) + random.randrange(2048, 16384) * 65536
    h = Host(base / "a", extra_config={**store.config, "podman.command": COMMAND, "podman.pids_limit": PIDS,
                                       "podman.ulimits": "nofile=1024:1024,nproc=1024:1024",
                                       "isolation.uid_base": uid_base})
    r = Rig(base, h, store)
    try:
        h.init("1G")
        h.cli("keys", "ensure")
        t = busybox_tree(base / "tree")
        for applet in EXTRA_APPLETS:
            if not (t / "bin" / applet).exists():
                os.link(t / "bin" / "busybox", t / "bin" / applet)
        r.tree = t
        yield r
    finally:
        for pid in r.started:
            h.cli("project", "stop", pid, check=False)
        store.teardown()
        release_guarded_ports(h)
        cleanup_mounts_under(base)
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture(scope="module")
def shared(rig) -> str:
    return rig.start()


# -- holes found (these fail until fixed) ----------------------------------------------------------

def test_project_output_cannot_fill_the_hosts_disk(rig, shared):
    """The project replaces /bin/sleep (its container's command ends in `exec /bin/sleep`) with a script that
    writes to stdout; at its next start the output goes to podman's container log (k8s-file, no size
    limit) on the host's disk, outside the project's quota. Unbounded, that filled 2.9 GB in 10 s by
    hand; here 32 MiB must not become 32 MiB of host files."""
    line = "0123456789abcdef" * 4
    script = ["#!/bin/sh", f"yes {line} | head -c 33554432", "echo > /home/user/flooded", 'exec /bin/busybox sleep "$@"']
    rig.ssh(shared, "rm /bin/sleep && printf '%s\\n' " + " ".join(f"'{w}'" for w in script)
            + " > /bin/sleep && chmod 755 /bin/sleep")
    roots = [rig.store.root, rig.store.runroot, rig.store.tmpdir]
    try:
        rig.host.cli("project", "stop", shared)
        before = disk_bytes(*roots)
        rig.start(shared)
        wait_for(rig.host.project_path(shared) / "flooded", timeout=120)
        grown = disk_bytes(*roots) - before
    finally:
        rig.ssh(shared, "rm -f /bin/sleep /home/user/flooded; ln /bin/busybox /bin/sleep", check=False)
    assert grown < 4 << 20, (f"32 MiB written by the project to its stdout became {grown / (1 << 20):.1f} MiB of "
                             f"host files (podman's container log, outside the disk quota)")


class Neighbour:
    """A machine on the host's network: a network namespace behind a veth pair (an L2 link to the host),
    that routes what it likes through the host (any machine on the LAN may)."""

    def __init__(self):
        tag = uuid.uuid4().hex[:6]
        self.ns, self.outer, self.inner = f"a15n{tag}", f"a15h{tag}", f"a15p{tag}"
        self.net = f"198.18.{int(tag[:2], 16)}"

    def __enter__(self) -> "Neighbour":
        ns, outer, inner, net = self.ns, self.outer, self.inner, self.net
        try:
            for c in (["ip", "netns", "add", ns], ["ip", "link", "add", outer, "type", "veth", "peer", "name", inner],
                      ["ip", "link", "set", inner, "netns", ns], ["ip", "addr", "add", f"{net}.1/30", "dev", outer],
                      ["ip", "link", "set", outer, "up"], self.argv("ip", "addr", "add", f"{net}.2/30", "dev", inner),
                      self.argv("ip", "link", "set", inner, "up"), self.argv("ip", "link", "set", "lo", "up")):
                subprocess.run(c, check=True, capture_output=True)
        except BaseException:
            self.__exit__()
            raise
        self.host_mac = Path(f"/sys/class/net/{outer}/address").read_text().strip()
        return self

    def __exit__(self, *exc) -> None:
        subprocess.run(["ip", "link", "del", self.outer], capture_output=True)
        subprocess.run(["ip", "netns", "del", self.ns], capture_output=True)

    def argv(self, *argv: str) -> list[str]:
        return ["ip", "netns", "exec", self.ns, *argv]

    def route(self, dest: str) -> None:
        subprocess.run(self.argv("ip", "route", "add", dest, "via", f"{self.net}.1"), check=True, capture_output=True)


def test_a_lan_neighbour_cannot_reach_the_sshd_at_its_container_address(rig, shared):
    """The same neighbour routes the container subnet through the host and connects to the container's
    bridge address, port 22, with its ordinary TCP stack: the port guard must hold for forwarded
    connections too, so that every login passes the auth hook."""
    ip = rig.inspect(shared)["NetworkSettings"]["IPAddress"]
    assert ip and banner(ip, 22).startswith(b"SSH-"), "root (sshpiperd's user) reaches the sshd there"
    with Neighbour() as n:
        n.route(f"{ip}/32")
        got = banner(ip, 22, netns=n.ns)
    assert not got.startswith(b"SSH-"), (f"a client routed through the host reached the project sshd at "
                                         f"{ip}:22 past the port guard: {got!r}")


SYN_ACK_SNIFFER = """\
import socket, struct, sys, threading, time
port, ifname = int(sys.argv[1]), sys.argv[2]
r = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(0x0800))
r.bind((ifname, 0))
r.settimeout(0.5)
def connect():
    try:
        socket.create_connection(("127.0.0.1", port), timeout=6)
    except OSError:
        pass
threading.Thread(target=connect, daemon=True).start()
end = time.monotonic() + 6
while time.monotonic() < end:
    try:
        f = r.recv(2048)
    except OSError:
        continue
    ip = f[14:]
    ihl = (ip[0] & 15) * 4
    if ip[9] == 6 and struct.unpack(">H", ip[ihl:ihl + 2])[0] == port and ip[ihl + 13] & 0x12 == 0x12:
        print("SYN-ACK from", socket.inet_ntoa(ip[12:16]))
        break
"""


def test_a_lan_neighbour_cannot_reach_a_published_port_through_its_loopback_dnat(rig, shared):
    """The neighbour sends a SYN to 127.0.0.1:<published ssh port> through the host (its own loopback
    routes removed): the port mapping's DNAT (any source) sends it on to the container. The guard must
    drop it like any other connection the host forwards into a project. Its kernel drops the answer
    (source 127.0.0.1 from outside), so the neighbour watches its link for the SYN-ACK."""
    port = rig.ports[shared]
    assert banner("127.0.0.1", port).startswith(b"SSH-"), "root (sshpiperd's user) reaches the published port"
    with Neighbour() as n:
        for c in (["ip", "route", "del", "table", "local", "127.0.0.0/8", "dev", "lo"],
                  ["ip", "route", "del", "table", "local", "127.0.0.1", "dev", "lo"],
                  ["ip", "route", "add", "127.0.0.1/32", "via", f"{n.net}.1", "src", f"{n.net}.2"]):
            subprocess.run(n.argv(*c), check=True, capture_output=True)
        got = subprocess.run(n.argv("/usr/bin/python3", "-c", SYN_ACK_SNIFFER, str(port), n.inner),
                             capture_output=True, text=True, timeout=60)
    assert got.returncode == 0, got.stderr
    assert "SYN-ACK" not in got.stdout, (f"a client routed through the host reached the project sshd through "
                                         f"127.0.0.1:{port} (the port mapping's DNAT): {got.stdout!r}")


def test_the_guard_keeps_a_projects_own_traffic_to_the_hosts_network(rig, shared):
    """The guard drops what the host forwards into a project, not the replies to the project's own
    connections: the container opens a TCP connection to a machine on the host's network and asks it a
    DNS question (UDP), and gets both answers."""
    code = ("import socket,struct,threading\nt=socket.socket()\nt.setsockopt(socket.SOL_SOCKET,socket.SO_REUSEADDR,1)\n"
            "t.bind(('0.0.0.0',7070))\nt.listen(4)\nu=socket.socket(socket.AF_INET,socket.SOCK_DGRAM)\n"
            "u.bind(('0.0.0.0',53))\n"
            "def dns():\n"
            " while True:\n"
            "  q,a=u.recvfrom(512); end=q.index(b'\\0',12)+5; a_rr=q[end-4:end-2]==b'\\0\\1'\n"
            "  rr=b'\\xc0\\x0c\\0\\1\\0\\1\\0\\0\\0\\x3c\\0\\4'+bytes([192,0,2,77]) if a_rr else b''\n"
            "  u.sendto(q[:2]+b'\\x81\\x80'+struct.pack('>HHHH',1,int(a_rr),0,0)+q[12:end]+rr,a)\n"
            "threading.Thread(target=dns,daemon=True).start()\nprint('ready',flush=True)\n"
            "while True:\n c,_=t.accept(); c.sendall(b'tcp-answer\\n'); c.close()\n")
    with Neighbour() as n:
        server = subprocess.Popen(n.argv("/usr/bin/python3", "-c", code), stdout=subprocess.PIPE, text=True)
        try:
            assert server.stdout.readline().strip() == "ready"
            tcp = rig.container_exec(shared, f"nc -w 5 {n.net}.2 7070 </dev/null")
            udp = rig.container_exec(shared, f"/bin/busybox nslookup -type=a probe.test {n.net}.2")
        finally:
            server.kill()
            server.wait()
    assert "tcp-answer" in tcp.stdout, f"the project's TCP connection out got no answer: {tcp.stdout!r} {tcp.stderr!r}"
    assert "192.0.2.77" in udp.stdout, f"the project's DNS question (UDP) got no answer: {udp.stdout!r} {udp.stderr!r}"


def test_a_dead_containers_ssh_port_is_not_routed_to_whoever_binds_it(rig):
    """The project kills its own container (its init's child): host sqlite still says running with the
    old ports, which no one holds any more. A local unprivileged user binds the ssh port; the auth hook
    must not send the project's users (sshpiperd, root, past the port guard) to that listener."""
    pid = rig.start()
    port = rig.ports[pid]
    top = rig.host.project_path(pid)
    owner = top.stat().st_uid
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(rig.base / f"user-{pid}")], check=True)
    (top / ".ssh").mkdir(mode=0o700)
    (top / ".ssh" / "authorized_keys").write_text((rig.base / f"user-{pid}.pub").read_text())
    for p in (top / ".ssh", top / ".ssh" / "authorized_keys"):
        os.chown(p, owner, owner)
    assert rig.host.json("sshpiper", "auth", f"project-{pid}")["allowed"]
    rig.ssh(pid, "kill -9 -1", check=False, timeout=60)  # every process but init: init follows its child
    wait_until("the container to exit", lambda: rig.host.json("project", "status", pid)["state"].startswith("crashed"))
    st = rig.host.json("project", "status", pid)
    # it killed its own processes (exit 137 under a memory limit): no OOM kill, and status must not say one
    assert st["state"] == "crashed" and not st["out_of_memory"] and st["limits"].get("memory"), st
    fake = ("import socket,sys\ns=socket.socket()\ns.bind(('127.0.0.1', int(sys.argv[1])))\ns.listen(4)\n"
            "print('bound', flush=True)\nwhile True:\n c,_=s.accept(); c.sendall(b'SSH-2.0-not-the-project\\r\\n'); c.close()\n")
    listener = subprocess.Popen(["runuser", "-u", "nobody", "--", "/usr/bin/python3", "-c", fake, str(port)],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        hijacked = listener.stdout.readline().strip() == "bound"
        answer = rig.host.json("sshpiper", "auth", f"project-{pid}")
        lands = banner("127.0.0.1", port) if hijacked else b""  # what sshpiperd (root) would talk to
    finally:
        listener.kill()
        listener.wait()
        rig.host.cli("project", "stop", pid, check=False)
    assert not (answer["allowed"] and b"not-the-project" in lands), (
        f"the auth hook still routes project-{pid} to {answer['upstream_host']} ({answer['reason']}), where "
        f"nobody's listener answers {lands!r}")


def test_upstream_key_rotation_reaches_running_projects(rig, shared):
    """`keys rotate --which upstream`: sshpiperd logs in with the new key at once, so a running project
    must accept it; after `--finish` the retired key (rotated because it may have leaked) must open
    no running project."""
    old = rig.base / "old_upstream_key"
    shutil.copy2(rig.key, old)
    try:
        rig.host.cli("keys", "rotate", "--which", "upstream")
        with_new = rig.ssh(shared, "echo in", check=False)
        rig.host.cli("keys", "rotate", "--which", "upstream", "--finish")
        with_old = rig.ssh(shared, "echo in", key=old, check=False)
    finally:
        rig.host.cli("keys", "rotate", "--which", "upstream", "--finish", check=False)
        rig.restart(shared)  # the project's sshd learns the current key (the next tests log in with it)
    assert with_new.returncode == 0, f"during a rotation the running project refuses sshpiperd's new key: {with_new.stderr}"
    assert with_old.returncode != 0, "after --finish the running project still accepts the retired upstream key"


def test_a_fifo_for_etc_passwd_does_not_hang_project_start(rig, shared):
    """The project swaps its /etc/passwd for a FIFO and stops its sshd: `project start` (which revives
    the sshd, first adding the login user to /etc/passwd inside the container) must not block on it
    (it holds the project's start/stop lock: `project stop` would time out and the project keep running)."""
    rig.ssh(shared, "mv /etc/passwd /etc/passwd.a15 && mkfifo /etc/passwd && kill $(cat /tmp/.cocalc-sshd.pid)")
    wait_until("the sshd to stop", lambda: rig.host.json("project", "status", shared)["sshd"] != "running")
    t0 = time.monotonic()
    try:
        res = rig.host.cli("project", "start", shared, check=False, timeout=60)
        hung = None
    except subprocess.TimeoutExpired:
        res, hung = None, time.monotonic() - t0
    finally:
        # every reader of the FIFO (podman, as host root: even the clean-up's exec opens it) gets EOF from
        # a write end opened while it waits; then put the file back
        fifo = rig.host.data / "project-roots" / shared / "etc" / "passwd"
        done = threading.Event()

        def feed() -> None:
            while not done.is_set():
                try:
                    os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))  # ENXIO while no reader waits
                except OSError:
                    pass
                time.sleep(0.1)

        feeder = threading.Thread(target=feed, daemon=True)
        feeder.start()
        try:
            rig.store.run("exec", "--user", "0:0", f"project-{shared}", "/bin/sh", "-c",
                          "rm -f /etc/passwd && mv /etc/passwd.a15 /etc/passwd", check=False)
        finally:
            done.set()
            feeder.join()
        rig.host.cli("project", "start", shared)
        rig.refresh(shared)
    assert hung is None, f"`project start` still blocked after {hung:.0f}s on the project's FIFO /etc/passwd"
    assert res.returncode in (0, 4, 5), res


def test_a_fifo_for_etc_passwd_is_refused_at_the_next_start_at_once(rig):
    """The same FIFO in a project that is then stopped: the next `project start` (podman run, as host
    root, opens /etc/passwd) is refused at once, not blocked until podman.run_timeout."""
    pid = rig.start()
    rig.ssh(pid, "mv /etc/passwd /etc/passwd.a15 && mkfifo /etc/passwd")
    rig.host.cli("project", "stop", pid)
    t0 = time.monotonic()
    try:
        res = rig.host.cli("project", "start", pid, "--image", f"dir:{rig.tree}", check=False, timeout=60)
    finally:
        rig.host.cli("project", "stop", pid, check=False)
    assert res.returncode == 5 and "not a regular file" in res.stderr, res
    assert time.monotonic() - t0 < 60


# -- what held (guards) ----------------------------------------------------------------------------

def _status_fields(text: str) -> dict[str, str]:
    keys = ("CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb", "NoNewPrivs", "Seccomp")
    return {k: v.strip() for k, v in (ln.split(":", 1) for ln in text.splitlines() if ":" in ln) if k in keys}


def test_a_session_is_confined_like_the_container(rig, shared):
    """A session (dropbear started with `podman exec`) has exactly the container's confinement: the same
    capabilities, no_new_privs, seccomp filter, cgroups and user namespace as the container's init."""
    out = rig.ssh(shared, "cat /proc/self/status; echo ===; cat /proc/1/status; echo ===; cat /proc/self/cgroup; "
                          "echo ===; cat /proc/1/cgroup; echo ===; cat /proc/self/uid_map").stdout.split("===\n")
    mine, init = _status_fields(out[0]), _status_fields(out[1])
    assert mine == init and mine["NoNewPrivs"] == "1" and mine["Seccomp"] == "2", (mine, init)
    assert out[2] == out[3], (out[2], out[3])
    inside, host_base, count = (int(x) for x in out[4].split())
    assert inside == 0 and host_base >= 1 << 20 and count == 65536, out[4]  # the project's range, not host root


def test_a_fork_flood_in_a_session_stays_within_the_pids_limit(rig, shared):
    """160 background processes from one session (pids limit 96): the flood hits the container's pids
    cgroup (fork fails inside), the container never holds more, and the sshd still answers."""
    # busybox sh exits at a failed fork: the flood runs in a subshell, and what follows it uses builtins only
    # (no fork) until its sleeps are killed
    res = rig.ssh(shared, ": > /tmp/forks.pids; ( for i in $(seq 1 160); do sleep 30 2>/dev/null & echo $! >> /tmp/forks.pids; "
                          "done ) 2>/tmp/forks.err; set -- /proc/[0-9]*; n=$#; "
                          "while read q; do kill $q 2>/dev/null; done < /tmp/forks.pids; echo $n; "
                          "c=0; while read l; do c=$((c+1)); done < /tmp/forks.err; echo $c",
                  check=False, timeout=120)
    lines = res.stdout.split()
    assert len(lines) == 2 and int(lines[0]) <= PIDS and int(lines[1]) > 0, res
    assert rig.ssh(shared, "echo alive").stdout == "alive\n"


def test_the_client_environment_does_not_reach_the_session(rig, shared):
    res = rig.ssh(shared, 'echo "[$LD_PRELOAD][$A15_MARK][$BASH_ENV]"', "-o", "SetEnv=LD_PRELOAD=/nonexistent/a15.so",
                  "-o", "SetEnv=A15_MARK=client", "-o", "SetEnv=BASH_ENV=/tmp/a15")
    assert res.stdout == "[][][]\n", res


def test_the_sshd_state_and_host_key_cannot_be_changed_from_inside(rig, shared):
    key = rig.host.data / "sync" / "projects" / shared / "ssh" / "ssh_host_ed25519_key"
    before = key.read_bytes()
    res = rig.ssh(shared, "for f in /opt/cocalc/ssh-state/ssh_host_ed25519_key /opt/cocalc/ssh-state/session "
                          "/opt/cocalc/ssh-state/home/.ssh/authorized_keys /opt/cocalc/ssh/bin/dropbear; do "
                          "echo x >> $f && echo wrote $f; chmod 777 $f && echo chmod $f; rm -f $f && echo rm $f; done; "
                          "mkdir /opt/cocalc/ssh-state/x && echo mkdir; true")
    assert "wrote" not in res.stdout and "chmod" not in res.stdout and "rm " not in res.stdout, res.stdout
    assert "mkdir" not in res.stdout, res.stdout
    assert key.read_bytes() == before and key.stat().st_uid == 0 and key.stat().st_mode & 0o777 == 0o600


def test_local_forwarding_cannot_reach_another_projects_sshd(rig, shared):
    other = rig.start()
    try:
        ip = rig.inspect(other)["NetworkSettings"]["IPAddress"]
        gateway = rig.inspect(shared)["NetworkSettings"]["Gateway"]
        assert banner(ip, 22).startswith(b"SSH-"), "root reaches the other project's sshd"
        for target in (f"{ip}:22", f"{gateway}:{rig.ports[other]}", f"127.0.0.1:{rig.ports[other]}"):
            local = free_port()
            fwd = subprocess.Popen(rig.ssh_argv(shared, "-N", "-L", f"127.0.0.1:{local}:{target}"),
                                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            try:
                wait_until("the forward to listen", lambda: port_open(local), timeout=30)
                got = banner("127.0.0.1", local, timeout=4)
            finally:
                fwd.terminate()
                fwd.wait(10)
            assert not got.startswith(b"SSH-"), f"-L {target} from one project reached another's sshd: {got!r}"
    finally:
        rig.host.cli("project", "stop", other, check=False)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def port_open(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return True
    except OSError:
        return False


def _range_of(rig, pid: str) -> tuple[int, int]:
    host_pid = rig.inspect(pid)["State"]["Pid"]
    first = Path(f"/proc/{host_pid}/uid_map").read_text().split()
    return int(first[1]), int(first[1]) + int(first[2])


def _processes_in(lo: int, hi: int) -> list[str]:
    found = []
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            text = Path(f"/proc/{d}/status").read_text()
        except OSError:
            continue
        m = re.search(r"^Uid:\s+(\d+)", text, re.M)
        if m and lo <= int(m.group(1)) < hi:
            found.append(f"{d} {text.splitlines()[0]}")
    return found


def test_stop_ends_every_session_and_process_and_planted_mount_points_stay_inside(rig, shared):
    """Last (it stops the shared project): a session and a detached process die with `project stop`;
    then, stopped, the project's root tree gets /opt as a symlink to a host directory: the next start
    puts the sshd's mounts inside the container, never into the host directory."""
    lo, hi = _range_of(rig, shared)
    assert _processes_in(lo, hi), "the range check sees the project's processes"
    session = subprocess.Popen([*rig.ssh_argv(shared), "setsid sleep 1001 </dev/null >/dev/null 2>&1 & exec sleep 1002"],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_until("the session's processes", lambda: len(_processes_in(lo, hi)) >= 4, timeout=30)
        rig.host.cli("project", "stop", shared)
        session.wait(30)
    finally:
        if session.poll() is None:
            session.kill()
            session.wait()
    left = _processes_in(lo, hi)
    assert not left, f"processes of the project's range outlived `project stop`: {left}"

    host_dir = rig.base / "host-dir"
    host_dir.mkdir(mode=0o755)
    overlay = rig.host.project_path(shared) / ".local" / "share" / "overlay"
    uppers = [Path(d) for d, dirs, _ in os.walk(overlay) if os.path.basename(d) == "upper"]
    assert len(uppers) == 1, uppers
    opt = uppers[0] / "opt"
    if opt.is_dir() and not opt.is_symlink():
        shutil.rmtree(opt)
    os.symlink(str(host_dir), opt)
    os.lchown(opt, lo, lo)
    try:
        out = rig.host.json("project", "start", shared, "--image", f"dir:{rig.tree}")
        assert list(host_dir.iterdir()) == [], "the sshd's mount points were made in a host directory"
        assert out["sshd"] == "running", out
    finally:
        rig.host.cli("project", "stop", shared, check=False)
