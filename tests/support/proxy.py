"""Proxy test helpers: loopback backends, `proxy serve` subprocesses, raw sockets, RSS sampling."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Callable

from tests.support.ports import bind_failed, free_port, wait_listening

REPO = Path(__file__).resolve().parents[2]


def wait_port(port: int, timeout: float = 60.0, proc: subprocess.Popen | None = None) -> None:
    """Wait until something listens on the port; given `proc`, until that process itself does (a
    connect() could reach another program that took the port)."""
    if proc is not None:
        try:
            return wait_listening(proc, port, timeout)
        except RuntimeError:
            raise RuntimeError(f"process exited with {proc.returncode}: {_tail(proc)}") from None
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"nothing listening on 127.0.0.1:{port}")


class PortTaken(RuntimeError):
    pass


def _tail(proc) -> str:
    path = getattr(proc, "log_path", None)
    if path and os.path.exists(path):
        return Path(path).read_text()[-2000:]
    return ""


class Service:
    """A subprocess with its output in a log file; stopped (TERM, then KILL) on exit."""

    def __init__(self, argv: list[str], log_path: Path, port: int, env: dict | None = None):
        self.port = port
        self.log_path = log_path
        self._log = open(log_path, "wb")
        self.proc = subprocess.Popen(argv, stdout=self._log, stderr=subprocess.STDOUT, cwd=REPO,
                                     env={**os.environ, **(env or {})}, start_new_session=True)
        self.proc.log_path = str(log_path)
        try:
            wait_port(port, proc=self.proc)
        except Exception as exc:
            self.stop()
            if isinstance(exc, RuntimeError) and bind_failed(_tail(self.proc)):
                raise PortTaken(str(exc)) from None
            raise

    @property
    def pid(self) -> int:
        return self.proc.pid

    def log(self) -> str:
        """The server's output so far, complete lines only (it may be writing one right now)."""
        self._log.flush()
        text = self.log_path.read_text(errors="replace")
        return text[:text.rfind("\n") + 1]

    def alive(self) -> bool:
        return self.proc.poll() is None

    def status_kb(self, field: str) -> int:
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
        raise KeyError(field)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self._log.close()


def _on_a_free_port(start: Callable[[int], Service], tries: int = 5) -> Service:
    """start(port) on a freshly picked port; another one if that port was taken meanwhile."""
    for attempt in range(tries):
        try:
            return start(free_port())
        except PortTaken:
            if attempt == tries - 1:
                raise
    raise AssertionError("unreachable")


def start_backend(workdir: Path, *, canary: Path | None = None, name: str | None = None) -> Service:
    def start(port: int) -> Service:
        argv = [sys.executable, "-m", "tests.support.proxy_backend", "--port", str(port)]
        if canary:
            argv += ["--canary", str(canary)]
        if name:
            argv += ["--name", name]
        return Service(argv, workdir / f"backend-{port}.log", port)

    return _on_a_free_port(start)


def write_config(path: Path, values: dict) -> Path:
    import yaml

    path.write_text(yaml.safe_dump(values))
    return path


def start_proxy(workdir: Path, mode: str, config: dict, *, json_log: bool = False,
                workers: int | str | None = 1) -> Service:
    """`proxy serve` on a free port; one process unless `workers` says otherwise (None: the config's)."""
    def start(port: int) -> Service:
        cfg = write_config(workdir / f"proxy-{mode}-{port}.yaml", config)
        argv = [sys.executable, "-m", "cocalc_ctl", "--config", str(cfg)]
        if json_log:
            argv.append("--json")
        argv += ["proxy", "serve", "--mode", mode, "--listen", f"127.0.0.1:{port}"]
        if workers is not None:
            argv += ["--workers", str(workers)]
        env = {k: v for k, v in os.environ.items() if not k.startswith("COCALC_CTL_")}
        return Service(argv, workdir / f"proxy-{mode}-{port}.log", port, env=env)

    return _on_a_free_port(start)


# The config of a host proxy that tests talk to directly (no hub in front): no hub credential, which
# `proxy serve` allows on a loopback listen only (these all listen on 127.0.0.1).
DIRECT = {"host_auth": "none"}


