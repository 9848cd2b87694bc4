"""Origin isolation and the proxy's own endpoints, with real hub and host proxies and real PostgreSQL:
Set-Cookie scoping in path mode on the fast and the stream path, subdomain routing
(`proxy.project_domain`), /metrics for loopback peers or a bearer token, non-loopback listens.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from tests.support.access import add_account, add_token, grant
from tests.support.ports import free_port
from tests.support.proxy import (DIRECT, Service, host_identity, host_state, hub_secret, send_raw, start_backend,
                                 start_proxy, status_of, write_config)

pytestmark = pytest.mark.integration

P_PATH = str(uuid.uuid4())   # served in path mode
P_SUB = str(uuid.uuid4())    # served in subdomain mode
HOST_P, HOST_S = str(uuid.uuid4()), str(uuid.uuid4())
DOMAIN = "example.org"
COOKIES = ["a=1; Domain=example.org; Path=/", "b=2", f"c=3; Path=/{P_PATH}/lab; HttpOnly",
           "cocalc_ctl_session=ccs_forged; Path=/", "cocalc_ctl_session=; Max-Age=0", "=cocalc_ctl_session=x"]
AUTH: list = []  # the hub's Authorization header for a granted account (set by the fixture)
EXPECTED_PATH_MODE = [f"a=1; Path=/{P_PATH}/", f"b=2; Path=/{P_PATH}/", f"c=3; HttpOnly; Path=/{P_PATH}/lab"]


@pytest.fixture(scope="module")
def fleet(tmp_path_factory, postgres):
    import psycopg

    from cocalc_ctl.state import hub_db

    work = tmp_path_factory.mktemp("origins")
    dsn = postgres.new_database()
    hub_db.migrate(dsn)
    started = []
    try:
        backend = start_backend(work, name="project")
        started.append(backend)
        host_state(work / "hp", {P_PATH: backend.port})
        host_state(work / "hs", {P_SUB: backend.port})
        hub_secret(dsn, HOST_P, work / "hp")
        hub_secret(dsn, HOST_S, work / "hs")
        trust = {"trust_forwarded": ["127.0.0.1"]}
        host_p = start_proxy(work, "host", {"data_dir": str(work / "hp"), **host_identity(HOST_P, work / "hp"),
                                            "proxy": trust})
        host_s = start_proxy(work, "host", {"data_dir": str(work / "hs"), **host_identity(HOST_S, work / "hs"),
                                            "proxy": {**trust, "project_domain": DOMAIN}})
        started += [host_p, host_s]
        open_p = start_proxy(work, "host", {"data_dir": str(work / "hp"), "proxy": DIRECT})
        started.append(open_p)
        with psycopg.connect(dsn, autocommit=True) as conn:
            for hid, proxy in ((HOST_P, host_p), (HOST_S, host_s)):
                conn.execute("INSERT INTO project_hosts(id, name, internal_url) VALUES (%s, 'h', %s)",
                             (hid, f"http://127.0.0.1:{proxy.port}"))
            conn.execute("INSERT INTO projects(project_id, host_id) VALUES (%s, %s), (%s, %s)",
                         (P_PATH, HOST_P, P_SUB, HOST_S))
        account = add_account(dsn, "origins")
        for pid in (P_PATH, P_SUB):
            grant(dsn, pid, account, "collaborator")
        AUTH.append(("Authorization", "Bearer " + add_token(dsn, account)[0]))
        hub_p = start_proxy(work, "hub", {"data_dir": str(work / "hub-p"), "hub_dsn": dsn})
        hub_s = start_proxy(work, "hub", {"data_dir": str(work / "hub-s"), "hub_dsn": dsn,
                                          "proxy": {"project_domain": DOMAIN}})
        started += [hub_p, hub_s]
        yield {"work": work, "hub_p": hub_p, "hub_s": hub_s, "open_p": open_p, "host_s": host_s}
    finally:
        for s in reversed(started):
            s.stop()


def request(method: str, target: str, host: str = "h", headers: list | None = None, body: bytes = b"",
            auth: bool = True) -> bytes:
    lines = [f"{method} {target} HTTP/1.1", f"Host: {host}", "Connection: close"]
    lines += [f"{k}: {v}" for k, v in [*(AUTH if auth else []), *(headers or [])]]
    if body:
        lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


def set_cookies(response: bytes) -> list[str]:
    head = response.split(b"\r\n\r\n", 1)[0].decode()
    return [line.split(":", 1)[1].strip() for line in head.split("\r\n")[1:] if line.lower().startswith("set-cookie:")]


def body_json(response: bytes) -> dict:
    return json.loads(response.split(b"\r\n\r\n", 1)[1])


@pytest.mark.parametrize("proxy", ["open_p", "hub_p"], ids=["host-direct", "hub-then-host"])
@pytest.mark.parametrize("method,query,body", [("GET", "", b""), ("GET", "?chunked=1", b""), ("POST", "", b"x")],
                         ids=["fast-path", "stream-path-chunked", "stream-path-body"])
def test_path_mode_scopes_a_projects_cookies(fleet, proxy, method, query, body):
    raw = request(method, f"/{P_PATH}/cookies{query}", headers=[("X-Test-Set-Cookie", c) for c in COOKIES],
                  body=body)
    resp = send_raw(fleet[proxy].port, raw)
    assert status_of(resp) == 200, resp[:300]
    assert set_cookies(resp) == EXPECTED_PATH_MODE


def test_subdomain_mode_routes_by_host_with_the_path_unchanged(fleet):
    hub = fleet["hub_s"].port
    host = f"{P_SUB}.{DOMAIN}"
    resp = send_raw(hub, request("GET", "/lab/tree?x=1", host=host))
    assert status_of(resp) == 200, resp[:300]
    info = body_json(resp)
    assert info["target"] == "/lab/tree?x=1" and info["name"] == "project"
    assert {k.lower(): v for k, v in info["headers"]}["host"] == host
    # cookies: no Domain (host-only: other projects' subdomains never get it), Path kept, ours dropped
    resp = send_raw(hub, request("GET", "/cookies", host=host, headers=[("X-Test-Set-Cookie", c) for c in COOKIES]))
    assert set_cookies(resp) == ["a=1; Path=/", "b=2", f"c=3; HttpOnly; Path=/{P_PATH}/lab"]
    # the project's own /healthz and /metrics are the project's; the proxy's are on its own name
    assert body_json(send_raw(hub, request("GET", "/metrics", host=host)))["target"] == "/metrics"
    assert status_of(send_raw(hub, request("GET", "/healthz", host=DOMAIN))) == 200
    # a WebSocket on the project's origin (stream path)
    ws = send_raw(hub, request("GET", "/ws", host=host, headers=[
        ("Upgrade", "websocket"), ("Connection", "Upgrade"), ("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ=="),
        ("Sec-WebSocket-Version", "13")]) + b"\x88\x80\x00\x00\x00\x00")  # then a close frame
    assert status_of(ws) == 101


@pytest.mark.parametrize("host,status", [
    (f"x.{P_SUB}.{DOMAIN}", 400), (f"project.{DOMAIN}", 400), (f"{P_SUB}.{DOMAIN}.", 400),
    (f"{P_SUB.replace('-', '')}.{DOMAIN}", 400), (f"{uuid.uuid4()}.{DOMAIN}", 403), (DOMAIN, 404),
    (f"{P_SUB}.{DOMAIN}.evil.net", 404),
], ids=["x.P.domain", "project.domain", "P.domain.", "P-without-dashes.domain", "unknown-uuid.domain", "domain",
        "P.domain.evil.net"])  # fixed ids: the uuids are new in every process (pytest -n compares collections)
def test_subdomain_mode_refuses_other_host_forms(fleet, host, status):
    """Malformed names under the domain: 400; outside it: 404; a well-formed project this account has no
    grant on: the hub's 403."""
    assert status_of(send_raw(fleet["hub_s"].port, request("GET", f"/{P_SUB}/x", host=host))) == status


