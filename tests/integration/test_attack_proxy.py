"""Attacks on the hub -> host proxy chain with real processes (PostgreSQL, hub and host proxies, backends):
a request the hub authorized for one project must never reach another one on the same host, whatever the
two proxies' addressing modes; an open WebSocket must not outlive its credential's expiry.
"""

from __future__ import annotations

import json
import socket
import time
import uuid

import pytest

from tests.support.access import add_account, add_token, grant
from tests.support.proxy import host_identity, host_state, hub_secret, send_raw, start_backend, start_proxy, status_of

pytestmark = pytest.mark.integration

P = str(uuid.uuid4())  # granted to the attacker
Q = str(uuid.uuid4())  # same host, not granted
HOST_PATH, HOST_SUB = str(uuid.uuid4()), str(uuid.uuid4())
P2, Q2 = str(uuid.uuid4()), str(uuid.uuid4())  # the same pair on the subdomain-mode host
DOMAIN = "example.org"
LONG = 3600


@pytest.fixture(scope="module")
def fleet(tmp_path_factory, postgres):
    import psycopg

    from cocalc_ctl.state import hub_db

    work = tmp_path_factory.mktemp("attack")
    dsn = postgres.new_database()
    hub_db.migrate(dsn)
    started = []
    try:
        bp, bq = start_backend(work, name="P"), start_backend(work, name="Q")
        started += [bp, bq]
        host_state(work / "hp", {P: bp.port, Q: bq.port})
        host_state(work / "hs", {P2: bp.port, Q2: bq.port})
        hub_secret(dsn, HOST_PATH, work / "hp")
        hub_secret(dsn, HOST_SUB, work / "hs")
        trust = {"trust_forwarded": ["127.0.0.1"]}
        # host proxies: one in path mode, one in subdomain mode (the two halves of a fleet switching modes)
        host_p = start_proxy(work, "host", {"data_dir": str(work / "hp"), **host_identity(HOST_PATH, work / "hp"),
                                            "proxy": trust})
        host_s = start_proxy(work, "host", {"data_dir": str(work / "hs"), **host_identity(HOST_SUB, work / "hs"),
                                            "proxy": {**trust, "project_domain": DOMAIN}})
        started += [host_p, host_s]
        with psycopg.connect(dsn, autocommit=True) as conn:
            for hid, proxy in ((HOST_PATH, host_p), (HOST_SUB, host_s)):
                conn.execute("INSERT INTO project_hosts(id, name, internal_url) VALUES (%s, 'h', %s)",
                             (hid, f"http://127.0.0.1:{proxy.port}"))
            conn.execute("INSERT INTO projects(project_id, host_id) VALUES (%s, %s), (%s, %s), (%s, %s), (%s, %s)",
                         (P, HOST_PATH, Q, HOST_PATH, P2, HOST_SUB, Q2, HOST_SUB))
        account = add_account(dsn, "attacker")
        for pid in (P, P2):
            grant(dsn, pid, account, "collaborator")
        token = add_token(dsn, account)[0]
        hub_sub = start_proxy(work, "hub", {"data_dir": str(work / "hub-s"), "hub_dsn": dsn,
                                            "proxy": {"project_domain": DOMAIN, "auth_cache_ttl": LONG}})
        hub_path = start_proxy(work, "hub", {"data_dir": str(work / "hub-p"), "hub_dsn": dsn,
                                             "proxy": {"auth_cache_ttl": LONG}})
        # behind a TLS front end: clients are https (proxy.scheme), so the session cookie is __Host-
        hub_tls = start_proxy(work, "hub", {"data_dir": str(work / "hub-t"), "hub_dsn": dsn,
                                            "proxy": {"project_domain": DOMAIN, "scheme": "https"}})
        started += [hub_sub, hub_path, hub_tls]
        yield {"dsn": dsn, "token": token, "account": account, "hub_sub": hub_sub, "hub_path": hub_path,
               "hub_tls": hub_tls}
    finally:
        for s in reversed(started):
            s.stop()


