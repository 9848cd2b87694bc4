#!/usr/bin/env python3
"""The end-to-end demo of cocalc-ctl on one machine (run as root; `make demo` runs it).

Nothing needs to be prepared beyond the Debian packages scripts/setup.sh installs. It starts a
throwaway PostgreSQL hub, makes two loopback btrfs hosts A and B (each with its own config, data dir
and move-receiver sshd on 127.0.0.2 / 127.0.0.3, configured by `cocalc-ctl sshpiper config --sshd`),
registers and trusts their keys through the hub, creates a project from a tiny local busybox image,
writes files, snapshots, runs it and shows it serving HTTP, backs it up and restores it, moves it
from A to B over the real sshd, serves a request into it through the HTTP proxy, and prints a summary
table. Every `cocalc-ctl` command is printed with its output.

Everything it makes lives in one directory under /var/tmp (plus a root-owned directory under /run for
the sshd's forced command and static per-login key files, and the receiver users' lines in /etc/passwd) and is removed at
the end, also on failure or Ctrl-C. With `--keep` it leaves everything running and prints how to
explore it and how to tear it down later (`scripts/demo.py --teardown DIR`).

    sudo python3 scripts/demo.py [--keep]
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import hashlib
import json
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
_VENV = REPO / ".venv"
NEEDED = ["btrfs", "mkfs.btrfs", "losetup", "podman", "runc", "restic", "rsync", "busybox", "ssh", "ssh-keygen",
          "sshd", "runuser"]


def _missing() -> list[str]:
    path = os.environ.get("PATH", "") + ":/usr/sbin:/sbin"
    have = [n for n in NEEDED if shutil.which(n, path=path)]
    pg = any(Path(d, "initdb").exists() for d in ("/usr/lib/postgresql/15/bin", "/usr/lib/postgresql/16/bin",
                                                  "/usr/local/bin")) or shutil.which("initdb")
    return [n for n in NEEDED if n not in have] + ([] if pg else ["initdb"])


if os.geteuid() == 0 and "--teardown" not in sys.argv and (_missing() or not (_VENV / "bin" / "python").exists()):
    # a machine with nothing prepared: install the Debian packages and the venv first
    print(f"demo: missing {', '.join(_missing()) or 'the venv'}: running scripts/setup.sh", flush=True)
    subprocess.run([str(REPO / "scripts" / "setup.sh")], check=True)
if (_VENV / "bin" / "python").exists() and Path(sys.prefix).resolve() != _VENV.resolve():
    # the checkout's venv has cocalc-ctl's dependencies (psycopg, yaml): run the demo with it
    os.execv(str(_VENV / "bin" / "python"), [str(_VENV / "bin" / "python"), str(Path(__file__).resolve()),
                                              *sys.argv[1:]])
sys.path.insert(0, str(REPO))

from tests.support.hosts import cleanup_mounts_under  # noqa: E402
from tests.support.postgres import Postgres, pg_bin  # noqa: E402

PY = sys.executable
CLI = [PY, "-m", "cocalc_ctl"]
STATE = "demo-state.json"
PASSWD = Path("/etc/passwd")
BUSYBOX_APPLETS = ["sh", "ls", "cat", "echo", "mkdir", "ln", "httpd", "sleep", "id", "sha256sum", "hostname"]
TTY = sys.stdout.isatty()


def bold(text: str) -> str:
    return f"\033[1m{text}\033[0m" if TTY else text


class DemoFailed(Exception):
    pass


def free_port(addr: str) -> int:
    with socket.socket() as s:
        s.bind((addr, 0))
        return s.getsockname()[1]


def wait_port(addr: str, port: int, proc: subprocess.Popen | None = None, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise DemoFailed(f"server for {addr}:{port} exited with {proc.returncode}")
        try:
            socket.create_connection((addr, port), timeout=0.5).close()
            return
        except OSError:
            time.sleep(0.05)
    raise DemoFailed(f"nothing listening on {addr}:{port}")


def http_get(url: str, timeout: float = 10, headers: dict | None = None) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers=headers or {}), timeout=timeout) as r:
            return r.status, r.read().decode(errors="replace")
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode(errors="replace")


def tree_sums(root: Path) -> dict[str, str]:
    """sha256 of every regular file of a project, without its snapshots and overlay layer."""
    out = {}
    for dirpath, dirs, files in os.walk(root):
        rel_dir = Path(dirpath).relative_to(root)
        if rel_dir == Path("."):
            dirs[:] = [d for d in dirs if d not in (".snapshots", ".local")]
        for name in files:
            p = Path(dirpath) / name
            if p.is_file() and not p.is_symlink():
                out[str(p.relative_to(root))] = hashlib.sha256(p.read_bytes()).hexdigest()
    return dict(sorted(out.items()))


# -- /etc/passwd lines of the receiver users (under the lock useradd/vipw take) -------------------

@contextlib.contextmanager
def _pwd_locked():
    fd = os.open("/etc/.pwd.lock", os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        fcntl.lockf(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def _rewrite_passwd(transform) -> None:
    with _pwd_locked():
        text = PASSWD.read_text()
        st = PASSWD.stat()
        tmp = PASSWD.with_name(f".passwd.cocalc-demo.{os.getpid()}")
        tmp.write_text(transform(text))
        os.chmod(tmp, st.st_mode & 0o777)
        os.chown(tmp, st.st_uid, st.st_gid)
        os.replace(tmp, PASSWD)


def add_passwd_lines(lines: list[str]) -> None:
    def add(text: str) -> str:
        have = set(text.splitlines())
        new = [ln for ln in lines if ln not in have]
        return text + ("" if text.endswith("\n") else "\n") + "".join(ln + "\n" for ln in new)
    _rewrite_passwd(add)


def remove_passwd_lines(lines: list[str]) -> None:
    drop = set(lines)
    _rewrite_passwd(lambda t: "".join(x for x in t.splitlines(keepends=True) if x.rstrip("\n") not in drop))


# -- the world ------------------------------------------------------------------------------------

@dataclass
class Node:
    """A host (or the hub admin's machine): a config file and a label for the printed commands."""

    label: str
    base: Path
    host_id: str | None = None
    addr: str | None = None
    receiver_port: int = 0
    proxy_port: int = 0
    config: dict = field(default_factory=dict)

    @property
    def config_path(self) -> Path:
        return self.base / "config.yaml"

    @property
    def pool(self) -> Path:
        return self.base / "pool"

    @property
    def data(self) -> Path:
        return self.base / "data"

    def write_config(self) -> None:
        import yaml

        nested: dict = {}
        for k, v in self.config.items():
            head, _, tail = k.partition(".")
            if tail:
                nested.setdefault(head, {})[tail] = v
            else:
                nested[k] = v
        self.base.mkdir(parents=True, exist_ok=True)
        self.config_path.write_text(yaml.safe_dump(nested, sort_keys=False))


class Demo:
    def __init__(self, keep: bool):
        self.keep = keep
        self.base = Path(tempfile.mkdtemp(prefix="cocalc-demo-", dir="/var/tmp"))
        os.chmod(self.base, 0o711)
        self.rundir = Path("/run") / f"cocalc-demo-{uuid.uuid4().hex[:10]}"
        self.steps: list[tuple[str, float, str]] = []
        self.state: dict = {"base": str(self.base), "rundir": str(self.rundir), "passwd_lines": [], "pids": {},
                            "pg_dir": None, "podman": [], "configs": []}
        self.procs: dict[str, subprocess.Popen] = {}
        self.pg: Postgres | None = None
        self.hub: Node | None = None
        self.hosts: dict[str, Node] = {}
        self.project = str(uuid.uuid4())
        self.save_state()

    # -- bookkeeping (also read by --teardown) --
    def save_state(self) -> None:
        (self.base / STATE).write_text(json.dumps(self.state, indent=1))

    @contextlib.contextmanager
    def step(self, title: str):
        print("\n" + bold(f"== {title}"), flush=True)
        t0 = time.monotonic()
        try:
            yield
        except BaseException:
            self.steps.append((title, time.monotonic() - t0, "FAILED"))
            raise
        self.steps.append((title, time.monotonic() - t0, "ok"))

    def skip(self, title: str, why: str) -> None:
        print("\n" + bold(f"== {title}") + f"\n(skipped: {why})", flush=True)
        self.steps.append((title, 0.0, "skipped"))

    def ctl(self, node: Node, *args: str, check: bool = True, quiet: bool = False) -> subprocess.CompletedProcess:
        print(f"[{node.label}] $ cocalc-ctl {' '.join(shlex.quote(a) for a in args)}", flush=True)
        env = {k: v for k, v in os.environ.items() if not k.startswith("COCALC_CTL_")}
        env["PYTHONPATH"] = str(REPO)
        r = subprocess.run([*CLI, "--config", str(node.config_path), *args], capture_output=True, text=True,
                           env=env, cwd=str(REPO), timeout=300)
        out = (r.stdout + r.stderr).rstrip()
        if out and not quiet:
            print(out, flush=True)
        if check and r.returncode != 0:
            if quiet:
                print(out)
            raise DemoFailed(f"cocalc-ctl {' '.join(args)} exited {r.returncode}")
        return r

    def ctl_json(self, node: Node, *args: str):
        r = self.ctl(node, "--json", *args, quiet=True)
        return json.loads(r.stdout)

    def sh(self, text: str) -> None:
        """Print a non-cocalc-ctl action the demo takes (so a reader can repeat it)."""
        print(f"$ {text}", flush=True)

    def check(self, cond: bool, what: str) -> None:
        if not cond:
            raise DemoFailed(what)
        print(f"ok: {what}", flush=True)

    def spawn(self, name: str, argv: list[str], log: Path, env: dict | None = None) -> subprocess.Popen:
        p = subprocess.Popen(argv, stdout=open(log, "ab"), stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                             env=env, cwd=str(REPO))
        self.procs[name] = p
        self.state["pids"][name] = p.pid
        self.save_state()
        return p

    def has_command(self, *words: str) -> bool:
        r = subprocess.run([*CLI, *words, "--help"], capture_output=True, text=True, cwd=str(REPO),
                           env={**os.environ, "PYTHONPATH": str(REPO)})
        return r.returncode == 0

    # -- the steps --
    def run(self) -> None:
        self.hub_and_hosts()
        self.receivers()
        self.image_and_project()
        self.start_stop("A")
        self.backup_restore()
        self.move()
        self.proxy()
        self.doctor()

    def hub_and_hosts(self) -> None:
        with self.step("start a throwaway PostgreSQL and migrate the hub schema"):
            self.pg = Postgres().start()
            self.state["pg_dir"] = str(self.pg.dir)
            self.save_state()
            self.pg.wait_ready()
            self.sh(f"initdb + pg_ctl start   # unix socket in {self.pg.dir}")
            dsn = self.pg.dsn()
            self.hub = Node("hub", self.base / "hub",
                            config={"hub_dsn": dsn, "data_dir": str(self.base / "hub" / "data"),
                                    "btrfs_root": str(self.base / "hub" / "none"),
                                    "move.transport": "local", "move.host_configs": str(self.base / "hub" / "hosts")})
            self.hub.write_config()
            (self.base / "hub" / "hosts").mkdir()
            self.state["configs"].append(str(self.hub.config_path))
            self.ctl(self.hub, "hub", "migrate")

        self.rundir.mkdir(mode=0o755)
        os.chmod(self.rundir, 0o755)
        # sshd runs forced commands and reads key files only from a root-owned directory chain (not /var/tmp)
        wrapper = self.rundir / "cocalc-ctl"
        wrapper.write_text(f"#!/bin/sh\nPYTHONPATH={shlex.quote(str(REPO))} "
                           f"exec {shlex.quote(PY)} -m cocalc_ctl \"$@\"\n")
        os.chmod(wrapper, 0o755)
        secrets = self.base / "secrets"
        secrets.mkdir(mode=0o700)
        pw = secrets / "restic-password"
        pw.write_text(uuid.uuid4().hex + "\n")
        os.chmod(pw, 0o600)

        with self.step("create two loopback btrfs hosts A (127.0.0.2) and B (127.0.0.3)"):
            for label, addr in (("A", "127.0.0.2"), ("B", "127.0.0.3")):
                base = self.base / label.lower()
                node = Node(label, base, host_id=str(uuid.uuid4()), addr=addr, receiver_port=free_port(addr))
                podman = {"root": base / "podman" / "root", "runroot": base / "podman" / "run",
                          "tmpdir": base / "podman" / "tmp"}
                node.config = {
                    "host_id": node.host_id, "host_name": f"host-{label.lower()}",
                    "btrfs_root": str(node.pool), "data_dir": str(node.data), "hub_dsn": dsn,
                    "ssh_server": f"{addr}:{node.receiver_port}",
                    "sshpiper.receiver_listen": f"{addr}:{node.receiver_port}",
                    "sshpiper.cocalc_ctl": str(wrapper),
                    # sshd reads the static per-login key files only from a root-owned chain (not /var/tmp)
                    "sshpiper.receiver_keys_dir": str(self.rundir / f"receiver-keys-{label.lower()}"),
                    "backup.repo": str(self.base / "restic-repo"), "backup.password_file": str(pw),
                    **{f"podman.{k}": str(v) for k, v in podman.items()},
                    "podman.runtime": "runc", "podman.ulimits": "nofile=1024:1024,nproc=1024:1024",
                    "podman.memory": "256M", "podman.pids_limit": 128, "podman.stop_timeout": 2,
                    # the demo's image is a local directory: the one place local image sources may lie
                    "rootfs.local_roots": str(self.base / "image"),
                    # the project's web server: busybox httpd, serving /<project-id>/ like a real project server
                    "podman.command": "/bin/sh -c 'mkdir -p /tmp/www/$COCALC_PROJECT_ID && "
                                      "ln -sfn /home/user /tmp/www/$COCALC_PROJECT_ID/files && "
                                      f"echo \"hello from project $COCALC_PROJECT_ID on host-{label.lower()}\" "
                                      "> /tmp/www/$COCALC_PROJECT_ID/index.html && "
                                      "exec httpd -f -p 8080 -h /tmp/www'",
                }
                node.write_config()
                self.state["configs"].append(str(node.config_path))
                self.state["podman"].append([str(podman["root"]), str(podman["runroot"]), str(podman["tmpdir"])])
                self.save_state()
                (self.base / "hub" / "hosts" / f"{node.host_id}.yaml").symlink_to(node.config_path)
                self.hosts[label] = node
                self.ctl(node, "host", "init", "--loopback", "1G")

    def receivers(self) -> None:
        a, b = self.hosts["A"], self.hosts["B"]
        with self.step("keys: hub key, ensure, register, trust (hub admin), sync (pins peers and the hub key)"):
            # the move worker's own key: signs every move ticket, published for the hosts' `keys sync`
            self.ctl(self.hub, "hub", "keys", "ensure")
            for n in (a, b):
                self.ctl(n, "keys", "ensure")
            for n in (a, b):
                self.ctl(n, "keys", "register")
            for n in (a, b):
                self.ctl(self.hub, "keys", "trust", n.host_id)
            for n in (a, b):
                self.ctl(n, "keys", "sync")
            for n in (a, b):
                self.ctl(n, "keys", "known-hosts")
                self.ctl(n, "keys", "peers")

        with self.step("receiver sshd on each host, configured by `sshpiper config --sshd`"):
            lines: list[str] = []
            for n in (a, b):
                r = self.ctl(n, "sshpiper", "receiver-users")
                lines += [ln for ln in r.stdout.splitlines() if ln.strip() and ln not in lines]
            # both hosts share this machine's /etc/passwd: add the union (`--out /etc/passwd` on a real
            # host rewrites all of its own lines) and remove exactly these lines at the end. Not the
            # `cocalc-hub` line: one name for every run on this machine, and the demo's worker reaches
            # the hosts through the local transport, not that login
            lines = [ln for ln in lines if not ln.startswith("cocalc-hub:")]
            self.sh(f"append {len(lines)} receiver user line(s) to /etc/passwd (removed at the end)")
            self.state["passwd_lines"] = lines
            self.save_state()
            add_passwd_lines(lines)
            Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)
            for n in (a, b):
                r = self.ctl(n, "sshpiper", "config", "--sshd", quiet=True)
                conf = n.data / "ssh" / "receiver_sshd_config"
                conf.parent.mkdir(parents=True, exist_ok=True)
                conf.write_text(r.stdout)
                print(f"(wrote {conf}: {len(r.stdout.splitlines())} lines, "
                      f"AuthorizedKeysFile {self.rundir}/receiver-keys-{n.label.lower()}/%u, written by `keys sync`)")
                t = subprocess.run(["/usr/sbin/sshd", "-t", "-f", str(conf)], capture_output=True, text=True)
                if t.returncode != 0:
                    raise DemoFailed(f"sshd -t {conf}: {t.stderr.strip()}")
                self.sh(f"/usr/sbin/sshd -D -f {conf} -E {n.base}/receiver-sshd.log &")
                p = self.spawn(f"sshd-{n.label}", ["/usr/sbin/sshd", "-D", "-f", str(conf), "-E",
                                                   str(n.base / "receiver-sshd.log")], n.base / "receiver-sshd.out")
                wait_port(n.addr, n.receiver_port, p)
                print(f"host {n.label}: receiver sshd listening on {n.addr}:{n.receiver_port}")
            self.ctl(b, "sshpiper", "auth", f"btrfs-{a.host_id}")

    def image_and_project(self) -> None:
        a = self.hosts["A"]
        pid = self.project
        tree = self.base / "image"
        with self.step("project on A from a tiny local busybox image, with files and snapshots"):
            for d in ("bin", "etc", "tmp", "home/user", "root"):
                (tree / d).mkdir(parents=True, exist_ok=True)
            os.chmod(tree / "tmp", 0o1777)
            shutil.copy2(shutil.which("busybox") or "/bin/busybox", tree / "bin" / "busybox")
            for applet in BUSYBOX_APPLETS:
                os.link(tree / "bin" / "busybox", tree / "bin" / applet)
            (tree / "etc" / "passwd").write_text("root:x:0:0:root:/root:/bin/sh\n")
            (tree / "etc" / "image").write_text("cocalc-ctl demo busybox image\n")
            self.sh(f"mkdir {tree}; cp /bin/busybox {tree}/bin/   # + applet links")
            self.image = f"dir:{tree}"
            self.ctl(a, "rootfs", "pull", self.image)
            self.ctl(a, "project", "create", pid, "--quota", "200M")
            # the hub knows the project: where it lives and which image it runs
            self.ctl(self.hub, "hub", "project", "add", pid, "--host", a.config["host_name"], "--image", self.image)
            self.ctl(a, "rootfs", "resolve", pid)
            root = a.pool / f"project-{pid}"
            self.sh(f"write notes/hello.txt, 20 notebooks and 8 MiB of data.bin into {root}")
            (root / "notes").mkdir()
            (root / "notes" / "hello.txt").write_text(f"hello, this file lives in project {pid}\n")
            (root / "notebooks").mkdir()
            for i in range(1, 21):
                (root / "notebooks" / f"nb{i}.ipynb").write_text(json.dumps({"cells": [f"print({i})"]}))
            (root / "data.bin").write_bytes(os.urandom(8 << 20))
            self.ctl(a, "snapshot", "create", pid, "first")
            (root / "notes" / "todo.txt").write_text("1. back it up\n2. move it to host B\n")
            self.ctl(a, "snapshot", "create", pid, "second")
            self.ctl(a, "snapshot", "list", pid)
            self.sums = tree_sums(root)

    def start_stop(self, label: str) -> None:
        n = self.hosts[label]
        pid = self.project
        with self.step(f"project start on {label}, serve HTTP from inside it"):
            self.ctl(n, "project", "start", pid)
            st = self.ctl_json(n, "project", "status", pid)
            port = st["http_port"]
            url = f"http://127.0.0.1:{port}/{pid}/files/notes/hello.txt"
            self.sh(f"curl {url}")
            code, body = self._get_retry(url)
            print(body.rstrip())
            self.check(code == 200 and pid in body, f"the project's own web server answers on 127.0.0.1:{port}")
            self.ctl(n, "project", "status", pid)
        if label == "A":
            self.project_ssh(n)
        with self.step(f"project stop on {label}"):
            self.ctl(n, "project", "stop", pid)

    def project_ssh(self, n: Node) -> None:
        """A user's key on the project, the auth hook's answer, then real ssh into the running project
        the way sshpiperd goes on from there (its upstream key, the port the hook named)."""
        pid = self.project
        with self.step(f"ssh into the project on {n.label}: a command, rsync of a directory, -L to its web server"):
            work = self.base / "ssh-client"
            work.mkdir(mode=0o700, exist_ok=True)
            user_key = work / "id_user"
            subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "demo-user", "-f", str(user_key)],
                           check=True)
            root = n.pool / f"project-{pid}"
            self.sh(f"cat {user_key}.pub >> {root}/.ssh/authorized_keys   # a user's key for the project")
            owner = root.stat().st_uid
            (root / ".ssh").mkdir(mode=0o700, exist_ok=True)
            (root / ".ssh" / "authorized_keys").write_text(Path(f"{user_key}.pub").read_text())
            for p in (root / ".ssh", root / ".ssh" / "authorized_keys"):
                os.chown(p, owner, owner)
            self.ctl(n, "sshpiper", "auth", f"project-{pid}")
            d = self.ctl_json(n, "sshpiper", "auth", f"project-{pid}")
            self.check(d["allowed"] and d["upstream_host"].startswith("127.0.0.1:"),
                       f"sshpiper sends project-{pid} to {d['upstream_user']}@{d['upstream_host']}")
            port = int(d["upstream_host"].rsplit(":", 1)[1])
            st = self.ctl_json(n, "project", "status", pid)
            known = work / "known_hosts"
            known.write_text(f"[127.0.0.1]:{port} {st['ssh_host_key']}\n")
            key = n.data / "secrets" / "sshpiper" / "upstream_key"
            opts = ["-i", str(key), "-o", "IdentitiesOnly=yes", "-o", "IdentityAgent=none", "-o", "BatchMode=yes",
                    "-o", "StrictHostKeyChecking=yes", "-o", f"UserKnownHostsFile={known}", "-p", str(port)]
            login = f"{d['upstream_user']}@127.0.0.1"
            shown = f"ssh -i {key} -o StrictHostKeyChecking=yes -o UserKnownHostsFile={known} -p {port} {login}"
            command = "id; cat /etc/image; ls notes"
            self.sh(f"{shown} '{command}'")
            r = subprocess.run(["ssh", *opts, login, command], capture_output=True, text=True, timeout=120)
            print((r.stdout + r.stderr).rstrip())
            self.check(r.returncode == 0 and "hello.txt" in r.stdout, "a command ran inside the project")
            src, back = self.base / "notes-here", self.base / "notes-back"
            shutil.copytree(root / "notes", src)
            rsh = " ".join(["ssh", *opts])
            self.sh(f"rsync -a -e '{rsh}' {src}/ {login}:/tmp/notes-copy/   # and back into {back}")
            for a_, b_ in ((f"{src}/", f"{login}:/tmp/notes-copy/"), (f"{login}:/tmp/notes-copy/", f"{back}/")):
                subprocess.run(["rsync", "-a", "-e", rsh, a_, b_], check=True, capture_output=True, timeout=120)
            self.check(tree_sums(back) == tree_sums(src), "rsync there and back: same checksums")
            local = free_port("127.0.0.1")
            inner = n.config.get("podman.http_port", 8080) if isinstance(n.config, dict) else 8080
            self.sh(f"{shown} -N -L {local}:127.0.0.1:{inner} &   # the project's own web server, from inside")
            fwd = subprocess.Popen(["ssh", *opts, "-N", "-o", "ExitOnForwardFailure=yes",
                                    "-L", f"127.0.0.1:{local}:127.0.0.1:{inner}", login],
                                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            try:
                url = f"http://127.0.0.1:{local}/{pid}/files/notes/hello.txt"
                self.sh(f"curl {url}")
                code, body = self._get_retry(url)
                print(body.rstrip())
                self.check(code == 200 and pid in body, "-L reached the web server inside the project")
            finally:
                fwd.terminate()
                fwd.wait(10)
            self.ctl(n, "project", "ssh", pid, "--", "hostname; echo $HOME; busybox rm -rf .ssh")
            self.check(tree_sums(root) == self.sums, "the project's files are as they were (the user's key removed)")

    def _get_retry(self, url: str, want: int = 200, tries: int = 50, headers: dict | None = None) -> tuple[int, str]:
        code, body = 0, ""
        for _ in range(tries):
            try:
                code, body = http_get(url, headers=headers)
                if code == want:
                    break
            except OSError as e:
                code, body = 0, str(e)
            time.sleep(0.1)
        return code, body

    def _login_link(self, url: str) -> tuple[int, dict]:
        """Open a login link without following its redirect: (status, lowercase headers)."""
        import http.client
        from urllib.parse import urlsplit

        parts = urlsplit(url)
        self.sh(f"curl -si '{url}'")
        conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=10)
        try:
            conn.request("GET", f"{parts.path}?{parts.query}")
            resp = conn.getresponse()
            resp.read()
            headers = {k.lower(): v for k, v in resp.getheaders()}
        finally:
            conn.close()
        print(f"{resp.status} location: {headers.get('location')}\nset-cookie: {headers.get('set-cookie')}")
        return resp.status, headers

    def backup_restore(self) -> None:
        a = self.hosts["A"]
        pid = self.project
        title = "backup to a restic repository, break a file, restore"
        if not self.has_command("backup"):
            self.skip(title, "this build has no `backup` command yet")
            return
        with self.step(title):
            root = a.pool / f"project-{pid}"
            self.ctl(a, "backup", "init")
            self.ctl(a, "backup", "create", pid)
            self.ctl(a, "backup", "list", pid)
            self.sh(f"rm {root}/notes/hello.txt; echo oops > {root}/notebooks/nb1.ipynb   # an accident")
            (root / "notes" / "hello.txt").unlink()
            (root / "notebooks" / "nb1.ipynb").write_text("oops\n")
            self.ctl(a, "restore", pid, "latest")
            self.check(tree_sums(root) == self.sums, "every file is back with its checksum")
            self.ctl(a, "backup", "status")

    def move(self) -> None:
        a, b = self.hosts["A"], self.hosts["B"]
        pid = self.project
        with self.step("move A -> B: btrfs send | ssh (keys flow, receiver sshd) | btrfs receive"):
            print(f"# the worker runs, through the local transport: on A `move send {pid} --to "
                  f"btrfs-{a.host_id}@{b.addr}:{b.receiver_port} --mode pipe` (ssh with A's host-to-host key, "
                  f"B's pinned host key), on B `move finalize`, on A `move cleanup`")
            self.ctl(self.hub, "move", "start", pid, "--to", b.host_id, "--mode", "pipe")
            self.ctl(self.hub, "move", "status", pid)
            self.ctl(self.hub, "move", "worker", "--once")
            self.ctl(self.hub, "move", "status", pid)
            self.ctl(self.hub, "hub", "project", "show", pid)
            placed = self.ctl_json(self.hub, "hub", "project", "show", pid)
            self.check(placed["host_id"] == b.host_id, "the hub records the project on host B")
            rootb = b.pool / f"project-{pid}"
            self.check(tree_sums(rootb) == self.sums, f"all {len(self.sums)} files arrived on B with their checksums")
            snaps = {s["name"] for s in self.ctl_json(b, "snapshot", "list", pid)}
            self.ctl(b, "snapshot", "list", pid)
            self.check({"first", "second"} <= snaps, "the snapshots came along")
            gone = self.ctl(a, "project", "show", pid, check=False)
            self.check(gone.returncode == 3 and not (a.pool / f"project-{pid}").exists(),
                       "host A cleaned up its copy")
            if self.has_command("backup"):
                self.ctl(b, "backup", "list", pid)  # one repository: the backups follow the project
            log = (b.base / "receiver-sshd.log").read_text(errors="replace")
            print("-- B's receiver sshd log:")
            print("\n".join(ln for ln in log.splitlines() if "Accepted publickey" in ln))
            fp = subprocess.run(["ssh-keygen", "-lf", str(a.data / "secrets" / "host-to-host" / "id_ed25519.pub")],
                                capture_output=True, text=True).stdout.split()[1]
            self.check(f"Accepted publickey for btrfs-{a.host_id} " in log and fp in log,
                       f"B's receiver sshd accepted A's host-to-host key ({fp}) as btrfs-{a.host_id[:8]}…")

    def proxy(self) -> None:
        b = self.hosts["B"]
        pid = self.project
        title = "proxy: an HTTP request into the project on B (host mode, then hub mode)"
        if not self.has_command("proxy", "serve"):
            self.skip(title, "this build has no `proxy` command yet")
            self.start_stop("B")
            return
        with self.step(title):
            self.ctl(b, "project", "start", pid)
            env = {k: v for k, v in os.environ.items() if not k.startswith("COCALC_CTL_")}
            env["PYTHONPATH"] = str(REPO)
            b.proxy_port = free_port("127.0.0.1")
            args = ["proxy", "serve", "--mode", "host", "--listen", f"127.0.0.1:{b.proxy_port}"]
            print(f"[{b.label}] $ cocalc-ctl {' '.join(args)} &", flush=True)
            p = self.spawn("proxy-host-B", [*CLI, "--config", str(b.config_path), *args], b.base / "proxy.log",
                           env=env)
            wait_port("127.0.0.1", b.proxy_port, p)
            # a host proxy answers only its hub (the hub credential, keyed by the secret `keys trust` made
            # and `keys sync` brought to B): a request straight to it is refused, /healthz is open
            url = f"http://127.0.0.1:{b.proxy_port}/{pid}/files/notes/hello.txt"
            self.sh(f"curl {url}")
            code, body = self._get_retry(url, want=401)
            print(f"{code} {body.rstrip()}")
            self.check(code == 401, "host-mode proxy: a request without the hub's credential gets 401")
            self.sh(f"curl http://127.0.0.1:{b.proxy_port}/healthz")
            code, body = http_get(f"http://127.0.0.1:{b.proxy_port}/healthz")
            print(body.rstrip())
            self.check(code == 200, "host-mode proxy: /healthz stays open")

            internal = f"http://127.0.0.1:{b.proxy_port}"
            # B tells the hub where its proxy is: the hub's proxy forwards there
            self.ctl(b, "keys", "register", "--internal-url", internal)
            hub_port = free_port("127.0.0.1")
            args = ["proxy", "serve", "--mode", "hub", "--listen", f"127.0.0.1:{hub_port}"]
            print(f"[hub] $ cocalc-ctl {' '.join(args)} &", flush=True)
            p = self.spawn("proxy-hub", [*CLI, "--config", str(self.hub.config_path), *args],
                           self.base / "hub" / "proxy.log", env=env)
            wait_port("127.0.0.1", hub_port, p)
            self.hub.proxy_port = hub_port
            url = f"http://127.0.0.1:{hub_port}/{pid}/files/notes/todo.txt"
            self.sh(f"curl {url}")
            code, _ = self._get_retry(url, want=401)
            print(f"{code} (login required)")
            self.check(code == 401, "the hub proxy refuses a request without a credential (401)")
            # access control: an account, its grant on the project, a token for it
            self.ctl(self.hub, "hub", "account", "add", "demo-user")
            self.ctl(self.hub, "hub", "project", "grant", pid, "demo-user", "--role", "collaborator")
            made = self.ctl_json(self.hub, "hub", "token", "create", "--account", "demo-user", "--project", pid,
                                 "--expires", "1d", "--name", "demo")
            self.hub_token = token = made["token"]
            print(f"token {made['token_id']} (shown once): {token}")
            auth = {"Authorization": f"Bearer {token}"}
            self.sh(f"curl -H 'Authorization: Bearer {token}' {url}")
            code, body = self._get_retry(url, headers=auth)
            print(body.rstrip())
            self.check(code == 200 and "move it to host B" in body, "hub-mode proxy -> host B's proxy -> project")
            url = f"http://127.0.0.1:{hub_port}/{pid}/files/notes/hello.txt"
            code, login = self._login_link(f"{url}?token={token}")
            self.check(code == 303 and token not in login.get("location", token)
                       and "HttpOnly" in login.get("set-cookie", ""),
                       "the login link sets a session cookie and redirects to the URL without the token")
            cookie = {"Cookie": login["set-cookie"].split(";")[0]}
            self.sh(f"curl -H 'Cookie: {cookie['Cookie']}' {url}")
            code, body = self._get_retry(url, headers=cookie)
            print(body.rstrip())
            self.check(code == 200 and pid in body, "the session cookie works; the hub signs what it forwards: "
                       "host B's proxy accepts it")
            url = f"http://127.0.0.1:{hub_port}/{pid}/"
            self.sh(f"curl -H 'Authorization: Bearer {token}' {url}")
            code, body = self._get_retry(url, headers=auth)
            print(body.rstrip())
            self.check(code == 200 and "on host-b" in body, "the answer comes from host B")
            if not self.keep:
                self.ctl(b, "project", "stop", pid)
                self.sh(f"curl -H 'Authorization: Bearer {token}' {url}")
                code, body = http_get(url, headers=auth)
                print(f"{code} {body.rstrip()}")
                self.check(code == 502, "a stopped project answers 502 at once")
            for name, log in (("host B's proxy", b.base / "proxy.log"),
                              ("the hub's proxy", self.base / "hub" / "proxy.log")):
                print(f"-- access log of {name}:")
                print(log.read_text(errors="replace").rstrip())

    def doctor(self) -> None:
        with self.step("doctor on both hosts"):
            allowed = set() if self.has_command("backup") else {"backup-repo"}  # no repository without backup
            for n in (self.hosts["A"], self.hosts["B"]):
                r = self.ctl(n, "doctor", check=False)
                bad = [name for name in re.findall(r"^FAIL\s+(\S+)", r.stdout, re.M) if name not in allowed]
                if r.returncode not in (0, 1):
                    raise DemoFailed(f"doctor on host {n.label} exited {r.returncode}")
                self.check(not bad, f"doctor on host {n.label}: no failed check" + (f" (failed: {bad})" if bad else ""))

    # -- the end --
    def summary(self, ok: bool) -> None:
        print("\n" + bold("== summary"))
        w = max(len(t) for t, _, _ in self.steps) if self.steps else 10
        print(f"{'step':<{w}}  {'seconds':>8}  result")
        for title, secs, res in self.steps:
            print(f"{title:<{w}}  {secs:8.1f}  {res}")
        total = sum(s for _, s, _ in self.steps)
        print(f"{'total':<{w}}  {total:8.1f}")
        print(f"\ndemo: {'ok' if ok else 'FAILED'}", flush=True)

    def explain_keep(self) -> None:
        a, b = self.hosts.get("A"), self.hosts.get("B")
        ctl = REPO / "bin" / "cocalc-ctl"
        print("\n" + bold("== left running (--keep)"))
        print(f"everything is under {self.base}")
        if a and b and self.hub:
            print(f"  alias ctl-a='{ctl} --config {a.config_path}'")
            print(f"  alias ctl-b='{ctl} --config {b.config_path}'")
            print(f"  alias ctl-hub='{ctl} --config {self.hub.config_path}'")
            print(f"  ctl-b project status {self.project}")
            print(f"  ctl-b snapshot list {self.project}")
            print(f"  ctl-hub move status; ctl-hub hub project list; ctl-b backup list {self.project}; ctl-a doctor")
            if b.proxy_port:
                print(f"  curl http://127.0.0.1:{b.proxy_port}/{self.project}/files/notes/hello.txt"
                      "   # host proxy on B")
            if self.hub.proxy_port and getattr(self, "hub_token", None):
                print(f"  curl -L -c /tmp/demo-cookies 'http://127.0.0.1:{self.hub.proxy_port}/{self.project}/"
                      f"?token={self.hub_token}'   # hub proxy (login link)")
            print(f"  receiver sshds: A {a.addr}:{a.receiver_port}, B {b.addr}:{b.receiver_port}")
        if self.pg:
            print(f"  psql 'host={self.pg.dir} user=postgres dbname=postgres'")
        print(f"tear it all down with: sudo {PY} {REPO / 'scripts' / 'demo.py'} --teardown {self.base}")


