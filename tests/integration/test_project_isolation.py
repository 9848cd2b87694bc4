"""Project isolation with real podman (runc), btrfs, nft and restic: user namespaces, capabilities, the
setuid attack, the pool's flags and modes, the port guard, and ownership after a restore elsewhere."""

from __future__ import annotations

import json
import os
import socket
import sqlite3
import stat
import subprocess
import time
import urllib.request
import uuid

import pytest

from cocalc_ctl.tools import nft
from tests.support.backup import backup_host
from tests.support.proxy import DIRECT, start_proxy
from tests.support.rootfs import busybox_tree, podman_store  # noqa: F401 (fixture)
from tests.support.poll import wait_for_path as wait_for

pytestmark = pytest.mark.integration

SIZE = 65536
# what `isolation.capabilities` keeps by default, as bit numbers of CapEff
DEFAULT_CAPS = {"CHOWN": 0, "DAC_OVERRIDE": 1, "FOWNER": 3, "FSETID": 4, "KILL": 5, "SETGID": 6, "SETUID": 7,
                "NET_BIND_SERVICE": 10, "SYS_CHROOT": 18, "AUDIT_WRITE": 29}
# The container records what it is, then plants the setuid attack: a copy of busybox, setuid, in its home.
COMMAND = ("/bin/sh -c 'id > /home/user/id.txt; cat /proc/self/uid_map > /home/user/uid_map; "
           "cat /proc/self/status > /home/user/status; cp /bin/busybox /home/user/busybox; chmod u+s /home/user/busybox; "
           "cat /home/user/doc.txt > /home/user/readback 2>/home/user/readback.err; "
           "echo started > /home/user/started; exec /bin/httpd -f -p 8080 -h /home/user'")
EXTRA_APPLETS = ["cp", "chmod", "grep", "nc", "printf", "head", "ln", "mknod", "mv", "rmdir"]


def tree(workdir):
    t = busybox_tree(workdir / "tree")
    for applet in EXTRA_APPLETS:
        os.link(t / "bin" / "busybox", t / "bin" / applet)
    return t


def config(podman_store, **more):  # noqa: F811
    return {**podman_store.config, "podman.command": COMMAND, "podman.ulimits": "nofile=1024:1024,nproc=1024:1024",
            **more}


def as_nobody(*argv: str, timeout: float = 30) -> subprocess.CompletedProcess:
    return subprocess.run(["runuser", "-u", "nobody", "--", *argv], capture_output=True, text=True, timeout=timeout)


def connect_as_nobody(port: int, host: str = "127.0.0.1", timeout: float = 10) -> subprocess.CompletedProcess:
    code = ("import socket,sys\ns=socket.create_connection((sys.argv[2], int(sys.argv[1])), timeout=float(sys.argv[3]))\n"
            "s.sendall(b'GET /started HTTP/1.0\\r\\n\\r\\n'); print(s.recv(100))")
    return as_nobody("/usr/bin/python3", "-c", code, str(port), host, str(timeout))


def idmap_row(host, pid):
    with sqlite3.connect(host.data / "host.sqlite") as conn:
        conn.row_factory = sqlite3.Row
        return dict(conn.execute("SELECT * FROM project_idmaps WHERE project_id=?", (pid,)).fetchone())


def nft_script(text: str) -> None:
    subprocess.run(["nft", "-f", "-"], input=text, text=True, check=True, capture_output=True)


def get(url: str, timeout: float = 60) -> bytes:
    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(url, timeout=10) as resp:
                return resp.read()
        except OSError as exc:
            if time.monotonic() > deadline:
                raise AssertionError(f"{url}: {exc}") from None
            time.sleep(0.2)


