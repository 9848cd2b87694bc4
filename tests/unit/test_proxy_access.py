"""Hub-mode access control, the parts that need no database: reading credentials from a request head,
the login redirect's target, the bounded caches and single flight, the config keys."""

from __future__ import annotations

import asyncio
import uuid

import pytest

from cocalc_ctl.proxy import access, policy
from cocalc_ctl.proxy import access as access_mod
from cocalc_ctl.proxy.http1 import parse_request_head
from cocalc_ctl.proxy.lru import LRU, SingleFlight, SplitCache

PID = "11111111-1111-4111-8111-111111111111"
TOKEN = "cct_" + "A" * 43
SESSION = "ccs_" + "b" * 43


def head(*fields: str, method: str = "GET", target: str = f"/{PID}/x"):
    return parse_request_head([f"{method} {target} HTTP/1.1".encode(), b"Host: h",
                               *(f.encode() for f in fields)])


def upstream(h, p) -> bytes:
    drop, extra = access.Pass(access.Decision(0, PID, extra=b"x-cocalc-account: A\r\n"), p).forward()
    return policy.upstream_request_head(h, b"1.2.3.4", b"80", policy.Forwarding(), False, extra, drop)


def test_bearer_token_is_read_and_stripped():
    h = head(f"Authorization: Bearer {TOKEN}", "X-Cocalc-Account: evil", "X-Cocalc-Hub-Auth: v1.x")
    p = access.present(h)
    assert (p.kind, p.secret, p.login, p.answer) == ("token", TOKEN.encode(), False, None)
    out = upstream(h, p)
    assert TOKEN.encode() not in out and b"evil" not in out and b"v1.x" not in out
    assert out.count(b"x-cocalc-account") == 1 and b"x-cocalc-account: A\r\n" in out


def test_session_cookie_is_read_and_removed_from_the_cookie_header_only():
    h = head(f"Cookie: a=1; cocalc_ctl_session={SESSION}; b=2", "Cookie: c=3")
    p = access.present(h)
    assert (p.kind, p.secret) == ("session", SESSION.encode())
    out = upstream(h, p)
    assert SESSION.encode() not in out
    assert b"cookie: a=1; b=2; c=3\r\n" in out and out.count(b"ookie:") == 1


def test_a_cookie_header_that_only_held_the_session_is_dropped():
    h = head(f"Cookie: cocalc_ctl_session={SESSION}")
    assert b"ookie" not in upstream(h, access.present(h))


def test_bearer_wins_over_the_cookie_and_both_are_stripped():
    h = head(f"Cookie: cocalc_ctl_session={SESSION}", f"Authorization: Bearer {TOKEN}")
    p = access.present(h)
    assert p.secret == TOKEN.encode()
    out = upstream(h, p)
    assert TOKEN.encode() not in out and SESSION.encode() not in out


def test_another_authorization_scheme_belongs_to_the_project():
    h = head("Authorization: token jupyter", f"Cookie: cocalc_ctl_session={SESSION}")
    p = access.present(h)
    assert p.kind == "session"
    assert b"Authorization: token jupyter\r\n" in upstream(h, p)


@pytest.mark.parametrize("fields", [
    ("Authorization: Bearer cct_short",),
    ("Authorization: Bearer cct_" + "A" * 42 + "=",),
    ("Authorization: Bearer cct_" + "A" * 44,),
    ("Cookie: cocalc_ctl_session=ccs_" + "!" * 43,),
])
def test_misshapen_credentials_are_refused_without_a_lookup(fields):
    assert access.present(head(*fields)).answer is access.UNAUTHENTICATED


def test_two_authorization_headers_are_refused():
    p = access.present(head(f"Authorization: Bearer {TOKEN}", "Authorization: Basic eA=="))
    assert p.answer.status == 400


def test_login_token_in_the_query_only_on_get_and_head():
    for method in ("GET", "HEAD"):
        p = access.present(head(method=method, target=f"/{PID}/x?a=1&token={TOKEN}"))
        assert p.login and p.secret == TOKEN.encode()
    for method in ("POST", "PUT", "DELETE", "OPTIONS"):
        assert access.present(head(method=method, target=f"/{PID}/x?token={TOKEN}")).answer is access.LOGIN_METHOD
    up = head("Upgrade: websocket", "Connection: upgrade", target=f"/{PID}/ws?token={TOKEN}")
    assert access.present(up).answer is access.LOGIN_METHOD
    assert not access.present(head(target=f"/{PID}/x?mytoken=cct_1&tokens=cct_2")).login


