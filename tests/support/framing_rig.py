"""The proxies under the framing tests, each in front of its own recording backend:

- `host`:  `proxy serve --mode host` -> backend `rec_host` (project P1);
- `hub`:   `proxy serve --mode hub` -> host proxy -> backend `rec_hub` (projects P1 and P2 on one
           host, so they share the hub->host pool);
- `nginx`: nginx (nginx-light) as a reverse proxy with a keep-alive upstream pool -> `rec_nginx`.

Timeouts are short (a malicious upstream must be cut off fast). One rig per test session.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
import uuid
from pathlib import Path

from tests.support.ports import free_port, wait_listening
from tests.support.proxy import DIRECT, Service, host_identity, host_state, hub_secret, start_proxy
from tests.support.recording_backend import RecordingBackend

P1 = str(uuid.UUID(int=0x11111111_1111_4111_8111_111111111111))
P2 = str(uuid.UUID(int=0x22222222_2222_4222_8222_222222222222))
HOST_ID = str(uuid.UUID(int=0x33333333_3333_4333_8333_333333333333))
TIMEOUTS = {"connect_timeout": 2, "upstream_timeout": 3, "idle_timeout": 3, "header_timeout": 3}
NGINX = shutil.which("nginx") or "/usr/sbin/nginx"


class Nginx:
    """nginx with its own prefix, temp dirs and a free loopback port; stopped on close()."""

    def __init__(self, work: Path, upstream_port: int):
        if not os.path.exists(NGINX):
            raise RuntimeError("nginx not found: install nginx-light (scripts/setup.sh does)")
        self.dir = work / "nginx"
        (self.dir / "tmp").mkdir(parents=True)
        self.log_path = self.dir / "error.log"
        for attempt in range(5):
            self.port = free_port()
            conf = self.dir / "nginx.conf"
            conf.write_text(f"""daemon off;
master_process off;
worker_processes 1;
pid {self.dir}/nginx.pid;
error_log {self.log_path} info;
events {{ worker_connections 1024; }}
http {{
  access_log off;
  client_body_temp_path {self.dir}/tmp; proxy_temp_path {self.dir}/tmp; fastcgi_temp_path {self.dir}/tmp;
  uwsgi_temp_path {self.dir}/tmp; scgi_temp_path {self.dir}/tmp;
  client_header_timeout 3s; client_body_timeout 3s; send_timeout 3s; keepalive_timeout 3s;
  upstream backend {{ server 127.0.0.1:{upstream_port}; keepalive 16; }}
  server {{
    listen 127.0.0.1:{self.port};
    location / {{
      proxy_pass http://backend;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_set_header X-Forwarded-For $remote_addr;
      proxy_connect_timeout 2s; proxy_read_timeout 3s; proxy_send_timeout 3s;
    }}
  }}
}}
""")
            self._out = open(self.dir / "stdout.log", "wb")
            self.proc = subprocess.Popen([NGINX, "-c", str(conf), "-p", str(self.dir)], stdout=self._out,
                                         stderr=subprocess.STDOUT, start_new_session=True)
            try:
                wait_listening(self.proc, self.port, 30, what="nginx")
                return
            except RuntimeError:
                self._out.close()
                if attempt == 4:
                    raise RuntimeError(f"nginx did not start: {self.log_path.read_text()[-1000:]}") from None

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self._out.close()


def trust_value(addresses: list[str]):
    """`proxy.trust_forwarded` as this version of the config accepts it: a list of addresses where
    it is one, else the older boolean."""
    from cocalc_ctl import config

    text = Path(config.__file__).read_text()
    line = next((x for x in text.splitlines() if '"proxy.trust_forwarded"' in x), "")
    return True if "_as_bool" in line else addresses


def auth_none() -> dict:
    """`proxy.auth: none` where this version of the config has access control."""
    from cocalc_ctl import config

    return {"auth": "none"} if "proxy.auth" in config.SCHEMA else {}


class Rig:
    def __init__(self, work: Path, dsn: str):
        import psycopg

        from cocalc_ctl.state import hub_db

        self.work = work
        self.started: list = []
        try:
            self.rec_host = self._keep(RecordingBackend("host"))
            self.rec_hub = self._keep(RecordingBackend("hub"))
            self.rec_nginx = self._keep(RecordingBackend("nginx"))
            host_state(work / "host", {P1: self.rec_host.port})
            host_state(work / "hub-host", {P1: self.rec_hub.port, P2: self.rec_hub.port})
            self.host = self._keep(start_proxy(work, "host", {"data_dir": str(work / "host"),
                                                              "proxy": {**TIMEOUTS, **DIRECT}}))
            hub_db.migrate(dsn)
            hub_secret(dsn, HOST_ID, work / "hub-host")  # the hub signs what it forwards, the host checks
            self.hub_host = self._keep(start_proxy(work, "host", {
                "data_dir": str(work / "hub-host"), **host_identity(HOST_ID, work / "hub-host"),
                "proxy": {**TIMEOUTS, "trust_forwarded": trust_value(["127.0.0.1"])}}))
            with psycopg.connect(dsn, autocommit=True) as conn:
                conn.execute("INSERT INTO project_hosts(id, name, internal_url) VALUES (%s, %s, %s)",
                             (HOST_ID, "framing-host", f"http://127.0.0.1:{self.hub_host.port}"))
                for pid in (P1, P2):
                    conn.execute("INSERT INTO projects(project_id, host_id) VALUES (%s, %s)", (pid, HOST_ID))
            # framing, not access control, is under test here: byte-exact requests without credentials,
            # so the hub runs without access control (allowed on its loopback listen)
            self.hub = self._keep(start_proxy(work, "hub", {"data_dir": str(work / "hub"), "hub_dsn": dsn,
                                                            "proxy": {**TIMEOUTS, "route_cache_ttl": 3600,
                                                                      **auth_none()}}))
            self.nginx = self._keep(Nginx(work, self.rec_nginx.port))
        except BaseException:
            self.close()
            raise

    def _keep(self, thing):
        self.started.append(thing)
        return thing

    def paths(self) -> dict[str, tuple[int, RecordingBackend]]:
        return {"host": (self.host.port, self.rec_host), "hub": (self.hub.port, self.rec_hub),
                "nginx": (self.nginx.port, self.rec_nginx)}

    def proxies(self) -> list[Service]:
        return [self.host, self.hub_host, self.hub]

    def close(self) -> None:
        for thing in reversed(self.started):
            try:
                (thing.stop if hasattr(thing, "stop") else thing.close)()
            except Exception:  # noqa: BLE001 - clean up the rest regardless
                pass


def fd_count(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def wait_fds(pid: int, baseline: int, timeout: float = 8.0) -> int:
    """The proxy's fd count once it is back at `baseline` (or what it is after `timeout`)."""
    deadline = time.monotonic() + timeout
    while True:
        n = fd_count(pid)
        if n <= baseline or time.monotonic() > deadline:
            return n
        time.sleep(0.1)