def test_container_root_is_an_unprivileged_range_and_the_setuid_attack_fails(make_host, workdir,
                                                                           podman_store):  # noqa: F811
    h = make_host("a", **config(podman_store))
    t = tree(workdir)
    pid = str(uuid.uuid4())
    h.cli("project", "create", pid)
    h.json("project", "start", pid, "--image", f"dir:{t}")
    project = h.project_path(pid)
    wait_for(project / "started")
    base = idmap_row(h, pid)["base"]
    assert base >= 1 << 20 and base % SIZE == 0 and idmap_row(h, pid)["owner_base"] == base

    # inside: root of its own user namespace, mapped onto the project's range, few capabilities
    assert (project / "id.txt").read_text().startswith("uid=0")
    assert (project / "uid_map").read_text().split() == ["0", str(base), str(SIZE)]
    status = dict(line.split(":", 1) for line in (project / "status").read_text().splitlines() if ":" in line)
    want = sum(1 << bit for bit in DEFAULT_CAPS.values())
    assert int(status["CapEff"], 16) == want and int(status["CapBnd"], 16) == want
    assert status["NoNewPrivs"].strip() == "1"
    info = json.loads(podman_store.run("container", "inspect", f"project-{pid}").stdout)[0]
    assert info["HostConfig"]["Privileged"] is False

    # on the host its files are owned by the range, the image's files are not host root's
    bb = project / "busybox"
    st = bb.lstat()
    assert (st.st_uid, st.st_gid) == (base, base) and st.st_mode & stat.S_ISUID
    upper = project / ".local" / "share" / "overlay" / f"dir{t}" / "upper"
    assert upper.stat().st_uid == base and (upper / "proc").stat().st_uid == base
    assert (t / "bin" / "busybox").stat().st_uid == 0, "the cached image itself is not changed"

    # the pool: nosuid,nodev, closed to other users
    with open("/proc/self/mountinfo") as fh:
        line = next(ln for ln in fh if ln.split()[4] == str(h.pool))
    assert {"nosuid", "nodev"} <= set(line.split()[5].split(","))
    assert stat.S_IMODE(h.pool.stat().st_mode) == 0o700
    secret = workdir / "secret"
    secret.write_text("host secret\n")
    os.chmod(secret, 0o600)

    assert as_nobody("ls", str(h.pool)).returncode != 0
    assert as_nobody("cat", str(project / "started")).returncode != 0
    attack = as_nobody(str(bb), "cat", str(secret))
    assert attack.returncode != 0 and "host secret" not in attack.stdout
    # even with the pool opened up, the setuid binary gives nobody nothing (nosuid, and not root's anyway)
    os.chmod(h.pool, 0o711)
    try:
        who = as_nobody(str(bb), "id", "-u")
        assert who.stdout.strip() == "65534", who
        attack = as_nobody(str(bb), "cat", str(secret))
        assert attack.returncode != 0 and "host secret" not in attack.stdout
    finally:
        os.chmod(h.pool, 0o700)
    # the merged root is reachable by the project's range only (ACL), not by others
    assert as_nobody("ls", str(h.data / "project-roots" / pid)).returncode != 0

    # .snapshots stays readable to the project (root's 0755 directory, snapshot files in its range)
    h.cli("snapshot", "create", pid, "s1")
    seen = podman_store.run("exec", f"project-{pid}", "cat", "/home/user/.snapshots/s1/started", check=False)
    assert seen.stdout == "started\n", seen
    assert podman_store.run("exec", f"project-{pid}", "touch", "/home/user/.snapshots/planted",
                            check=False).returncode != 0, "but the project cannot write into it"
    # no device nodes (no CAP_MKNOD; the pool is nodev anyway), no hard link from the image into the home
    # (another mount), nor to .snapshots' files (read-only subvolume)
    for attack in ("mknod /home/user/mem c 1 1", "mknod /tmp/mem c 1 1", "ln /etc/image /home/user/hl",
                   "ln /home/user/.snapshots/s1/started /home/user/hl2"):
        res = podman_store.run("exec", f"project-{pid}", "/bin/sh", "-c", attack, check=False)
        assert res.returncode != 0, (attack, res)
    assert not (project / "mem").exists() and not (project / "hl").exists()
    res = json.loads(h.cli("--json", "doctor", check=False).stdout)
    check = next(c for c in res["checks"] if c["name"] == "pool-hardening")
    assert check["status"] == "ok", check
    h.cli("project", "stop", pid)
    assert not list((h.data / "project-lowers" / pid).glob("*")), "the id-mapped image is unmounted at stop"


