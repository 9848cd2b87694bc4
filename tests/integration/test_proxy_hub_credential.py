"""Host proxies accept only their hub: real hub and host `proxy serve` processes, real PostgreSQL, a tap
on the hub-to-host link that records what the hub sends (an eavesdropper's view), and credentials made
by hand with the host's secret to change one input at a time.
"""

from __future__ import annotations

import json
import os
import socket
import threading
import time
import uuid

import pytest

from cocalc_ctl.proxy import hubcred
from tests.support.access import add_account, add_token, grant
from tests.support.proxy import (DIRECT, get_json, host_identity, host_state, hub_secret, start_backend,
                                 start_proxy, status_of)

pytestmark = pytest.mark.integration

PID = str(uuid.uuid4())
HOST = str(uuid.uuid4())
WINDOW = 5  # proxy.hub_auth_window of the host proxy: short, so "after the window" takes seconds


class WireTap:
    """A TCP relay on the hub-to-host link that keeps every byte the hub sends."""

    def __init__(self, upstream_port: int):
        self.upstream = upstream_port
        self.sent: list[bytes] = []
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.closed = False
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while not self.closed:
            try:
                c, _ = self.sock.accept()
            except OSError:
                return
            u = socket.create_connection(("127.0.0.1", self.upstream))
            threading.Thread(target=self._pipe, args=(c, u, True), daemon=True).start()
            threading.Thread(target=self._pipe, args=(u, c, False), daemon=True).start()

    def _pipe(self, src, dst, record):
        try:
            while data := src.recv(65536):
                if record:
                    self.sent.append(data)
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def heads(self) -> list[bytes]:
        return [h for h in b"".join(self.sent).split(b"\r\n\r\n") if h.split(b" ", 1)[0] in (b"GET", b"POST")]

    def close(self):
        self.closed = True
        self.sock.close()


@pytest.fixture(scope="module")
def fleet(tmp_path_factory, postgres):
    import psycopg

    from cocalc_ctl.state import hub_db

    work = tmp_path_factory.mktemp("hub-credential")
    dsn = postgres.new_database()
    hub_db.migrate(dsn)
    started, tap = [], None
    try:
        backend = start_backend(work, name="project")
        started.append(backend)
        host_state(work / "host", {PID: backend.port})
        key_id, secret = hub_secret(dsn, HOST, work / "host")
        host = start_proxy(work, "host", {"data_dir": str(work / "host"), **host_identity(HOST, work / "host"),
                                          "proxy": {"trust_forwarded": ["127.0.0.1"], "hub_auth_window": WINDOW}})
        started.append(host)
        # the same host database behind a proxy without the check (loopback, explicitly none)
        open_host = start_proxy(work, "host", {"data_dir": str(work / "host"), "proxy": DIRECT})
        started.append(open_host)
        tap = WireTap(host.port)
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute("INSERT INTO project_hosts(id, name, internal_url) VALUES (%s, 'h', %s)",
                         (HOST, f"http://127.0.0.1:{tap.port}"))
            conn.execute("INSERT INTO projects(project_id, host_id) VALUES (%s, %s)", (PID, HOST))
        # the hub lets a granted account through and names it to the host in x-cocalc-account
        account = add_account(dsn, "credential")
        grant(dsn, PID, account, "collaborator")
        token = add_token(dsn, account)[0]
        hub = start_proxy(work, "hub", {"data_dir": str(work / "hub"), "hub_dsn": dsn})
        started.append(hub)
        yield {"work": work, "hub": hub, "host": host, "open_host": open_host, "tap": tap, "key_id": key_id,
               "secret": secret, "backend": backend, "dsn": dsn, "account": account,
               "auth": {"Authorization": f"Bearer {token}"}}
    finally:
        if tap is not None:
            tap.close()
        for s in reversed(started):
            s.stop()


def send(port: int, raw: bytes, *, addr: str = "127.0.0.1", source: str | None = None) -> bytes:
    with socket.create_connection((addr, port), timeout=10, source_address=(source, 0) if source else None) as s:
        s.sendall(raw)
        out = b""
        while chunk := s.recv(65536):
            out += chunk
        return out