def test_a_token_parameter_that_is_not_ours_belongs_to_the_project():
    """Jupyter's own login link is `/lab?token=<its token>`: not a credential of ours, and passed on."""
    h = head(f"Authorization: Bearer {TOKEN}", method="POST", target=f"/{PID}/lab?token=abc123")
    p = access.present(h)
    assert (p.kind, p.secret, p.login, p.answer) == ("token", TOKEN.encode(), False, None)
    assert access.present(head(target=f"/{PID}/lab?token=cct_short")).answer is access.UNAUTHENTICATED


@pytest.mark.parametrize("target,expected", [
    (f"/{PID}/x?token={TOKEN}", f"/{PID}/x"),
    (f"/{PID}/x?a=1&token={TOKEN}&b=2", f"/{PID}/x?a=1&b=2"),
    (f"/{PID}/x?token={TOKEN}&token=cct_other", f"/{PID}/x"),
    (f"/{PID}/x?a=token&token={TOKEN}", f"/{PID}/x?a=token"),
    (f"/{PID}/lab?token=jupyter&token={TOKEN}", f"/{PID}/lab?token=jupyter"),
    (f"/{PID}/", f"/{PID}/"),
])
def test_login_redirect_target_has_no_token(target, expected):
    assert access.without_token(target.encode()) == expected.encode()


def test_client_scheme_comes_from_a_trusted_peer_only():
    h = head("X-Forwarded-Proto: https")
    assert access.client_scheme(h, True, b"http") == b"https"
    assert access.client_scheme(h, False, b"http") == b"http"


@pytest.mark.parametrize("url,ok", [("http://127.0.0.1:9000/auth", True), ("https://auth.example/check?x=1", True),
                                    ("http://[::1]:80/", True), ("ftp://x/", False), ("http://a b/", False),
                                    ("http://h:99999/", False), ("http://h/#frag", False), ("", False)])
def test_auth_url_is_validated(url, ok):
    if ok:
        access.parse_auth_url(url)
    else:
        with pytest.raises(ValueError):
            access.parse_auth_url(url)


def test_config_keys_are_validated(tmp_path):
    from cocalc_ctl import config
    from cocalc_ctl.errors import ConfigError

    (tmp_path / "none.yaml").write_text("{}\n")

    ok = config.load(env={"COCALC_CTL_PROXY_AUTH": "external", "COCALC_CTL_PROXY_AUTH_URL": "http://127.0.0.1:1/a",
                          "COCALC_CTL_PROXY_AUTH_COPY_HEADERS": "X-Auth-User, x-auth-groups"},
                     path=str(tmp_path / "none.yaml"))
    assert ok["proxy.auth_copy_headers"] == ("x-auth-user", "x-auth-groups") and ok["proxy.auth"] == "external"
    for key, bad in (("PROXY_AUTH", "open"), ("PROXY_AUTH_URL", "file:///etc/passwd"),
                     ("PROXY_AUTH_COPY_HEADERS", "x-forwarded-for"), ("PROXY_AUTH_COPY_HEADERS", "authorization"),
                     ("PROXY_AUTH_COPY_HEADERS", "bad header"), ("PROXY_AUTH_CACHE_SIZE", "0")):
        with pytest.raises(ConfigError):
            config.load(env={f"COCALC_CTL_{key}": bad}, path=str(tmp_path / "none.yaml"))


# -- caches -----------------------------------------------------------------------------------------------

def test_lru_evicts_the_least_recently_used():
    c = LRU(3)
    for k in "abc":
        c.put(k, k)
    c.get("a")
    c.put("d", "d")
    assert sorted(c.d) == ["a", "c", "d"]


def test_split_cache_negatives_never_evict_positives():
    c = SplitCache(4, 2)
    for i in range(4):
        c.put(f"good{i}", i, positive=True)
    for i in range(1000):
        c.put(f"bad{i}", -1, positive=False)
    assert len(c.pos) == 4 and len(c.neg) == 2 and c.get("good0") == 0
    c.put("good0", -1, positive=False)  # an entry changes side: not in both
    assert c.pos.get("good0") is None and c.get("good0") == -1