def test_project_ports_answer_the_proxies_only(make_host, workdir, podman_store):  # noqa: F811
    h = make_host("a", **config(podman_store))
    t = tree(workdir)
    a, b = str(uuid.uuid4()), str(uuid.uuid4())
    for pid in (a, b):
        h.cli("project", "create", pid)
    (h.project_path(a) / a).mkdir()  # the host proxy keeps the full path: /<project>/via-proxy
    (h.project_path(a) / a / "via-proxy").write_text("through the host proxy\n")
    out = h.json("project", "start", a, "--image", f"dir:{t}")
    h.json("project", "start", b, "--image", f"dir:{t}")
    port = out["http_port"]
    wait_for(h.project_path(a) / "started")
    wait_for(h.project_path(b) / "started")

    assert get(f"http://127.0.0.1:{port}/started") == b"started\n", "root (the proxies) still connects"
    proxy = start_proxy(workdir, "host", {"data_dir": str(h.data), "proxy": DIRECT})  # runs as root, like the unit
    try:
        assert get(f"http://127.0.0.1:{proxy.port}/{a}/via-proxy") == b"through the host proxy\n"
    finally:
        proxy.stop()
    refused = connect_as_nobody(port)
    assert refused.returncode != 0 and "Connection" in refused.stderr, refused
    assert connect_as_nobody(out["ssh_port"]).returncode != 0
    # nor through the other loopback spellings (IPv6 ::1, 127.0.0.2: nothing is published there)
    assert connect_as_nobody(port, "::1", timeout=5).returncode != 0
    assert connect_as_nobody(port, "127.0.0.2", timeout=5).returncode != 0
    assert connect_as_nobody(port, "::ffff:127.0.0.1", timeout=5).returncode != 0, "an IPv6 socket, IPv4 packets"

    # nor straight at the container's bridge address, past the published port (and its guard)
    info = json.loads(podman_store.run("container", "inspect", f"project-{a}").stdout)[0]
    a_ip = info["NetworkSettings"]["IPAddress"]
    gateway = info["NetworkSettings"]["Gateway"]
    a_mac = info["NetworkSettings"]["MacAddress"]
    assert a_ip and get(f"http://{a_ip}:8080/started") == b"started\n", "root reaches the container"
    direct = connect_as_nobody(8080, a_ip, timeout=5)
    assert direct.returncode != 0 and "200 OK" not in direct.stdout, direct

    # the refusals are the guard's doing: without the port and the MAC in the sets, nobody gets through
    nft_script(f"delete element inet cocalc_ctl project_ports {{ {port} }}\n"
               f"delete element bridge cocalc_ctl project_macs {{ {a_mac} }}\n")
    try:
        ok = connect_as_nobody(port)
        assert ok.returncode == 0 and "200 OK" in ok.stdout, ok
        ok = connect_as_nobody(8080, a_ip)
        assert ok.returncode == 0 and "200 OK" in ok.stdout, ok
    finally:
        nft_script(f"add element inet cocalc_ctl project_ports {{ {port} }}\n"
                   f"add element bridge cocalc_ctl project_macs {{ {a_mac} }}\n")
    assert connect_as_nobody(8080, a_ip, timeout=5).returncode != 0
    # nor UDP: a datagram from nobody to a UDP service in the project's network namespace is dropped,
    # root's arrives (the listener runs in the container's netns: busybox has no UDP server)
    a_pid = str(info["State"]["Pid"])
    server = ("import socket,time\ns=socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\ns.bind(('0.0.0.0', 9999))\n"
              "print('ready', flush=True)\ns.settimeout(0.2)\nend=time.monotonic()+8\n"
              "while time.monotonic()<end:\n  try: print(s.recv(100).decode().strip(), flush=True)\n"
              "  except TimeoutError: pass\n")
    listener = subprocess.Popen(["nsenter", "-t", a_pid, "-n", "/usr/bin/python3", "-c", server],
                                stdout=subprocess.PIPE, text=True)
    try:
        assert listener.stdout.readline().strip() == "ready"
        send = ("import socket,sys\nsocket.socket(socket.AF_INET, socket.SOCK_DGRAM)"
                ".sendto(sys.argv[2].encode(), (sys.argv[1], 9999))")
        assert as_nobody("/usr/bin/python3", "-c", send, a_ip, "from-nobody").returncode == 0
        subprocess.run(["/usr/bin/python3", "-c", send, a_ip, "from-root"], check=True)
        got = listener.communicate(timeout=30)[0].split()
    finally:
        listener.kill()
        listener.wait()
    assert got == ["from-root"], got

    # from inside project b: neither a's container address nor the published port through the gateway

    def probe(target: str) -> bool:
        host, port = target.rsplit(":", 1)
        res = podman_store.run("exec", f"project-{b}", "/bin/sh", "-c",
                               f"printf 'GET /started HTTP/1.0\\r\\n\\r\\n' | nc -w 3 {host} {port}", check=False)
        return "started" in res.stdout

    assert a_ip and not probe(f"{a_ip}:8080")
    assert not probe(f"{gateway}:{port}")
    assert not probe(f"127.0.0.1:{port}"), "the container's loopback is its own"
    host_addrs = [w.split("/")[0] for line in subprocess.run(["ip", "-4", "-o", "addr", "show"], capture_output=True,
                                                             text=True, check=True).stdout.splitlines()
                  for w in line.split()[3:4] if not w.startswith("127.")]
    assert host_addrs
    for addr in host_addrs:  # the published port is on loopback only, whichever host address is tried
        assert not probe(f"{addr}:{port}"), addr
    # a host service on loopback only (like PostgreSQL's or sshpiper's REST port) is out of reach too,
    # through the gateway (the bridge has route_localnet on for podman's port mapping) and its other names
    svc = socket.socket()
    svc.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    svc.bind(("127.0.0.1", 0))
    svc.listen(8)
    svc.settimeout(0.1)
    try:
        for target in (f"{gateway}:{svc.getsockname()[1]}", f"127.0.0.1:{svc.getsockname()[1]}"):
            probe(target)
            try:
                conn, peer = svc.accept()
                conn.close()
                raise AssertionError(f"project b reached the host's loopback service via {target} from {peer}")
            except TimeoutError:
                pass
    finally:
        svc.close()
    macs = [info["NetworkSettings"]["MacAddress"],
            json.loads(podman_store.run("container", "inspect", f"project-{b}").stdout)[0]["NetworkSettings"][
                "MacAddress"]]
    assert all(m.startswith("02:") for m in macs)
    nft_script("".join(f"delete element bridge cocalc_ctl project_macs {{ {m} }}\n" for m in macs))
    try:
        assert probe(f"{a_ip}:8080"), "without the bridge rule the other container is reachable"
    finally:
        nft_script("".join(f"add element bridge cocalc_ctl project_macs {{ {m} }}\n" for m in macs))
    assert not probe(f"{a_ip}:8080")

    h.cli("project", "stop", a)
    listing = subprocess.run(["nft", "list", "set", "inet", "cocalc_ctl", "project_ports"], capture_output=True,
                             text=True, check=True).stdout
    assert f" {port}" not in listing.replace(",", " ").replace("{", " ").replace("}", " ") + " ", \
        "stop removes the port from the guard"
    h.cli("project", "stop", b)