def request(method: str, target: str, *, host: str = "h", headers: dict | None = None, body: bytes = b"") -> bytes:
    lines = [f"{method} {target} HTTP/1.1", f"Host: {host}", "Connection: close"]
    lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
    if body:
        lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


def seen_headers(response: bytes) -> dict:
    info = json.loads(response.split(b"\r\n\r\n", 1)[1])
    return {k.lower(): v for k, v in info["headers"]}


def signed(fleet, method="GET", target=f"/{PID}/info", *, host="h", account="", host_id=HOST, now=None,
           key_id=None, secret=None) -> str:
    return hubcred.credential(secret or fleet["secret"], (key_id or fleet["key_id"]).encode(), host_id.encode(),
                              method.encode(), host.encode(), target.encode(), account.encode(), now,
                              project=target.split("/")[1].split("?")[0].encode()).decode()


def test_through_the_hub_the_project_answers_and_never_sees_the_credential(fleet):
    status, info = get_json(fleet["hub"].port, f"/{PID}/info?q=1", fleet["auth"])
    assert status == 200 and info["name"] == "project"
    h = {k.lower(): v for k, v in info["headers"]}
    assert "x-cocalc-hub-auth" not in h
    assert h["x-cocalc-account"] == fleet["account"]  # set by the hub, signed, verified by the host
    on_wire = [x for x in fleet["tap"].heads() if f"/{PID}/info?q=1".encode() in x]
    assert on_wire and b"x-cocalc-hub-auth: v2." + fleet["key_id"].encode() + b"." in on_wire[-1]
    assert b"x-cocalc-account: " + fleet["account"].encode() in on_wire[-1]


@pytest.mark.parametrize("raw", [
    request("GET", f"/{PID}/info"),                                  # fast path
    request("POST", f"/{PID}/info", body=b"payload"),                  # stream path (a body)
    request("GET", f"/{PID}/ws", headers={"Upgrade": "websocket", "Connection": "Upgrade",  # stream path (upgrade)
                                          "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ==",
                                          "Sec-WebSocket-Version": "13"}),
    request("GET", f"/{PID}/info", headers={"X-Cocalc-Account": "someone"}),
    request("GET", f"/{PID}/info", headers={"X-Cocalc-Hub-Auth": "v1.0123456789abcdef.1.xxx"}),
], ids=["get", "post-body", "websocket", "account-only", "garbage-credential"])
def test_direct_to_host_without_a_valid_credential_is_401(fleet, raw):
    resp = send(fleet["host"].port, raw)
    assert status_of(resp) == 401, resp[:200]
    assert b'"name"' not in resp  # the project was not reached


def test_healthz_stays_open_and_metrics_count_refusals(fleet):
    port = fleet["host"].port
    assert status_of(send(port, request("GET", "/healthz"))) == 200
    send(port, request("GET", f"/{PID}/info"))
    metrics = send(port, request("GET", "/metrics"))
    assert status_of(metrics) == 200 and b"cocalc_proxy_hub_auth_failures_total " in metrics
    assert b"cocalc_proxy_hub_auth_failures_total 0\n" not in metrics


@pytest.mark.parametrize("method,body", [("GET", b""), ("POST", b"data")], ids=["fast-path", "stream-path"])
def test_a_credential_is_bound_to_method_target_host_account_and_host_id(fleet, method, body):
    port = fleet["host"].port
    target = f"/{PID}/info?a=1"

    def go(cred, *, m=method, t=target, host="h", account="acct-1"):
        headers = {"X-Cocalc-Hub-Auth": cred}
        if account is not None:
            headers["X-Cocalc-Account"] = account
        return send(port, request(m, t, host=host, headers=headers, body=body if m == "POST" else b""))

    good = signed(fleet, method, target, account="acct-1")
    ok = go(good)
    assert status_of(ok) == 200, ok[:300]
    seen = seen_headers(ok)
    assert seen["x-cocalc-account"] == "acct-1" and "x-cocalc-hub-auth" not in seen  # passed after verifying
    refused = {
        "another target": go(good, t=f"/{PID}/info?a=2"),
        "another project": go(good, t=f"/{uuid.uuid4()}/info?a=1"),
        "another method": go(good, m="DELETE" if method == "GET" else "GET"),
        "another Host": go(good, host="other"),
        "another account": go(good, account="acct-2"),
        "no account": go(good, account=None),
        "another host id": go(signed(fleet, method, target, account="acct-1", host_id=str(uuid.uuid4()))),
        "another secret": go(signed(fleet, method, target, account="acct-1", secret=os.urandom(32))),
        "unknown key id": go(signed(fleet, method, target, account="acct-1", key_id="0" * 16)),
        "cut mac": go(good[:-1]),
        "flipped mac": go(good[:-1] + ("A" if good[-1] != "A" else "B")),
    }
    assert {k: status_of(v) for k, v in refused.items()} == {k: 401 for k in refused}


