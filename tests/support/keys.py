"""Support for the keys/sshpiper tests: key-only hosts, the REST plugin's request form, real sshd.

A `KeyHost` is a data dir + config (no btrfs pool: keys need none). `PluginClient` speaks HTTP
exactly like sshpiperd's REST plugin (Go net/http: `GET <url>/<url.QueryEscape(user)>`, HTTP/1.1
keep-alive). `Sshd` runs a real OpenSSH sshd in the foreground and always stops it; `passwd_users`
adds login users that `useradd` cannot make (names longer than 32 characters) by appending lines to
/etc/passwd under the shadow-utils lock, and removes exactly those lines again.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from urllib.parse import quote_plus

from tests.support.hosts import REPO, Host
from tests.support.ports import free_port, wait_listening

CLI = [sys.executable, "-m", "cocalc_ctl"]


class KeyHost(Host):
    """A Host whose pool is a plain directory (keys and the auth hook need no btrfs), with helpers to
    plant projects and peers in its host sqlite."""

    def __init__(self, base: Path, host_id: str | None = None, extra: dict | None = None):
        super().__init__(base, host_id or str(uuid.uuid4()), dict(extra or {}))

    def __post_init__(self):
        self.extra_config.setdefault("host_name", self.base.name)
        super().__post_init__()
        self.pool.mkdir(exist_ok=True)

    @property
    def extra(self) -> dict:
        return self.extra_config

    @property
    def secrets(self) -> Path:
        return self.data / "secrets"

    def db(self) -> sqlite3.Connection:
        conn = sqlite3.connect(str(self.data / "host.sqlite"), isolation_level=None, timeout=10)
        conn.row_factory = sqlite3.Row
        return conn

    @property
    def held_port(self) -> int:
        """A loopback port this host's "running projects" get: held by a listening socket of the test's
        own user for the host's life, as podman's monitor holds a running container's published port (the
        auth hook routes only to a port so held)."""
        sock = getattr(self, "_held", None)
        if sock is None:
            sock = socket.socket()
            sock.bind(("127.0.0.1", 0))
            sock.listen(1)
            self._held = sock
        return sock.getsockname()[1]

    def set_project(self, pid: str, *, state: str = "running", ssh_port: int | None | str = "held",
                    keys: str | None = None) -> None:
        if ssh_port == "held":
            ssh_port = self.held_port
        self.cli("keys", "show")  # creates/migrates the database if needed
        with contextlib.closing(self.db()) as db:
            db.execute("""INSERT INTO projects(project_id, state, ssh_port, authorized_keys, created_at, updated_at)
                          VALUES (?,?,?,?, 'now', 'now')
                          ON CONFLICT(project_id) DO UPDATE SET state=excluded.state, ssh_port=excluded.ssh_port,
                              authorized_keys=excluded.authorized_keys""", (pid, state, ssh_port, keys))
        (self.pool / f"project-{pid}").mkdir(exist_ok=True)

    def add_peer(self, peer_id: str, h2h: str, *, trusted: bool = True, ssh_server: str | None = None,
                 sshpiperd: str | None = None) -> None:
        self.cli("keys", "show")
        with contextlib.closing(self.db()) as db:
            db.execute("""INSERT OR REPLACE INTO project_hosts(host_id, name, ssh_server, host_to_host_public_key,
                              sshpiperd_public_key, trusted, is_self, updated_at) VALUES (?,?,?,?,?,?,0,'now')""",
                       (peer_id, "peer", ssh_server, h2h, sshpiperd, int(trusted)))

    def pin_hub_keys(self, lines: list[str], hub_id: str = "00000000-0000-4000-8000-000000000001") -> None:
        """What `keys sync` does with the hub's published keys: pin exactly these."""
        from cocalc_ctl.state import hub_keys

        self.cli("keys", "show")
        with contextlib.closing(self.db()) as db:
            hub_keys.replace_keys(db, [hub_keys.HubKey(hub_id, line) for line in lines], "now")

    def pub(self, rel: str) -> str:
        return (self.secrets / rel).with_name((self.secrets / rel).name + ".pub").read_text().strip()


class PluginClient:
    """HTTP/1.1 keep-alive client that sends exactly what the REST plugin's Go client sends."""

    def __init__(self, host: str, port: int):
        self.addr = (host, port)
        self.sock: socket.socket | None = None
        self.buf = b""

    def _connect(self) -> None:
        self.sock = socket.create_connection(self.addr, timeout=10)
        self.buf = b""

    def close(self) -> None:
        if self.sock:
            self.sock.close()
        self.sock = None

    def raw(self, request: bytes) -> tuple[int, dict, bytes, bool]:
        """Send raw bytes, read one response: (status, headers, body, server_closed)."""
        if self.sock is None:
            self._connect()
        self.sock.sendall(request)
        while b"\r\n\r\n" not in self.buf:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionError("server closed before answering")
            self.buf += chunk
        head, _, rest = self.buf.partition(b"\r\n\r\n")
        lines = head.split(b"\r\n")
        status = int(lines[0].split(b" ")[1])
        headers = {}
        for h in lines[1:]:
            k, _, v = h.partition(b":")
            headers[k.strip().lower().decode()] = v.strip().decode()
        n = int(headers.get("content-length", "0"))
        while len(rest) < n:
            chunk = self.sock.recv(65536)
            if not chunk:
                break
            rest += chunk
        body, self.buf = rest[:n], rest[n:]
        closed = headers.get("connection", "").lower() == "close"
        if closed:
            self.close()
        return status, headers, body, closed

    def lookup_path(self, path: str) -> tuple[int, dict]:
        req = (f"GET {path} HTTP/1.1\r\nHost: {self.addr[0]}:{self.addr[1]}\r\n"
               "User-Agent: Go-http-client/1.1\r\nAccept-Encoding: gzip\r\n\r\n").encode()
        status, _, body, _ = self.raw(req)
        return status, json.loads(body)

    def lookup(self, token: str, user: str) -> tuple[int, dict]:
        # Go's url.QueryEscape == quote_plus with nothing safe except unreserved characters
        return self.lookup_path(f"/{token}/{quote_plus(user, safe='')}")