def _get(port: int, host: str, target: str, token: str) -> tuple[int | None, dict | None]:
    raw = send_raw(port, f"GET {target} HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {token}\r\n"
                         "Connection: close\r\n\r\n")
    status = status_of(raw)
    body = raw.partition(b"\r\n\r\n")[2]
    try:
        return status, json.loads(body)
    except ValueError:
        return status, None


def test_the_fleet_works_for_the_granted_project(fleet):
    status, info = _get(fleet["hub_sub"].port, f"{P2}.{DOMAIN}", "/info", fleet["token"])
    assert (status, info and info["name"]) == (200, "P")
    status, info = _get(fleet["hub_path"].port, "h", f"/{P}/info", fleet["token"])
    assert (status, info and info["name"]) == (200, "P")
    status, _ = _get(fleet["hub_sub"].port, f"{Q2}.{DOMAIN}", "/info", fleet["token"])
    assert status == 403
    status, _ = _get(fleet["hub_path"].port, "h", f"/{Q}/info", fleet["token"])
    assert status == 403


def test_subdomain_hub_in_front_of_a_path_mode_host_cannot_reach_another_project(fleet):
    """The hub authorizes P (from Host); a path-mode host routes by the target, which names Q."""
    status, info = _get(fleet["hub_sub"].port, f"{P}.{DOMAIN}", f"/{Q}/info", fleet["token"])
    assert not (status == 200 and info and info.get("name") == "Q"), "reached project Q with a grant on P only"
    assert status == 401  # the host refuses: the hub vouched for P, not for the project the host addresses


def test_path_hub_in_front_of_a_subdomain_host_cannot_reach_another_project(fleet):
    """The hub authorizes P2 (from the target); a subdomain-mode host routes by Host, which names Q2."""
    status, info = _get(fleet["hub_path"].port, f"{Q2}.{DOMAIN}", f"/{P2}/info", fleet["token"])
    assert not (status == 200 and info and info.get("name") == "Q"), "reached project Q2 with a grant on P2 only"
    assert status == 401


def _upgrade(port: int, host: str, target: str, token: str) -> tuple[int, socket.socket]:
    s = socket.create_connection(("127.0.0.1", port), timeout=15)
    s.sendall((f"GET {target} HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
               f"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n"
               f"Authorization: Bearer {token}\r\n\r\n").encode())
    head = b""
    while b"\r\n\r\n" not in head:
        chunk = s.recv(4096)
        if not chunk:
            break
        head += chunk
    return int(head.split(b" ", 2)[1]), s


def _echo(s: socket.socket, text: bytes = b"hi") -> bytes:
    try:
        s.sendall(bytes([0x81, 0x80 | len(text)]) + b"\0\0\0\0" + text)
        return s.recv(4096)
    except OSError:
        return b""


def test_open_websocket_is_closed_when_its_token_expires(fleet):
    """A token's expiry sends no NOTIFY: the proxy itself must close what the token opened."""
    token = add_token(fleet["dsn"], fleet["account"], expires_in=4)[0]
    status, s = _upgrade(fleet["hub_path"].port, "h", f"/{P}/ws", token)
    with s:
        assert status == 101
        assert _echo(s).endswith(b"hi")
        # closed by 7 s (past the expiry, + a margin for a busy machine): poll rather than sit out the margin
        deadline = time.monotonic() + 7
        s.settimeout(5)
        while time.monotonic() < deadline and _echo(s).endswith(b"hi"):
            time.sleep(0.2)
        assert not _echo(s).endswith(b"hi"), "the WebSocket still works after its token expired"
    # and a fresh request with it is refused
    status, _ = _get(fleet["hub_path"].port, "h", f"/{P}/info", token)
    assert status == 401


@pytest.mark.parametrize("where", ["/{p}/info;token={t}", "/{p}/info/{t}", "/{p}/{t}/info", "/{p}/x;s={s}"])
def test_a_token_or_session_value_in_the_path_is_never_logged(fleet, where):
    """Only `?token=` is a login link; a token put anywhere else in the path must still stay out of the log."""
    session = "ccs_" + "S" * 43
    target = where.format(p=P, t=fleet["token"], s=session)
    send_raw(fleet["hub_path"].port, f"GET {target} HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n")
    time.sleep(0.3)
    log = fleet["hub_path"].log()
    assert f"/{P}/" in log
    assert fleet["token"] not in log and fleet["token"][4:] not in log and session[4:] not in log


