"""Access control in `proxy serve --mode hub`, with real PostgreSQL, a real hub proxy, a real host proxy
and a real backend: the access matrix over HTTP and WebSocket, the login link, credential stripping and
spoofing, revocation reaching the next request and an open WebSocket (delay measured), cache bounds
under random keys and single-flight lookups.

The hub proxy caches decisions and routes for an hour here: anything that changes within a test can
only have come from the hub's NOTIFY.
"""

from __future__ import annotations

import asyncio
import http.client
import json
import os
import socket
import time
import uuid

import pytest

from tests.support.access import add_account, add_token, grant, revoke_grant, revoke_token
from tests.support.postgres import sql
from tests.support.proxy import host_identity, host_state, hub_secret, start_backend, start_proxy

pytestmark = pytest.mark.integration

P = str(uuid.uuid4())        # the project under test: hub -> host proxy -> backend
Q = str(uuid.uuid4())        # another project on the same host
D = str(uuid.uuid4())        # granted like P, but its "host" is the backend itself: what the hub forwards, seen
HOST = str(uuid.uuid4())
DIRECT = str(uuid.uuid4())
LONG = 3600


@pytest.fixture(scope="module")
def rig(tmp_path_factory, postgres):
    from cocalc_ctl.state import hub_db

    work = tmp_path_factory.mktemp("proxy-access")
    dsn = postgres.new_database()
    hub_db.migrate(dsn)
    started = []
    try:
        backend = start_backend(work, name="p")
        started.append(backend)
        host_state(work / "host", {P: backend.port, Q: backend.port})
        hub_secret(dsn, HOST, work / "host")  # the host accepts only what its hub signed
        host = start_proxy(work, "host", {"data_dir": str(work / "host"), **host_identity(HOST, work / "host"),
                                          "proxy": {"trust_forwarded": ["127.0.0.1"], "upstream_timeout": 10}})
        started.append(host)
        sql(dsn, "INSERT INTO project_hosts(id, name, internal_url) VALUES (%s, %s, %s)",
            (HOST, "h", f"http://127.0.0.1:{host.port}"))
        sql(dsn, "INSERT INTO project_hosts(id, name, internal_url) VALUES (%s, %s, %s)",
            (DIRECT, "direct", f"http://127.0.0.1:{backend.port}"))
        for pid in (P, Q):
            sql(dsn, "INSERT INTO projects(project_id, host_id) VALUES (%s, %s)", (pid, HOST))
        sql(dsn, "INSERT INTO projects(project_id, host_id) VALUES (%s, %s)", (D, DIRECT))
        acct = {name: add_account(dsn, name) for name in ("owner", "collab", "viewer", "stranger")}
        for pid in (P, D):
            grant(dsn, pid, acct["owner"], "owner")
            grant(dsn, pid, acct["collab"], "collaborator")
            grant(dsn, pid, acct["viewer"], "viewer")
        grant(dsn, Q, acct["collab"], "collaborator")
        tok = {name: add_token(dsn, acct[name])[0] for name in ("owner", "collab", "viewer", "stranger")}
        tok["expired"] = add_token(dsn, acct["collab"], expires_in=-60)[0]
        revoked, revoked_id = add_token(dsn, acct["collab"])
        revoke_token(dsn, revoked_id)
        tok["revoked"] = revoked
        tok["other_project"] = add_token(dsn, acct["collab"], project_id=Q)[0]
        hub = start_proxy(work, "hub", {"data_dir": str(work / "hub"), "hub_dsn": dsn,
                                        "proxy": {"route_cache_ttl": LONG, "auth_cache_ttl": LONG,
                                                  "upstream_timeout": 10}})
        started.append(hub)
        yield {"work": work, "dsn": dsn, "hub": hub, "host": host, "backend": backend, "acct": acct, "tok": tok}
    finally:
        for s in reversed(started):
            s.stop()