async def settle():
    for _ in range(10):
        await asyncio.sleep(0)


def test_single_flight_shares_one_call_and_forget_starts_a_fresh_one():
    async def main():
        sf = SingleFlight()
        gate = asyncio.Event()
        calls = []

        async def lookup():
            calls.append(1)
            await gate.wait()
            return len(calls)

        waiters = [asyncio.ensure_future(sf.run("k", lookup)) for _ in range(20)]
        await settle()
        assert len(calls) == 1
        sf.forget("k")  # an invalidation: later callers must not join the old lookup
        late = asyncio.ensure_future(sf.run("k", lookup))
        await settle()
        gate.set()
        results = await asyncio.gather(*waiters)
        assert len(calls) == 2 and sf.started == 2
        assert set(results) <= {1, 2} and await late == 2
        # a waiter that is cancelled does not cancel the lookup the others share
        gate.clear()
        a = asyncio.ensure_future(sf.run("j", lookup))
        b = asyncio.ensure_future(sf.run("j", lookup))
        await settle()
        a.cancel()
        gate.set()
        assert await b == 3

    asyncio.run(main())


def test_an_unreachable_hub_fails_closed():
    """No database: every credential gets 503 (nothing is forwarded), routes 503, within the timeout."""
    import time

    from cocalc_ctl.proxy.http1 import HttpError
    from cocalc_ctl.proxy.hublink import HubLink
    from cocalc_ctl.proxy.routing import HubRoutes

    async def main():
        from psycopg_pool import AsyncConnectionPool

        from cocalc_ctl.errors import OperationFailed

        dsn = "host=/nonexistent-socket-dir dbname=x"
        with pytest.raises(OperationFailed, match="cannot reach the hub database"):
            await HubLink(dsn, pool_size=1, connect_timeout=1).start()  # at start: a one-line error
        # the hub going away after start: a pool that cannot connect
        link = HubLink(dsn, pool_size=1, connect_timeout=1)
        link.pool = AsyncConnectionPool(dsn, min_size=1, max_size=1, open=False, timeout=1)
        await link.pool.open(wait=False)
        access = access_mod.Access("builtin", link=link)
        routes = HubRoutes(link)
        try:
            t = time.monotonic()
            v = await access.check(head(f"Authorization: Bearer {TOKEN}"), PID)
            assert v.status == 503 and not isinstance(v, access_mod.Pass)
            login = await access.check(head(target=f"/{PID}/x?token={TOKEN}"), PID)
            assert login.status == 503
            with pytest.raises(HttpError) as exc:
                await routes.resolve(PID)
            assert exc.value.status == 503
            assert time.monotonic() - t < 15
            assert not link.listening and len(access.cache) == 0
        finally:
            await link.pool.close()

    asyncio.run(main())