@pytest.mark.parametrize("header", [None, "X-Forwarded-For: 203.0.113.9", "Forwarded: for=203.0.113.9"])
def test_metrics_through_a_front_end_on_this_machine_is_not_a_loopback_client(fleet, header):
    """A TLS front end on the same machine connects from 127.0.0.1 for every remote client: what it forwards
    (X-Forwarded-For / Forwarded) must not get the loopback exemption of /metrics."""
    extra = f"{header}\r\n" if header else ""
    raw = send_raw(fleet["hub_path"].port, f"GET /metrics HTTP/1.1\r\nHost: h\r\n{extra}Connection: close\r\n\r\n")
    assert status_of(raw) == (200 if header is None else 403)


def test_a_tossed_session_cookie_cannot_shadow_the_clients_own(fleet):
    """Over http no cookie prefix helps: the proxy tries each session cookie (up to 3) in order."""
    host = f"{P2}.{DOMAIN}"
    raw = send_raw(fleet["hub_sub"].port, f"GET /info?token={fleet['token']} HTTP/1.1\r\nHost: {host}\r\n"
                                          "Connection: close\r\n\r\n")
    assert status_of(raw) == 303
    cookie = next(line.split(b":", 1)[1].strip().split(b";")[0].decode() for line in raw.split(b"\r\n")
                  if line.lower().startswith(b"set-cookie:"))
    own = send_raw(fleet["hub_sub"].port, f"GET /lab/info HTTP/1.1\r\nHost: {host}\r\nCookie: {cookie}\r\n"
                                          "Connection: close\r\n\r\n")
    assert status_of(own) == 200
    # what the browser sends once a sibling project's script set cocalc_ctl_session=...; Domain=example.org;
    # Path=/lab: the longer path first
    tossed = "cocalc_ctl_session=ccs_" + "T" * 43
    both = send_raw(fleet["hub_sub"].port, f"GET /lab/info HTTP/1.1\r\nHost: {host}\r\nCookie: {tossed}; {cookie}\r\n"
                                           "Connection: close\r\n\r\n")
    assert status_of(both) == 200


def _login(port: int, host: str, target: str, token: str) -> tuple[str, list[str]]:
    """(name=value, attributes) of the session cookie a login link sets."""
    raw = send_raw(port, f"GET {target}?token={token} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n")
    assert status_of(raw) == 303
    line = next(line.split(b":", 1)[1].strip().decode() for line in raw.split(b"\r\n")
                if line.lower().startswith(b"set-cookie:"))
    pair, *attrs = [a.strip() for a in line.split(";")]
    return pair, attrs


def test_over_https_a_sibling_cannot_plant_a_session_the_subdomain_proxy_reads(fleet):
    """Over https in subdomain mode the session cookie is `__Host-` (a browser refuses one with a Domain,
    so no sibling project can plant it); a bare-named cookie, which a sibling can plant with
    Domain=<project_domain> (the attacker's own valid session: session fixation), is not read at all."""
    port, host = fleet["hub_tls"].port, f"{P2}.{DOMAIN}"
    own, attrs = _login(port, host, "/info", fleet["token"])
    assert own.startswith("__Host-cocalc_ctl_session=ccs_")
    assert {"Path=/", "Secure", "HttpOnly", "SameSite=Lax"} <= set(attrs)
    assert not any(a.lower().startswith("domain") for a in attrs)
    value = own.partition("=")[2]

    def status(cookie: str) -> int:
        return status_of(send_raw(port, f"GET /info HTTP/1.1\r\nHost: {host}\r\nCookie: {cookie}\r\n"
                                        "Connection: close\r\n\r\n"))

    assert status(own) == 200
    planted = f"cocalc_ctl_session={value}"  # a real session, under the name a sibling can plant
    assert status(planted) == 401
    assert status(f"__Secure-cocalc_ctl_session={value}") == 401  # the path mode's name is not this mode's
    assert status(f"{planted}; {own}") == 200