def wait_port(host: str, port: int, timeout: float = 15.0, proc: subprocess.Popen | None = None) -> None:
    """Wait until something listens on host:port; given `proc`, until that process itself does (a
    connect() could reach another program that holds the port)."""
    if proc is not None:
        return wait_listening(proc, port, timeout, what="server")
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            socket.create_connection((host, port), timeout=0.5).close()
            return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"nothing listening on {host}:{port}")


@contextlib.contextmanager
def rest_server(host: KeyHost, port: int | None = None):
    port = port or free_port()
    p = subprocess.Popen([*CLI, "sshpiper", "serve", "--listen", f"127.0.0.1:{port}"], env=host.env, cwd=str(REPO),
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        wait_port("127.0.0.1", port, proc=p)
        yield port, p
    finally:
        if p.poll() is None:
            p.terminate()
        try:
            p.wait(timeout=10)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


# -- real sshd ---------------------------------------------------------------------------------

PASSWD = Path("/etc/passwd")
PWD_LOCK = Path("/etc/.pwd.lock")


@contextlib.contextmanager
def _pwd_locked():
    fd = os.open(PWD_LOCK, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        fcntl.lockf(fd, fcntl.LOCK_EX)  # the same fcntl lock lckpwdf(3) takes
        yield
    finally:
        fcntl.lockf(fd, fcntl.LOCK_UN)
        os.close(fd)


def _rewrite_passwd(transform) -> None:
    with _pwd_locked():
        text = PASSWD.read_text()
        new = transform(text)
        st = PASSWD.stat()
        tmp = PASSWD.with_name(f".passwd.{os.getpid()}.tmp")
        tmp.write_text(new)
        os.chmod(tmp, st.st_mode & 0o777)
        os.chown(tmp, st.st_uid, st.st_gid)
        os.replace(tmp, PASSWD)


@contextlib.contextmanager
def passwd_users(names: list[str]):
    """Receiver login users (uid-0 aliases with /bin/sh, as `sshpiper config` documents); removed after."""
    lines = [f"{n}:*:0:0:cocalc-ctl test receiver:/:/bin/sh" for n in names]
    _rewrite_passwd(lambda t: t + ("" if t.endswith("\n") else "\n") + "".join(line + "\n" for line in lines))
    try:
        yield
    finally:
        _rewrite_passwd(lambda t: "".join(x for x in t.splitlines(keepends=True) if x.rstrip("\n") not in lines))


@contextlib.contextmanager
def root_owned_dir():
    """A root-owned 0755 directory chain outside /tmp (sshd's AuthorizedKeysCommand requirement)."""
    d = Path("/run") / f"cocalc-test-{uuid.uuid4().hex[:10]}"
    d.mkdir(mode=0o755)
    os.chmod(d, 0o755)
    try:
        yield d
    finally:
        shutil.rmtree(d, ignore_errors=True)


def write_script(path: Path, text: str) -> Path:
    path.write_text(text)
    os.chmod(path, 0o755)
    return path


class Sshd:
    """A foreground OpenSSH sshd with its own config; `stop()` is idempotent."""

    def __init__(self, config_text: str, workdir: Path, name: str = "sshd"):
        self.dir = workdir
        self.config = workdir / f"{name}_config"
        self.log = workdir / f"{name}.log"
        self.config.write_text(config_text)
        self.proc: subprocess.Popen | None = None

    def start(self, host: str, port: int, timeout: float = 20.0) -> "Sshd":
        os.makedirs("/run/sshd", exist_ok=True)
        check = subprocess.run(["/usr/sbin/sshd", "-t", "-f", str(self.config)], capture_output=True, text=True)
        if check.returncode != 0:
            raise RuntimeError(f"sshd -t: {check.stderr}")
        deadline = time.monotonic() + timeout
        while True:
            self.log.write_text("")
            self.proc = subprocess.Popen(["/usr/sbin/sshd", "-D", "-f", str(self.config), "-E", str(self.log)])
            try:
                wait_port(host, port, timeout=30, proc=self.proc)
                return self
            except (RuntimeError, TimeoutError):
                self.stop()
                # another test on this machine may hold the port for a moment: retry until the deadline
                if time.monotonic() > deadline:
                    raise RuntimeError(f"sshd did not start on {host}:{port}: {self.log.read_text()[-500:]}")
                time.sleep(1)

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None


def tmpdir() -> Path:
    return Path(tempfile.mkdtemp(prefix="cocalc-keys-", dir="/var/tmp"))