def test_a_project_cannot_swap_its_snapshots_for_a_symlink_root_would_follow(make_host, workdir,
                                                                             podman_store):  # noqa: F811
    """Container root owns its home, so it could rename `.snapshots` and plant a symlink to another
    project's `.snapshots`: the snapshot timer (root) would then create into and prune the victim's
    snapshots. The running container sees `.snapshots` as a mount point it can neither rename nor
    replace; a symlink found there at start (made while stopped, by an older version) is refused."""
    h = make_host("a", **config(podman_store))
    t = tree(workdir)
    a, victim = str(uuid.uuid4()), str(uuid.uuid4())
    for pid in (a, victim):
        h.cli("project", "create", pid)
    h.cli("snapshot", "create", victim, "victims-own")
    h.json("project", "start", a, "--image", f"dir:{t}")
    home = h.project_path(a)
    wait_for(home / "started")
    rel = os.path.relpath(h.project_path(victim) / ".snapshots", home)
    for attack in (f"mv /home/user/.snapshots /home/user/.away && ln -s {rel} /home/user/.snapshots",
                   f"ln -s {rel} /home/user/.planted && mv -f /home/user/.planted /home/user/.snapshots",
                   "rmdir /home/user/.snapshots"):
        res = podman_store.run("exec", f"project-{a}", "/bin/sh", "-c", attack, check=False)
        assert res.returncode != 0, (attack, res)
    snaps = home / ".snapshots"
    assert snaps.is_dir() and not snaps.is_symlink()
    assert podman_store.run("exec", f"project-{a}", "cat", "/home/user/.snapshots/../started",
                            check=False).stdout == "started\n"
    h.cli("snapshot", "create", a, "s1")
    assert (snaps / "s1").is_dir() and not (h.project_path(victim) / ".snapshots" / "s1").exists()
    h.cli("project", "stop", a)

    # a symlink already there at start (planted while the project ran without this guard): refused
    os.rename(snaps, home / ".away")
    os.symlink(rel, snaps)
    try:
        res = h.cli("project", "start", a, "--image", f"dir:{t}", check=False)
        assert res.returncode != 0 and ".snapshots" in res.stderr, res
        assert podman_store.run("container", "exists", f"project-{a}", check=False).returncode != 0
        # and the snapshot commands refuse it too (the project is stopped: nothing can swap it meanwhile)
        for argv in (("snapshot", "create", a, "s2"), ("snapshot", "delete", a, "victims-own"),
                     ("snapshot", "prune", a, "--keep-daily", "1")):
            res = h.cli(*argv, check=False)
            assert res.returncode != 0 and ".snapshots" in res.stderr, (argv, res)
    finally:
        os.unlink(snaps)
        os.rename(home / ".away", snaps)
    assert sorted(os.listdir(h.project_path(victim) / ".snapshots")) == ["victims-own"]