def request(port: int, method: str, path: str, headers: dict | None = None, body: bytes | None = None):
    """(status, {lowercase header: value}, body bytes)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=15)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        resp = conn.getresponse()
        data = resp.read()
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}, data
    finally:
        conn.close()


def bearer(token: str) -> dict:
    return {"Authorization": f"Bearer {token}"}


def upgrade(port: int, path: str, headers: dict | None = None) -> tuple[int, socket.socket]:
    """Send a WebSocket upgrade; (status, the open socket positioned after the response head)."""
    s = socket.create_connection(("127.0.0.1", port), timeout=15)
    extra = "".join(f"{k}: {v}\r\n" for k, v in (headers or {}).items())
    s.sendall((f"GET {path} HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
               f"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n{extra}\r\n").encode())
    head = b""
    while b"\r\n\r\n" not in head:
        chunk = s.recv(4096)
        if not chunk:
            break
        head += chunk
    return int(head.split(b" ", 2)[1]), s


def ws_echo(s: socket.socket, text: bytes = b"hi") -> bytes:
    s.sendall(bytes([0x81, 0x80 | len(text)]) + b"\0\0\0\0" + text)  # masked text frame, zero mask
    return s.recv(4096)


def backend_headers(info: bytes) -> list[tuple[str, str]]:
    return [(k.lower(), v) for k, v in json.loads(info)["headers"]]


# -- the access matrix ---------------------------------------------------------------------------------

# credential -> (GET, POST, WebSocket)
MATRIX = {
    None: (401, 401, 401),
    "bad": (401, 401, 401),
    "malformed": (401, 401, 401),
    "expired": (401, 401, 401),
    "revoked": (401, 401, 401),
    "other_project": (401, 401, 401),
    "stranger": (403, 403, 403),
    "viewer": (200, 403, 403),
    "collab": (200, 200, 101),
    "owner": (200, 200, 101),
}


def _cred(rig, name):
    if name is None:
        return {}
    if name == "bad":
        from cocalc_ctl.state.hub_access import new_token

        return bearer(new_token())
    if name == "malformed":
        return bearer("cct_short")
    return bearer(rig["tok"][name])


@pytest.mark.parametrize("name", list(MATRIX), ids=[str(n) for n in MATRIX])
def test_access_matrix_http_and_websocket(rig, name):
    hub = rig["hub"].port
    get, post, ws = MATRIX[name]
    headers = _cred(rig, name)
    status, _, body = request(hub, "GET", f"/{P}/info", headers)
    assert status == get, body
    status, _, body = request(hub, "POST", f"/{P}/info", headers, body=b"x" * 100)
    assert status == post, body
    status, s = upgrade(hub, f"/{P}/ws", headers)
    try:
        assert status == ws
        if status == 101:
            assert ws_echo(s) == b"\x81\x02hi"
    finally:
        s.close()
    if get == 200:  # the project sees who calls, and no credential (seen where the hub forwards it)
        status, _, info = request(hub, "GET", f"/{D}/info", headers)
        h = backend_headers(info)
        assert ("x-cocalc-account", rig["acct"]["viewer" if name == "viewer" else name]) in h
        assert not [k for k, _ in h if k == "authorization"]


def test_unauthenticated_clients_get_the_same_answer_for_known_and_unknown_projects(rig):
    from tests.support.proxy import raw_exchange

    hub = rig["hub"].port
    answers = set()
    for pid in (P, Q, str(uuid.uuid4())):
        for cred in ("", "Authorization: Bearer cct_" + "A" * 43 + "\r\n"):
            raw = raw_exchange(hub, f"GET /{pid}/x HTTP/1.1\r\nHost: h\r\n{cred}Connection: close\r\n\r\n".encode())
            answers.add(raw)
    assert len(answers) == 1, answers
    raw = answers.pop()
    assert raw.startswith(b"HTTP/1.1 401 ") and b"www-authenticate: Bearer" in raw and b"?token=" in raw


def test_authenticated_without_access_cannot_tell_unknown_from_existing(rig):
    hub = rig["hub"].port
    owner = bearer(rig["tok"]["owner"])
    a = request(hub, "GET", f"/{Q}/info", owner)           # exists, no grant
    b = request(hub, "GET", f"/{uuid.uuid4()}/info", owner)  # does not exist
    assert a[0] == b[0] == 403 and a[2] == b[2]


# -- login link, cookie, stripping --------------------------------------------------------------------

def test_login_link_sets_a_session_cookie_and_redirects_without_the_token(rig):
    hub, token = rig["hub"].port, rig["tok"]["collab"]
    status, headers, _ = request(hub, "GET", f"/{D}/port/8000/info?a=1&token={token}&b=2")
    assert status == 303
    assert headers["location"] == f"/{D}/port/8000/info?a=1&b=2"
    cookie = headers["set-cookie"]
    name_value, *attrs = [x.strip() for x in cookie.split(";")]
    assert name_value.startswith("cocalc_ctl_session=ccs_")
    assert f"Path=/{D}/" in attrs and "HttpOnly" in attrs and "SameSite=Lax" in attrs
    assert "Secure" not in attrs  # the client's scheme is http here
    max_age = int(next(a for a in attrs if a.startswith("Max-Age="))[8:])
    assert 86400 - 60 < max_age <= 86400  # proxy.session_ttl: the token does not expire
    assert token not in json.dumps(headers)
    # the cookie works, only for its project, and never reaches the project; other cookies do
    jar = f"theme=dark; {name_value}; lang=en"
    status, _, info = request(hub, "GET", f"/{D}/port/8000/info?a=1&b=2", {"Cookie": jar})
    assert status == 200
    h = backend_headers(info)
    assert ("cookie", "theme=dark; lang=en") in h
    assert ("x-cocalc-account", rig["acct"]["collab"]) in h
    assert "ccs_" not in info.decode()
    assert request(hub, "GET", f"/{Q}/info", {"Cookie": name_value})[0] == 401  # a session is one project's
    status, s = upgrade(hub, f"/{D}/ws", {"Cookie": jar})
    s.close()
    assert status == 101
    # through the host too; and the token is in neither the access log of the hub nor of the host
    status, headers, _ = request(hub, "GET", f"/{P}/x?token={token}")
    assert status == 303 and request(hub, "GET", f"/{P}/info", {"Cookie": headers["set-cookie"].split(";")[0]})[0] == 200
    time.sleep(0.2)
    assert token not in rig["hub"].log() and token not in rig["host"].log()
    assert f'"GET /{D}/port/8000/info" 303' in rig["hub"].log()


def test_a_login_link_with_another_method_is_refused_and_never_forwarded(rig):
    hub, token = rig["hub"].port, rig["tok"]["owner"]
    status, _, body = request(hub, "POST", f"/{P}/info?token={token}", bearer(token), body=b"x")
    assert status == 400 and b"GET and HEAD" in body
    for bad in ("cct_nope", "", "%63ct_" + "A" * 43):
        assert request(hub, "GET", f"/{P}/info?token={bad}")[0] == 401


def test_client_cannot_spoof_the_account_header_and_credentials_are_stripped(rig):
    hub = rig["hub"].port
    for method, body in (("GET", None), ("POST", b"payload")):  # fast path and stream path
        status, _, info = request(hub, method, f"/{D}/info", {
            **bearer(rig["tok"]["owner"]), "X-Cocalc-Account": "00000000-0000-4000-8000-000000000000",
            "X-Cocalc-Hub-Auth": "v1.forged", "Cookie": "cocalc_ctl_session=ccs_" + "B" * 43}, body=body)
        assert status == 200
        h = backend_headers(info)
        assert [v for k, v in h if k == "x-cocalc-account"] == [rig["acct"]["owner"]]
        assert not [k for k, _ in h if k in ("authorization", "cookie", "x-cocalc-hub-auth")]
    # an Authorization that is not ours belongs to the project (a Jupyter token...): passed on
    status, headers, _ = request(hub, "GET", f"/{D}/x?token={rig['tok']['owner']}")
    cookie = headers["set-cookie"].split(";")[0]
    status, _, info = request(hub, "GET", f"/{D}/info", {"Cookie": cookie, "Authorization": "token jupyter-123"})
    assert status == 200 and ("authorization", "token jupyter-123") in backend_headers(info)
    # a client sending the account header without any credential is simply refused
    assert request(hub, "GET", f"/{P}/info", {"X-Cocalc-Account": rig["acct"]["owner"]})[0] == 401


# -- revocation ---------------------------------------------------------------------------------------

def _until(predicate, timeout: float = 10.0) -> float:
    t0 = time.monotonic()
    while not predicate():
        assert time.monotonic() - t0 < timeout, "no change within the deadline"
        time.sleep(0.005)
    return time.monotonic() - t0


def test_removed_grant_reaches_the_next_request_and_closes_an_open_websocket(rig):
    dsn, hub = rig["dsn"], rig["hub"].port
    aid = add_account(dsn, "leaver")
    grant(dsn, P, aid, "collaborator")
    token, _ = add_token(dsn, aid)
    status, s = upgrade(hub, f"/{P}/ws", bearer(token))
    assert status == 101 and ws_echo(s) == b"\x81\x02hi"
    assert request(hub, "GET", f"/{P}/info", bearer(token))[0] == 200  # cached for an hour now
    s.settimeout(15)
    t0 = time.monotonic()
    revoke_grant(dsn, P, aid)
    http_delay = _until(lambda: request(hub, "GET", f"/{P}/info", bearer(token))[0] == 403)
    rest = s.recv(4096)  # the proxy closes the tunnel: EOF
    ws_delay = time.monotonic() - t0
    s.close()
    assert rest == b""
    print(f"revocation delay under load: next HTTP request refused after {http_delay * 1000:.0f} ms, "
          f"open WebSocket closed after {ws_delay * 1000:.0f} ms")
    assert f'"GET /{P}/ws" 101' in rig["hub"].log() and "access revoked" in rig["hub"].log()


def test_revoked_token_and_disabled_account_are_refused_on_the_next_request(rig):
    dsn, hub = rig["dsn"], rig["hub"].port
    aid = add_account(dsn, "short-lived")
    grant(dsn, P, aid, "owner")
    t1, t1_id = add_token(dsn, aid)
    t2, _ = add_token(dsn, aid)
    status, s = upgrade(hub, f"/{P}/ws", bearer(t1))
    assert status == 101
    for t in (t1, t2):
        assert request(hub, "GET", f"/{P}/info", bearer(t))[0] == 200
    revoke_token(dsn, t1_id)
    delay = _until(lambda: request(hub, "GET", f"/{P}/info", bearer(t1))[0] == 401)
    s.settimeout(15)
    assert s.recv(4096) == b""
    s.close()
    assert request(hub, "GET", f"/{P}/info", bearer(t2))[0] == 200
    sql(dsn, "UPDATE accounts SET disabled_at = now() WHERE account_id = %s", (aid,))
    delay2 = _until(lambda: request(hub, "GET", f"/{P}/info", bearer(t2))[0] == 401)
    print(f"token revocation seen after {delay * 1000:.0f} ms, account disabled after {delay2 * 1000:.0f} ms"
          " (under load)")
    sql(dsn, "UPDATE accounts SET disabled_at = NULL WHERE account_id = %s", (aid,))
    _until(lambda: request(hub, "GET", f"/{P}/info", bearer(t2))[0] == 200)  # refusals are evicted too


def test_viewer_websocket_refused_and_role_change_applies_at_once(rig):
    dsn, hub = rig["dsn"], rig["hub"].port
    aid = add_account(dsn, "promoted")
    grant(dsn, P, aid, "viewer")
    token, _ = add_token(dsn, aid)
    assert request(hub, "POST", f"/{P}/info", bearer(token), body=b"x")[0] == 403
    grant(dsn, P, aid, "collaborator")
    _until(lambda: request(hub, "POST", f"/{P}/info", bearer(token), body=b"x")[0] == 200)
    status, s = upgrade(hub, f"/{P}/ws", bearer(token))
    assert status == 101
    grant(dsn, P, aid, "viewer")  # demoted: a viewer may hold no socket
    s.settimeout(15)
    assert s.recv(4096) == b""
    s.close()


# -- bounded caches and single flight (in-process, against the real hub database) ----------------------

def test_route_cache_is_bounded_and_refusals_cannot_evict_routes(rig):
    from cocalc_ctl.proxy.http1 import HttpError
    from cocalc_ctl.proxy.hublink import HubLink
    from cocalc_ctl.proxy.routing import HubRoutes

    async def main():
        routes = HubRoutes(HubLink(rig["dsn"], pool_size=2), ttl=LONG, cache_size=64)
        await routes.start()
        try:
            assert routes.link.listening
            assert (await routes.resolve(P)).port == rig["host"].port
            for _ in range(2000):
                with pytest.raises(HttpError):
                    await routes.resolve(str(uuid.uuid4()))
            assert len(routes._cache.neg) <= 16 and len(routes._cache.pos) == 1
            n = routes.lookups
            assert routes.resolve_now(P).port == rig["host"].port
            await routes.resolve(P)
            assert routes.lookups == n  # still cached after 2000 random misses
        finally:
            await routes.close()

    asyncio.run(main())


def test_decision_cache_is_bounded_under_random_tokens(rig):
    from cocalc_ctl.proxy.access import Access, Pass
    from cocalc_ctl.proxy.http1 import parse_request_head
    from cocalc_ctl.proxy.hublink import HubLink
    from cocalc_ctl.state.hub_access import new_token

    def head(token):
        return parse_request_head([f"GET /{P}/x HTTP/1.1".encode(), b"Host: h",
                                   b"Authorization: Bearer " + token.encode()])

    async def main():
        access = Access("builtin", link=HubLink(rig["dsn"], pool_size=2), cache_size=64, ttl=LONG)
        await access.start()
        try:
            owner = head(rig["tok"]["owner"])
            assert isinstance(await access.check(owner, P), Pass)
            for _ in range(2000):
                v = await access.check(head(new_token()), P)
                assert v.status == 401
            assert len(access.cache.pos) == 1 and len(access.cache.neg) <= 16
            n = access.lookups
            assert isinstance(access.check_now(owner, P), Pass)  # still cached, no query
            assert access.lookups == n
        finally:
            await access.close()

    asyncio.run(main())


def test_concurrent_misses_share_one_lookup(rig):
    from cocalc_ctl.proxy.access import Access, Pass
    from cocalc_ctl.proxy.http1 import parse_request_head
    from cocalc_ctl.proxy.hublink import HubLink
    from cocalc_ctl.proxy.routing import HubRoutes

    head = parse_request_head([f"GET /{P}/x HTTP/1.1".encode(), b"Host: h",
                               b"Authorization: Bearer " + rig["tok"]["collab"].encode()])

    async def main():
        link = HubLink(rig["dsn"], pool_size=4)
        access = Access("builtin", link=link, ttl=LONG)
        routes = HubRoutes(link, ttl=LONG)
        queries = []
        real_one, real_batch = link.fetchone, link.run_batch

        async def counting(q, params):
            queries.append(q)
            return await real_one(q, params)

        async def counting_batch(query, keys):
            queries.append((query.__name__, list(keys)))
            return await real_batch(query, keys)

        link.fetchone, link.run_batch = counting, counting_batch
        await access.start()
        try:
            verdicts = await asyncio.gather(*(access.check(head, P) for _ in range(50)))
            found = await asyncio.gather(*(routes.resolve(P) for _ in range(50)))
        finally:
            await access.close()
        assert all(isinstance(v, Pass) for v in verdicts) and len({r.port for r in found}) == 1
        decisions = [q for q in queries if isinstance(q, tuple) and q[0] == "_token_decisions"]
        route_reads = [q for q in queries if isinstance(q, tuple) and q[0] == "_routes_query"]
        assert len(decisions) == 1 and len(decisions[0][1]) == 1 and access.lookups == 1, queries
        assert route_reads == [("_routes_query", [P])] and routes.lookups == 1
        assert not [q for q in queries if isinstance(q, str) and "SELECT" in q], queries  # no one-by-one query

    asyncio.run(main())


def test_batched_lookups_answer_exactly_what_one_by_one_queries_answer(rig):
    """Many concurrent misses of different credentials and projects go as a few batched queries; every
    answer equals the one-by-one decision query's (valid, expired, revoked, scoped to another project,
    unknown; granted, not granted, unknown project), and a decision brings the route along."""
    import hashlib

    import psycopg

    from cocalc_ctl.proxy.access import Access
    from cocalc_ctl.proxy.hublink import HubLink
    from cocalc_ctl.proxy.routing import HubRoutes
    from cocalc_ctl.state.hub_access import TOKEN_DECISION_SQL, new_token

    tokens = [*rig["tok"].values(), new_token()]
    projects = [P, Q, D, str(uuid.uuid4())]

    async def main():
        link = HubLink(rig["dsn"], pool_size=2)
        access = Access("builtin", link=link, ttl=LONG)
        routes = HubRoutes(link, ttl=LONG)
        access.routes = routes
        await access.start()
        try:
            now = time.monotonic()
            pairs = [(t, p) for t in tokens for p in projects]
            got = await asyncio.gather(*(access._lookup("token", hashlib.sha256(t.encode()).digest(), p, now)
                                         for t, p in pairs))
            assert link.batches <= 2 and link.batched_keys == len(pairs), (link.batches, link.batched_keys)
            with psycopg.connect(rig["dsn"], autocommit=True) as conn:
                for (t, p), d in zip(pairs, got):
                    row = conn.execute(TOKEN_DECISION_SQL, (hashlib.sha256(t.encode()).digest(), p)).fetchone()
                    want = (None, None, None) if row is None else (str(row[0]), str(row[1]), row[2])
                    assert (d.account_id, d.token_id, d.role) == want, (t[:8], p)
            # the owner's decisions primed the routes: P and D without a route query, the unknown one a 404
            n = routes.lookups
            assert routes.resolve_now(P).port == rig["host"].port and routes.resolve_now(D).port == rig["backend"].port
            with pytest.raises(HttpError) as exc:
                routes.resolve_now(projects[-1])
            assert exc.value.status == 404 and routes.lookups == n == 0
        finally:
            await access.close()

    from cocalc_ctl.proxy.http1 import HttpError

    asyncio.run(main())


def test_metrics_show_access_decisions(rig):
    status, _, text = request(rig["hub"].port, "GET", "/metrics")
    assert status == 200
    for name in ("cocalc_proxy_auth_decisions_total_allowed", "cocalc_proxy_auth_lookups_total",
                 "cocalc_proxy_auth_cache_entries", "cocalc_proxy_auth_websockets_closed_total"):
        assert name.encode() in text
    assert os.environ.get("COCALC_CTL_PROXY_AUTH") is None


# -- proxy.auth: external and none ------------------------------------------------------------------------

class DecisionPoint:
    """A loopback auth_request/ForwardAuth endpoint: decides by the `sso` cookie, records what it got."""

    def __init__(self):
        import threading
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        seen = self.seen = []

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802
                seen.append((self.path, {k.lower(): v for k, v in self.headers.items()}))
                cookie = self.headers.get("Cookie", "")
                method = self.headers.get("X-Original-Method", "")
                if "sso=slow" in cookie:
                    time.sleep(3)
                if "sso=by-path" in cookie:  # a decision by the target
                    self.send_response(403 if "/admin" in self.headers.get("X-Original-URI", "") else 204)
                elif "sso=by-address" in cookie:  # a decision by the client's address, as forwarded
                    forwarded = self.headers.get("X-Forwarded-For", "")
                    self.send_response(204 if forwarded.startswith("198.51.100.") else 403)
                elif "sso=alice" in cookie or ("sso=reader" in cookie and method in ("GET", "HEAD")
                                               and not self.headers.get("X-Original-Upgrade")):
                    self.send_response(204)
                    self.send_header("X-Auth-User", cookie.split("sso=")[1].split(";")[0])
                    self.send_header("X-Not-Copied", "1")
                elif "sso=reader" in cookie:
                    self.send_response(403)
                elif "sso=broken" in cookie:
                    self.send_response(500)
                else:
                    self.send_response(401)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


def test_an_external_decision_by_path_or_address_is_never_reused_for_another(rig, tmp_path):
    """A cached decision answers only the very question it was given: a decision point that allows a
    path (or a client address) is asked again for another path (address), however long the cache lives;
    the very same request is answered from the cache."""
    dp = DecisionPoint()
    hub = None
    try:
        hub = start_proxy(tmp_path, "hub", {"data_dir": str(tmp_path / "hub"), "hub_dsn": rig["dsn"], "proxy": {
            "auth": "external", "auth_url": f"http://127.0.0.1:{dp.port}/check", "auth_cache_ttl": 3600,
            "trust_forwarded": ["127.0.0.1"]}})
        port = hub.port
        path = {"Cookie": "sso=by-path"}
        assert request(port, "GET", f"/{P}/info", path)[0] == 200
        asked = len(dp.seen)
        assert request(port, "GET", f"/{P}/info", path)[0] == 200
        assert len(dp.seen) == asked  # the same question: cached
        assert request(port, "GET", f"/{P}/admin", path)[0] == 403  # another target: asked, refused
        office = {"Cookie": "sso=by-address", "X-Forwarded-For": "198.51.100.7"}
        assert request(port, "GET", f"/{P}/info", office)[0] == 200
        assert dp.seen[-1][1]["x-forwarded-for"] == "198.51.100.7, 127.0.0.1"  # what the project gets too
        away = {"Cookie": "sso=by-address", "X-Forwarded-For": "203.0.113.9"}
        assert request(port, "GET", f"/{P}/info", away)[0] == 403  # another address: asked, refused
    finally:
        dp.close()
        if hub is not None:
            hub.stop()


def test_external_decision_point_allows_denies_copies_and_fails_closed(rig, tmp_path):
    dp = DecisionPoint()
    hub = None
    try:
        hub = start_proxy(tmp_path, "hub", {"data_dir": str(tmp_path / "hub"), "hub_dsn": rig["dsn"], "proxy": {
            "auth": "external", "auth_url": f"http://127.0.0.1:{dp.port}/check?svc=cocalc", "auth_timeout": 1,
            "auth_copy_headers": ["x-auth-user"], "auth_cache_ttl": 1}})
        port = hub.port
        assert request(port, "GET", f"/{P}/info")[0] == 401
        status, _, info = request(port, "GET", f"/{D}/info?q=1", {"Cookie": "sso=alice; other=1",
                                                                  "X-Auth-User": "mallory"})
        assert status == 200
        h = backend_headers(info)
        assert [v for k, v in h if k == "x-auth-user"] == ["alice"] and not [k for k, _ in h if k == "x-not-copied"]
        path, asked = dp.seen[-1]
        assert path == "/check?svc=cocalc"
        assert asked["x-original-method"] == "GET" and asked["x-original-uri"] == f"/{D}/info?q=1"
        assert asked["x-forwarded-uri"] == f"/{D}/info?q=1" and asked["cookie"] == "sso=alice; other=1"
        assert request(port, "GET", f"/{P}/info", {"Cookie": "sso=reader"})[0] == 200
        assert request(port, "POST", f"/{P}/info", {"Cookie": "sso=reader"}, body=b"x")[0] == 403
        status, s = upgrade(port, f"/{P}/ws", {"Cookie": "sso=reader"})
        s.close()
        assert status == 403
        status, s = upgrade(port, f"/{P}/ws", {"Cookie": "sso=alice"})
        s.close()
        assert status == 101
        assert request(port, "GET", f"/{P}/info", {"Cookie": "sso=broken"})[0] == 503
        t0 = time.monotonic()
        assert request(port, "GET", f"/{P}/info", {"Cookie": "sso=slow"})[0] == 503  # timeout: closed
        assert time.monotonic() - t0 < 2.9
        dp.close()
        dp = None
        assert request(port, "GET", f"/{P}/info", {"Cookie": "sso=nobody-asked"})[0] == 503  # unreachable
    finally:
        if dp is not None:
            dp.close()
        if hub is not None:
            hub.stop()


def test_auth_none_passes_everything_but_still_drops_client_identity_and_says_so(rig, tmp_path):
    hub = start_proxy(tmp_path, "hub", {"data_dir": str(tmp_path / "hub"), "hub_dsn": rig["dsn"],
                                        "proxy": {"auth": "none"}})
    try:
        assert "WARNING: proxy.auth is none" in hub.log()
        status, _, info = request(hub.port, "GET", f"/{D}/info", {"X-Cocalc-Account": "forged"})
        assert status == 200 and "forged" not in info.decode()
    finally:
        hub.stop()


def test_a_session_never_outlives_its_token_and_is_secure_for_https_clients(rig):
    """In-process Access on the real hub: an https client (per proxy.scheme) gets a Secure cookie whose
    Max-Age stops at the token's expiry."""
    from cocalc_ctl.proxy.access import Access, Answer
    from cocalc_ctl.proxy.http1 import parse_request_head
    from cocalc_ctl.proxy.hublink import HubLink

    token, _ = add_token(rig["dsn"], rig["acct"]["collab"], expires_in=600)
    head = parse_request_head([f"GET /{P}/x?token={token} HTTP/1.1".encode(), b"Host: h"])

    async def main():
        access = Access("builtin", link=HubLink(rig["dsn"], pool_size=1), scheme="https", session_ttl=86400)
        await access.start()
        try:
            return await access.check(head, P)
        finally:
            await access.close()

    answer = asyncio.run(main())
    assert isinstance(answer, Answer) and answer.status == 303
    cookie = next(line for line in answer.headers.split(b"\r\n") if line.startswith(b"set-cookie:")).decode()
    attrs = [a.strip() for a in cookie.split(";")]
    assert "Secure" in attrs and "HttpOnly" in attrs
    # path mode over https: __Secure- (a __Host- cookie must have Path=/, this one is the project's path)
    assert attrs[0].startswith("set-cookie: __Secure-cocalc_ctl_session=ccs_") and f"Path=/{P}/" in attrs
    max_age = int(next(a for a in attrs if a.startswith("Max-Age="))[8:])
    assert 500 < max_age <= 600
    assert token.encode() not in answer.headers