def test_subdomain_mode_login_cookie_is_scoped_to_the_projects_origin(fleet):
    token = AUTH[0][1].split()[1]
    raw = (f"GET /lab?token={token} HTTP/1.1\r\nHost: {P_SUB}.{DOMAIN}\r\nConnection: close\r\n\r\n").encode()
    resp = send_raw(fleet["hub_s"].port, raw)
    assert status_of(resp) == 303, resp[:300]
    (cookie,) = set_cookies(resp)
    assert cookie.startswith("cocalc_ctl_session=ccs_") and "; Path=/;" in cookie and "Domain" not in cookie
    # and the session works on that origin (the cookie stripped before the project sees it)
    session = cookie.split(";", 1)[0]
    raw = (f"GET /lab HTTP/1.1\r\nHost: {P_SUB}.{DOMAIN}\r\nCookie: {session}\r\nConnection: close\r\n\r\n")
    resp = send_raw(fleet["hub_s"].port, raw.encode())
    assert status_of(resp) == 200 and "cocalc_ctl_session" not in json.dumps(body_json(resp)["headers"])


def test_subdomain_mode_refuses_hostile_paths_on_a_project_origin(fleet):
    for target in ("/a/../b", "/%2e%2e/x", "//evil/x", "/a%2fb"):
        assert status_of(send_raw(fleet["hub_s"].port, request("GET", target, host=f"{P_SUB}.{DOMAIN}"))) == 400