def test_a_path_restore_into_a_running_project_writes_nowhere_else(make_host, workdir, podman_store):  # noqa: F811
    """Root makes a private directory in the running project's home for a `restore --path` and has the
    engine restore into it. The project owns its home: it watches for that directory, moves it aside
    and leaves a symlink to a host directory in its place. The engine must still write only into the
    directory root made (held by an fd), never through the planted symlink."""
    t = tree(workdir)
    h = backup_host(make_host, workdir, "a", **config(podman_store))
    pid = str(uuid.uuid4())
    h.cli("project", "create", pid)
    live = h.project_path(pid)
    (live / "notes").mkdir()
    (live / "notes" / "a.txt").write_text("from the backup\n")
    h.cli("--json", "backup", "create", pid)
    (live / "notes" / "a.txt").write_text("changed since\n")
    outside = workdir / "host-dir"
    outside.mkdir()
    h.json("project", "start", pid, "--image", f"dir:{t}")
    wait_for(live / "started")
    swap = ("while [ ! -e /home/user/stop-swapping ]; do for d in /home/user/.cocalc-ctl-restore-*; do "
            "if [ -d \"$d\" ] && [ ! -L \"$d\" ]; then mv \"$d\" /home/user/.moved && "
            f"ln -s {outside} \"$d\" && echo swapped > /home/user/swapped && exit 0; fi; done; done")
    podman_store.run("exec", "-d", f"project-{pid}", "/bin/sh", "-c", swap)
    time.sleep(1)
    try:
        res = h.cli("restore", pid, "latest", "--path", "notes/a.txt", "--force", check=False)
    finally:
        (live / "stop-swapping").write_text("")
    assert (live / "swapped").exists(), f"the attacker did swap the directory (else this test proves nothing): {res}"
    assert list(outside.iterdir()) == [], "root restored through the project's symlink into a host directory"
    assert res.returncode == 0 and "Traceback" not in res.stderr, res
    assert (live / "notes" / "a.txt").read_text() == "from the backup\n"
    h.cli("project", "stop", pid)