def hub_secret(dsn: str, host_id: str, host_dir: Path, *, key_id: str | None = None,
               secret: bytes | None = None, write: bool = True) -> tuple[str, bytes]:
    """What `keys trust` (the hub makes a host's secret) and `keys sync` (the host writes it, 0600 in a
    0700 dir) do for the hub credential, for a fleet of bare proxies: returns (key_id, secret). The
    host proxy's config then needs {"host_id": host_id, "secrets_dir": host_dir / "secrets"}."""
    import secrets as pysecrets

    import psycopg

    key_id = key_id or pysecrets.token_hex(8)
    secret = secret or pysecrets.token_bytes(32)
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("INSERT INTO host_proxy_secrets(host_id, key_id, secret) VALUES (%s, %s, %s)",
                     (host_id, key_id, secret))
    if write:
        write_host_secrets(host_dir, [(key_id, secret)])
    return key_id, secret


def write_host_secrets(host_dir: Path, keys: list[tuple[str, bytes]]) -> Path:
    from cocalc_ctl.proxy import hubcred

    path = hubcred.secrets_path(host_dir / "secrets")
    for d in (path.parent.parent, path.parent):
        d.mkdir(mode=0o700, parents=True, exist_ok=True)
        os.chmod(d, 0o700)
    tmp = path.with_name(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(hubcred.format_secrets(keys))
    os.replace(tmp, path)
    return path


def host_identity(host_id: str, host_dir: Path) -> dict:
    """Config keys of a host proxy that checks the hub credential (written by hub_secret)."""
    return {"host_id": host_id, "secrets_dir": str(host_dir / "secrets")}


def host_state(data_dir: Path, projects: dict[str, int | None]) -> None:
    """Register projects in a host sqlite: {project_id: http_port or None (stopped)}."""
    from cocalc_ctl.state import host_db

    conn = host_db.connect(data_dir)
    for pid, port in projects.items():
        host_db.upsert_project(conn, pid, state="running" if port else "stopped", http_port=port)
    conn.close()


def raw_exchange(port: int, data: bytes, *, timeout: float = 5.0, half_close: bool = False) -> bytes:
    """Send raw bytes, return everything received until the proxy closes (or `timeout`)."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(data)
        if half_close:
            s.shutdown(socket.SHUT_WR)
        out = b""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                chunk = s.recv(65536)
            except socket.timeout:
                break
            except ConnectionResetError:
                break
            if not chunk:
                break
            out += chunk
        return out


def send_raw(port: int, request: str | bytes, *, addr: str = "127.0.0.1", source: str | None = None,
             timeout: float = 10.0) -> bytes:
    """Send one request (ending in `Connection: close`), return the whole answer; `source` binds the
    client's address (e.g. 127.0.0.2, or a non-loopback one of this machine)."""
    data = request.encode() if isinstance(request, str) else request
    with socket.create_connection((addr, port), timeout=timeout,
                                  source_address=(source, 0) if source else None) as s:
        s.sendall(data)
        out = b""
        while chunk := s.recv(65536):
            out += chunk
        return out


def status_of(response: bytes) -> int | None:
    if not response.startswith(b"HTTP/1."):
        return None
    return int(response.split(b" ", 2)[1])


class RssSampler:
    """Samples VmRSS of some processes every 50 ms in a thread; `.peak_kb[pid]`."""

    def __init__(self, *services: Service):
        self.services = services
        self.peak_kb = {s.pid: 0 for s in services}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        while not self._stop.is_set():
            for s in self.services:
                try:
                    self.peak_kb[s.pid] = max(self.peak_kb[s.pid], s.status_kb("VmRSS"))
                except (OSError, KeyError):
                    pass
            self._stop.wait(0.05)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()


def get_json(port: int, path: str, headers: dict | None = None) -> tuple[int, dict]:
    import http.client

    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request("GET", path, headers=headers or {})
        resp = conn.getresponse()
        body = resp.read()
        return resp.status, (json.loads(body) if resp.getheader("content-type", "").startswith("application/json")
                             else {"text": body.decode(errors="replace")})
    finally:
        conn.close()