# -- /metrics and non-loopback listens ------------------------------------------------------------

def non_loopback_address() -> str | None:
    """An address of this machine outside 127.0.0.0/8 (the source of a route; no packet is sent)."""
    for probe in ("192.0.2.123", "10.255.255.254", "198.51.100.1"):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            try:
                s.connect((probe, 9))
            except OSError:
                continue
            addr = s.getsockname()[0]
            if not addr.startswith("127."):
                return addr
    return None


def serve_on_all(work: Path, config: dict) -> Service:
    port = free_port()
    cfg = write_config(work / f"all-{port}.yaml", config)
    env = {k: v for k, v in os.environ.items() if not k.startswith("COCALC_CTL_")}
    return Service([sys.executable, "-m", "cocalc_ctl", "--config", str(cfg), "proxy", "serve", "--mode", "host",
                    "--listen", f"0.0.0.0:{port}"], work / f"all-{port}.log", port, env=env)


def test_metrics_answer_loopback_peers_or_the_bearer_token_only(tmp_path):
    addr = non_loopback_address()
    if addr is None:
        pytest.skip("this machine has no address outside 127.0.0.0/8")
    secrets = tmp_path / "secrets"
    secrets.mkdir(mode=0o700)
    token_file = secrets / "metrics-token"
    token = os.urandom(24).hex()
    token_file.write_text(token + "\n")
    token_file.chmod(0o600)
    host_state(tmp_path / "data", {})
    config = {"data_dir": str(tmp_path / "data"), "host_id": str(uuid.uuid4()),
              "proxy": {"metrics_token_file": str(token_file)}}
    proxy = serve_on_all(tmp_path, config)  # allowed: proxy.host_auth is hub (the default)
    try:
        def get(path, source, dest, headers=()):
            return status_of(send_raw(proxy.port, request("GET", path, headers=list(headers), auth=False), addr=dest,
                                      source=source))

        assert get("/metrics", addr, addr) == 403
        assert get("/metrics", addr, addr, [("Authorization", "Bearer " + token[:-1] + "0")]) == 403
        assert get("/metrics", addr, addr, [("Authorization", "Basic " + token)]) == 403
        assert get("/metrics", addr, addr, [("Authorization", "Bearer " + token)]) == 200
        assert get("/healthz", addr, addr) == 200
        assert get(f"/{uuid.uuid4()}/x", addr, addr) == 401  # no hub credential
        # loopback means 127.0.0.0/8: 127.0.0.2 is as local as 127.0.0.1
        assert get("/metrics", "127.0.0.2", "127.0.0.1") == 200
        assert token not in proxy.log()
    finally:
        proxy.stop()


def test_a_metrics_token_file_others_can_read_is_refused_at_start(tmp_path):
    token_file = tmp_path / "metrics-token"
    token_file.write_text("0123456789abcdef0123\n")
    token_file.chmod(0o644)
    host_state(tmp_path / "data", {})
    cfg = write_config(tmp_path / "c.yaml", {"data_dir": str(tmp_path / "data"), "host_id": str(uuid.uuid4()),
                                             "proxy": {"metrics_token_file": str(token_file)}})
    env = {k: v for k, v in os.environ.items() if not k.startswith("COCALC_CTL_")}
    r = subprocess.run([sys.executable, "-m", "cocalc_ctl", "--config", str(cfg), "proxy", "serve", "--listen",
                        f"127.0.0.1:{free_port()}"], capture_output=True, text=True, env=env, timeout=60)
    assert r.returncode == 5 and len(r.stderr.splitlines()) == 1 and "0644" in r.stderr
    assert "0123456789abcdef" not in r.stderr


def test_a_non_loopback_listen_without_access_control_exits_5_in_one_line(tmp_path):
    host_state(tmp_path / "data", {})
    cfg = write_config(tmp_path / "c.yaml", {"data_dir": str(tmp_path / "data"), "proxy": DIRECT})
    env = {k: v for k, v in os.environ.items() if not k.startswith("COCALC_CTL_")}
    r = subprocess.run([sys.executable, "-m", "cocalc_ctl", "--config", str(cfg), "proxy", "serve", "--listen",
                        f"0.0.0.0:{free_port()}"], capture_output=True, text=True, env=env, timeout=60)
    assert r.returncode == 5
    assert r.stderr == ("cocalc-ctl: error: refusing to listen on non-loopback address 0.0.0.0: proxy.host_auth "
                        "is none (listen on 127.0.0.1, or set proxy.host_auth: hub)\n")