def _with_btrfs_tool(t):
    """The host's btrfs(8) and its libraries inside the image (an attacker brings its own tools)."""
    import shutil as sh

    libs = subprocess.run(["ldd", "/usr/bin/btrfs"], capture_output=True, text=True, check=True).stdout
    for path in [w for w in libs.split() if w.startswith("/")] + ["/usr/bin/btrfs"]:
        dest = t / path.lstrip("/")
        dest.parent.mkdir(parents=True, exist_ok=True)
        sh.copy2(os.path.realpath(path), dest)
    return t


def test_a_project_cannot_make_nested_subvolumes_its_quota_does_not_count(make_host, workdir,
                                                                          podman_store):  # noqa: F811
    """A nested subvolume is a qgroup of its own: data in it escapes the project's limit (and its
    snapshots, and btrfs send). Unprivileged users may create one by ioctl, so containers must not."""
    h = make_host("a", **config(podman_store))
    t = _with_btrfs_tool(tree(workdir))
    pid = str(uuid.uuid4())
    h.cli("project", "create", pid, "--quota", "64M")
    h.json("project", "start", pid, "--image", f"dir:{t}")
    home = h.project_path(pid)
    wait_for(home / "started")
    res = podman_store.run("exec", f"project-{pid}", "/usr/bin/btrfs", "subvolume", "create", "/home/user/escape",
                           check=False)
    made = (home / "escape").exists()
    try:
        assert res.returncode != 0 and not made, res
        res = podman_store.run("exec", f"project-{pid}", "/usr/bin/btrfs", "subvolume", "snapshot",
                               "/home/user", "/home/user/copy", check=False)
        assert res.returncode != 0 and not (home / "copy").exists(), res
        # other ioctls still work (btrfs's own space info, no capability needed)
        res = podman_store.run("exec", f"project-{pid}", "/usr/bin/btrfs", "filesystem", "df", "/home/user",
                               check=False)
        assert res.returncode == 0 and "Data" in res.stdout, res
    finally:
        h.cli("project", "stop", pid)
        for sub in ("escape", "copy"):
            if (home / sub).exists():
                subprocess.run(["btrfs", "subvolume", "delete", str(home / sub)], capture_output=True)


def _nft_set(family: str, name: str) -> set[str]:
    out = subprocess.run(["nft", "list", "set", family, "cocalc_ctl", name], capture_output=True, text=True,
                         check=True).stdout
    body = out.split("elements = {", 1)[1].split("}", 1)[0] if "elements = {" in out else ""
    return {w.strip() for w in body.replace("\n", " ").split(",") if w.strip()}


def test_a_crashed_project_stays_guarded_and_stop_or_restart_leaves_nothing_open(make_host, workdir,
                                                                                 podman_store):  # noqa: F811
    h = make_host("a", **config(podman_store))
    t = tree(workdir)
    pid = str(uuid.uuid4())
    h.cli("project", "create", pid)
    first = h.json("project", "start", pid, "--image", f"dir:{t}")
    wait_for(h.project_path(pid) / "started")
    mac = json.loads(podman_store.run("container", "inspect", f"project-{pid}").stdout)[0]["NetworkSettings"][
        "MacAddress"]
    ports = {str(first["http_port"]), str(first["ssh_port"])}
    assert ports <= _nft_set("inet", "project_ports") and mac in _nft_set("bridge", "project_macs")

    podman_store.run("kill", f"project-{pid}")  # a crash: no `project stop`
    assert ports <= _nft_set("inet", "project_ports"), "a crashed project's ports stay guarded"
    assert mac in _nft_set("bridge", "project_macs")
    (h.project_path(pid) / "started").unlink()
    again = h.json("project", "start", pid, "--image", f"dir:{t}")
    wait_for(h.project_path(pid) / "started")
    new = {str(again["http_port"]), str(again["ssh_port"])}
    guarded = _nft_set("inet", "project_ports")
    assert new <= guarded and not (ports - new) & guarded, "the earlier run's ports left the guard"
    assert connect_as_nobody(again["http_port"]).returncode != 0
    # the ruleset is reloaded at each start: its rules are replaced, not added again
    ruleset = nft.ruleset([0])
    for family, name in (("inet", "output"), ("inet", "forward"), ("bridge", "output"), ("bridge", "forward")):
        chain = subprocess.run(["nft", "list", "chain", family, "cocalc_ctl", name], capture_output=True,
                               text=True, check=True).stdout
        rules = [ln for ln in chain.splitlines()
                 if ln.strip() and not ln.strip().startswith(("table ", "chain ", "type ", "}"))]
        assert len(rules) == ruleset.count(f"add rule {family} cocalc_ctl {name} ") > 0, chain
    h.cli("project", "stop", pid)
    assert not new & _nft_set("inet", "project_ports") and mac not in _nft_set("bridge", "project_macs")