def teardown(base: Path) -> None:
    """Remove everything a demo run made, from its state file; every step runs even if another failed."""
    try:
        state = json.loads((base / STATE).read_text())
    except (OSError, ValueError):
        state = {"base": str(base)}
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    env.pop("COCALC_CTL_CONFIG", None)

    def quietly(argv: list[str], timeout: float = 60) -> None:
        try:
            subprocess.run(argv, capture_output=True, timeout=timeout, env=env)
        except (OSError, subprocess.SubprocessError):
            pass

    # project containers first (their conmon/runc processes), then the servers this demo started
    for root, runroot, tmpdir in state.get("podman", []):
        if Path(root).exists():
            quietly(["podman", "--root", root, "--runroot", runroot, "--tmpdir", tmpdir,
                     "rm", "--all", "--force", "--time", "0"])
    for _name, pid in sorted(state.get("pids", {}).items()):
        _kill_tree(pid, str(base))
    if state.get("passwd_lines"):
        with contextlib.suppress(OSError):
            remove_passwd_lines(state["passwd_lines"])
    if state.get("pg_dir") and Path(state["pg_dir"]).exists():
        pgdir = Path(state["pg_dir"])
        quietly(["runuser", "-u", "nobody", "--", pg_bin("pg_ctl"), "-D", str(pgdir / "data"), "-m", "immediate",
                 "-w", "stop"])
        shutil.rmtree(pgdir, ignore_errors=True)
    for root, runroot, tmpdir in state.get("podman", []):
        if Path(root).exists():
            quietly(["podman", "--root", root, "--runroot", runroot, "--tmpdir", tmpdir,
                     "image", "umount", "--all", "--force"])
    cleanup_mounts_under(base)
    if state.get("rundir"):
        shutil.rmtree(state["rundir"], ignore_errors=True)
    shutil.rmtree(base, ignore_errors=True)