def test_clock_skew_inside_the_window_is_accepted_and_outside_refused(fleet):
    port = fleet["host"].port
    now = time.time()
    results = {}
    for skew in (-(WINDOW - 2), WINDOW - 2, -(WINDOW + 3), WINDOW + 3, -3600):
        cred = signed(fleet, now=now + skew)
        results[skew] = status_of(send(port, request("GET", f"/{PID}/info", headers={"X-Cocalc-Hub-Auth": cred})))
    assert results == {-(WINDOW - 2): 200, WINDOW - 2: 200, -(WINDOW + 3): 401, WINDOW + 3: 401, -3600: 401}
    assert "outside its time window" in fleet["host"].log()


def test_a_credential_taken_off_the_wire_replays_only_itself_and_only_inside_its_window(fleet):
    hub, host, tap = fleet["hub"].port, fleet["host"].port, fleet["tap"]
    target = f"/{PID}/info?tapped={uuid.uuid4()}"
    assert get_json(hub, target, fleet["auth"])[0] == 200
    head = next(h for h in tap.heads() if target.encode() in h)
    cred = next(line.split(b": ", 1)[1] for line in head.split(b"\r\n") if line.startswith(b"x-cocalc-hub-auth:"))
    replay = head + b"\r\n\r\n"
    replay = replay.replace(b"HTTP/1.1\r\n", b"HTTP/1.1\r\nConnection: close\r\n", 1)
    assert status_of(send(host, replay)) == 200  # inside the window the same request may repeat (documented)
    assert status_of(send(host, replay.replace(target.encode(), f"/{PID}/admin".encode()))) == 401
    assert status_of(send(host, replay.replace(b"GET ", b"POST ", 1))) == 401
    other = replay.replace(fleet["account"].encode(), str(uuid.uuid4()).encode())
    assert other != replay and status_of(send(host, other)) == 401  # another account
    age = time.time() - int(cred.split(b".")[2])
    time.sleep(max(0.0, WINDOW + 1.5 - age))
    assert status_of(send(host, replay)) == 401  # after the window


def test_without_verification_a_client_account_header_never_reaches_the_project(fleet):
    resp = send(fleet["open_host"].port, request("GET", f"/{PID}/info", headers={
        "X-Cocalc-Account": "admin", "X-Cocalc-Hub-Auth": signed(fleet, account="admin")}))
    assert status_of(resp) == 200
    seen = seen_headers(resp)
    assert "x-cocalc-account" not in seen and "x-cocalc-hub-auth" not in seen


def test_the_secret_never_shows_in_logs_argv_or_the_process_table(fleet):
    import base64

    secret_b64 = base64.urlsafe_b64encode(fleet["secret"]).rstrip(b"=").decode()
    for proc in (fleet["hub"], fleet["host"]):
        assert secret_b64 not in proc.log() and fleet["secret"].hex() not in proc.log()
        cmdline = open(f"/proc/{proc.pid}/cmdline", "rb").read()
        assert secret_b64.encode() not in cmdline
    path = hubcred.secrets_path(fleet["work"] / "host" / "secrets")
    assert (path.stat().st_mode & 0o777, path.parent.stat().st_mode & 0o777) == (0o600, 0o700)