def test_a_change_while_the_listener_is_down_is_not_missed(rig):
    """The hub proxy's LISTEN connection is killed and a grant removed while it is gone: no NOTIFY
    reaches the proxy, yet the next request is refused (no cache while deaf, all dropped on reconnect)."""
    dsn, hub = rig["dsn"], rig["hub"].port
    aid = add_account(dsn, "deaf")
    grant(dsn, P, aid, "collaborator")
    token, _ = add_token(dsn, aid)
    assert request(hub, "GET", f"/{P}/info", bearer(token))[0] == 200  # cached for an hour now
    killed = sql(dsn, """SELECT pg_terminate_backend(pid) FROM pg_stat_activity
                         WHERE datname = current_database() AND query LIKE 'LISTEN %%'""")
    assert killed, "the hub proxy's LISTEN connection was not found"
    revoke_grant(dsn, P, aid)
    assert request(hub, "GET", f"/{P}/info", bearer(token))[0] == 403
    _until(lambda: len(sql(dsn, """SELECT 1 FROM pg_stat_activity WHERE datname = current_database()
                                   AND query LIKE 'LISTEN %%'""")) >= 1)
    grant(dsn, P, aid, "collaborator")  # and after the reconnect, NOTIFY works again
    _until(lambda: request(hub, "GET", f"/{P}/info", bearer(token))[0] == 200)