def _children(pid: int) -> list[int]:
    """Direct children of `pid`, from /proc (field 4 of /proc/<pid>/stat is the parent)."""
    out = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                stat = (d / "stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                out.append(int(d.name))
    return out


def _kill_tree(pid: int, marker: str) -> None:
    """SIGTERM a server and its children (sshd forks one process per connection), then SIGKILL. Only a
    process whose command line names `marker` (the demo dir) is ours: a recorded pid may have been reused."""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return
    if marker not in cmdline:
        return
    pids = _children(pid) + [pid]
    for p in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(p, signal.SIGTERM)
    deadline = time.monotonic() + 5
    for p in pids:
        while time.monotonic() < deadline:
            try:
                os.kill(p, 0)
            except ProcessLookupError:
                break
            with contextlib.suppress(ChildProcessError):
                if os.waitpid(p, os.WNOHANG)[0] == p:
                    break
            time.sleep(0.05)
        else:
            with contextlib.suppress(ProcessLookupError):
                os.kill(p, signal.SIGKILL)


def main() -> int:
    ap = argparse.ArgumentParser(description="cocalc-ctl end-to-end demo on one machine (root)")
    ap.add_argument("--keep", action="store_true", help="leave everything running and print how to explore it")
    ap.add_argument("--teardown", metavar="DIR", help="remove what an earlier `--keep` run left in DIR")
    opts = ap.parse_args()
    if os.geteuid() != 0:
        print("demo: run as root (it mounts loopback btrfs pools and runs sshd)", file=sys.stderr)
        return 5
    if opts.teardown:
        base = Path(opts.teardown).resolve()
        if not (base / STATE).exists() or not base.name.startswith("cocalc-demo-"):
            print(f"demo: {base} is not a demo directory", file=sys.stderr)
            return 2
        teardown(base)
        print(f"removed {base}")
        return 0

    def on_signal(signum, _frame):
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, on_signal)
    demo = Demo(opts.keep)
    ok = False
    print(f"demo directory {demo.base}; project {demo.project}")
    try:
        demo.run()
        ok = True
    except DemoFailed as e:
        print(f"\ndemo: FAILED: {e}", file=sys.stderr)
    except KeyboardInterrupt:
        print("\ndemo: interrupted", file=sys.stderr)
    except Exception as e:  # an unexpected failure still gets its summary and the clean-up
        import traceback

        traceback.print_exc()
        print(f"\ndemo: FAILED: {e}", file=sys.stderr)
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        demo.summary(ok)
        if opts.keep:
            demo.explain_keep()
        else:
            t0 = time.monotonic()
            teardown(demo.base)
            print(f"cleaned up in {time.monotonic() - t0:.1f}s: containers, servers, PostgreSQL, passwd lines, "
                  f"mounts, loop devices, {demo.base}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