def _foreign_ids(path, base):
    """Entries below `path` owned outside the range, except .snapshots, overlayfs's own work/work and the
    /etc/mtab symlink podman adds to a root without one (both made by host root, neither the project's)."""
    return {k: v for k, v in _ids_below(path).items()
            if not k.endswith(("/work/work", "/upper/etc/mtab")) and not all(base <= i < base + SIZE for i in v)}


def _ids_below(path):
    out = {}
    for root, dirs, files in os.walk(path):
        if root == str(path):
            dirs[:] = [d for d in dirs if d != ".snapshots"]
        for name in dirs + files:
            st = os.lstat(os.path.join(root, name))
            out[os.path.relpath(os.path.join(root, name), path)] = (st.st_uid, st.st_gid)
    return out


def test_ownership_moves_into_the_new_range_after_restore_on_another_host(make_host, workdir,
                                                                         podman_store):  # noqa: F811
    t = tree(workdir)
    a = backup_host(make_host, workdir, "a", **config(podman_store))
    b = backup_host(make_host, workdir, "b", init_repo=False,
                    **config(podman_store, **{"isolation.uid_base": (1 << 20) + 7 * SIZE}))
    pid = str(uuid.uuid4())
    a.cli("project", "create", pid)
    live = a.project_path(pid)
    # a tree from before isolation: host ids, a 0600 file of container user 1000, a foreign id, and a
    # symlink to a root-owned file outside the project that the shift must not follow
    canary = workdir / "canary"
    canary.write_text("outside\n")
    (live / "doc.txt").write_text("private notes\n")
    os.chown(live / "doc.txt", 1000, 1000)
    os.chmod(live / "doc.txt", 0o600)
    (live / "sub").mkdir()
    (live / "sub" / "odd").write_text("x")
    os.chown(live / "sub" / "odd", 4_000_123, 4_000_123)
    os.symlink(canary, live / "escape")

    a.json("project", "start", pid, "--image", f"dir:{t}")
    wait_for(live / "started")
    base_a = idmap_row(a, pid)["base"]
    assert (live / "readback").read_text() == "private notes\n"
    assert (live / "doc.txt").stat().st_uid == base_a + 1000
    assert (live / "sub" / "odd").stat().st_uid == base_a + 4_000_123 % SIZE
    assert canary.stat().st_uid == 0 and os.lstat(live / "escape").st_uid == base_a
    assert _foreign_ids(live, base_a) == {}
    a.cli("project", "stop", pid)
    a.cli("--json", "backup", "create", pid)

    b.cli("--json", "restore", pid, "latest")
    moved = b.project_path(pid)
    for f in ("started", "readback", "readback.err"):
        (moved / f).unlink()
    b.json("project", "start", pid, "--image", f"dir:{t}")
    wait_for(moved / "started")
    base_b = idmap_row(b, pid)["base"]
    assert base_b != base_a and idmap_row(b, pid)["owner_base"] == base_b
    assert (moved / "readback").read_text() == "private notes\n", (moved / "readback.err").read_text()
    assert (moved / "doc.txt").stat().st_uid == base_b + 1000
    assert _foreign_ids(moved, base_b) == {}
    assert canary.stat().st_uid == 0
    b.cli("project", "stop", pid)