def test_a_flood_of_random_tokens_leaves_the_cached_decisions_of_a_real_proxy_alone(rig, tmp_path):
    """`proxy.auth_cache_size` through `proxy serve`: 400 random tokens and 400 random projects keep the
    decision cache within its bounds, and the decision in use is still answered without a query."""
    import re

    from cocalc_ctl.state.hub_access import new_token

    hub = start_proxy(tmp_path, "hub", {"data_dir": str(tmp_path / "hub"), "hub_dsn": rig["dsn"],
                                        "proxy": {"auth_cache_size": 32, "route_cache_size": 32,
                                                  "auth_cache_ttl": LONG, "route_cache_ttl": LONG}})

    def metric(name):
        text = request(hub.port, "GET", "/metrics")[2].decode()
        return float(re.search(rf"^{name} (\S+)$", text, re.M).group(1))

    try:
        owner = bearer(rig["tok"]["owner"])
        assert request(hub.port, "GET", f"/{P}/info", owner)[0] == 200
        lookups = metric("cocalc_proxy_auth_lookups_total")
        conn = http.client.HTTPConnection("127.0.0.1", hub.port, timeout=15)
        for i in range(400):
            for path, headers in ((f"/{P}/x", bearer(new_token())), (f"/{uuid.uuid4()}/x", owner)):
                conn.request("GET", path, headers=headers)
                resp = conn.getresponse()
                resp.read()
                assert resp.status in (401, 403)
        conn.close()
        assert metric("cocalc_proxy_auth_cache_entries") <= 32 + 16
        assert metric("cocalc_proxy_auth_lookups_total") == lookups + 800  # every random key a miss
        assert request(hub.port, "GET", f"/{P}/info", owner)[0] == 200
        assert metric("cocalc_proxy_auth_lookups_total") == lookups + 800  # ours still cached
    finally:
        hub.stop()