def test_psycopg_pool_is_imported_by_hub_mode_only():
    import subprocess
    import sys

    code = ("import sys\n"
            "import cocalc_ctl.proxy.server, cocalc_ctl.proxy.fastpath, cocalc_ctl.proxy.access\n"
            "import cocalc_ctl.actions.proxy.serve, cocalc_ctl.config\n"
            "from cocalc_ctl.proxy.routing import HostRoutes\n"
            "assert 'psycopg_pool' not in sys.modules\n"
            "from cocalc_ctl.proxy.hublink import HubLink\n"
            "import asyncio\n"
            "async def go():\n"
            "    try:\n"
            "        await HubLink('host=/nonexistent dbname=x', connect_timeout=1).start()\n"
            "    except Exception:\n"
            "        pass\n"
            "asyncio.run(go())\n"
            "assert 'psycopg_pool' in sys.modules\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr


SESSION2, SESSION3, SESSION4 = ("ccs_" + c * 43 for c in "cde")


def test_up_to_three_session_cookies_are_tried_in_the_order_sent_and_all_are_stripped():
    """A cookie planted with a parent Domain or a longer Path comes first: it must not shadow the
    client's own, yet one request may cost no more than MAX_SESSIONS lookups."""
    h = head(f"Cookie: cocalc_ctl_session={SESSION}; a=1; cocalc_ctl_session=ccs_bad",
             f"Cookie: cocalc_ctl_session={SESSION2}; cocalc_ctl_session={SESSION3}; cocalc_ctl_session={SESSION4}")
    p = access.present(h)
    assert p.kind == "session" and p.sessions == (SESSION.encode(), SESSION2.encode())  # 3 read, 1 misshapen
    assert access.MAX_SESSIONS == 3
    out = upstream(h, p)
    assert b"ccs_" not in out and b"cookie: a=1\r\n" in out


def test_only_the_cookie_name_of_the_scheme_and_mode_is_read_and_every_variant_is_stripped():
    assert access.cookie_name(False, False) == access.cookie_name(False, True) == b"cocalc_ctl_session"
    assert access.cookie_name(True, True) == b"__Host-cocalc_ctl_session"
    assert access.cookie_name(True, False) == b"__Secure-cocalc_ctl_session"
    h = head(f"Cookie: cocalc_ctl_session={SESSION}; __Secure-cocalc_ctl_session={SESSION2}; "
             f"__Host-cocalc_ctl_session={SESSION3}; __host-cocalc_ctl_session={SESSION4}; b=2")
    assert access.present(h, b"__Host-cocalc_ctl_session").sessions == (SESSION3.encode(),)
    assert access.present(h, b"__Secure-cocalc_ctl_session").sessions == (SESSION2.encode(),)
    assert access.present(h).sessions == (SESSION.encode(),)
    for name in (b"cocalc_ctl_session", b"__Host-cocalc_ctl_session", b"__Secure-cocalc_ctl_session"):
        out = upstream(h, access.present(h, name))
        assert b"ccs_" not in out and b"cookie: b=2\r\n" in out
    # over https in subdomain mode a bare-named cookie (which a sibling subdomain can plant) is no credential
    only_bare = head(f"Cookie: cocalc_ctl_session={SESSION}")
    assert access.present(only_bare, b"__Host-cocalc_ctl_session").kind is None


def _cached(acc, digest_of: str, project: str, decision):
    import hashlib
    import time

    decision.deadline = time.monotonic() + 60
    acc.cache.put((hashlib.sha256(digest_of.encode()).digest(), project), decision,
                  positive=decision.role is not None)


def test_a_refused_first_session_does_not_shadow_an_accepted_second_one():
    class Link:
        listening = True

        def subscribe(self, *a):
            pass

    acc = access.Access("builtin", link=Link())
    _cached(acc, SESSION, PID, access.Decision(0, PID))  # unknown session: 401 on its own
    _cached(acc, SESSION2, PID, access.Decision(0, PID, "acct", "tok", "collaborator"))
    h = head(f"Cookie: cocalc_ctl_session={SESSION}; cocalc_ctl_session={SESSION2}")
    v = acc.check_now(h, PID)
    assert isinstance(v, access.Pass) and v.decision.account_id == "acct"
    # refused by every candidate: the first one's refusal
    _cached(acc, SESSION3, PID, access.Decision(0, PID, "other", "tok2", None))
    v = acc.check_now(head(f"Cookie: cocalc_ctl_session={SESSION3}; cocalc_ctl_session={SESSION}"), PID)
    assert v is access.FORBIDDEN
    # a candidate not decided yet needs a lookup before a later one may count
    assert acc.check_now(head(f"Cookie: cocalc_ctl_session={SESSION4}; cocalc_ctl_session={SESSION2}"), PID) is None


def test_a_flood_of_lookups_for_one_token_sends_its_last_used_time_once_a_minute():
    """Every decision lookup that finds a token used to queue a last-used UPDATE: random project ids
    with one valid token cost two round trips per request. Now one per token per TOUCH_EVERY."""
    from cocalc_ctl.state.hub_access import TOUCH_TOKEN_SQL

    sent = []

    class Link:
        listening = True

        def subscribe(self, *a):
            pass

        async def fetchone(self, sql, params):
            if sql == TOUCH_TOKEN_SQL:
                sent.append(params)
                return None
            return ("acct", "tok-1", None, None)  # authenticated, no grant on this project: 403

    async def main():
        acc = access.Access("builtin", link=Link())
        t0 = 1000.0
        for i in range(50):
            await acc._lookup("token", b"d" * 32, str(uuid.uuid4()), t0 + i * 0.1)
        await asyncio.sleep(0)
        assert sent == [("tok-1",)]
        await acc._lookup("token", b"d" * 32, PID, t0 + access.TOUCH_EVERY + 1)
        await asyncio.sleep(0)
        assert sent == [("tok-1",), ("tok-1",)]

    asyncio.run(main())