def test_concurrent_first_requests_of_one_token_through_the_proxy_cost_one_lookup(rig):
    """30 clients send the same new token at once while the hub is held up (a lock on `accounts`):
    one decision lookup serves them all, then all 30 are answered."""
    import re
    import threading

    import psycopg

    dsn, hub = rig["dsn"], rig["hub"].port
    aid = add_account(dsn, "crowd")
    grant(dsn, P, aid, "collaborator")
    token, _ = add_token(dsn, aid)
    request(hub, "GET", f"/{P}/info", bearer(rig["tok"]["owner"]))  # the route is cached

    def lookups():
        text = request(hub, "GET", "/metrics")[2].decode()
        return float(re.search(r"^cocalc_proxy_auth_lookups_total (\S+)$", text, re.M).group(1))

    before = lookups()
    statuses = []
    with psycopg.connect(dsn) as locker:
        locker.execute("LOCK TABLE accounts IN ACCESS EXCLUSIVE MODE")  # decision queries wait on it
        threads = [threading.Thread(target=lambda: statuses.append(
            request(hub, "GET", f"/{P}/info", bearer(token))[0])) for _ in range(30)]
        for t in threads:
            t.start()
        time.sleep(1.5)  # all 30 requests are in the proxy, waiting for the one lookup
        assert statuses == []
        locker.rollback()
    for t in threads:
        t.join(30)
    assert statuses == [200] * 30
    assert lookups() == before + 1
