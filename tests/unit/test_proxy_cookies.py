"""Set-Cookie hygiene (proxy/cookies.py) and which project a request addresses (routing.Addressing)."""

from __future__ import annotations

import pytest

from cocalc_ctl.proxy import cookies
from cocalc_ctl.proxy.http1 import HttpError, RequestHead
from cocalc_ctl.proxy.routing import Addressing

PID = "1b4e28ba-2fa1-41d2-883f-0016d3cca427"
SCOPE = f"/{PID}/".encode()


@pytest.mark.parametrize("given,expected", [
    (b"a=1", b"a=1; Path=" + SCOPE),                                        # absent: narrowed
    (b"a=1; Path=/", b"a=1; Path=" + SCOPE),                                 # broader
    (b"a=1; path=/other/", b"a=1; Path=" + SCOPE),                           # another project's
    (b"a=1; Path=relative", b"a=1; Path=" + SCOPE),                          # not absolute: default path
    (b"a=1; Path=" + SCOPE + b"lab", b"a=1; Path=" + SCOPE + b"lab"),        # inside: kept
    (b"a=1; Path=/" + PID.encode(), b"a=1; Path=/" + PID.encode()),          # the project itself: kept
    (b"a=1; Path=/" + PID.encode() + b"x", b"a=1; Path=" + SCOPE),           # a prefix, not inside
    (b"a=1; Domain=example.org; Secure; HttpOnly", b"a=1; Secure; HttpOnly; Path=" + SCOPE),
    (b"a=1; DOMAIN=.example.org; Path=" + SCOPE, b"a=1; Path=" + SCOPE),
    (b"a=1; Path=" + SCOPE + b"; Path=/", b"a=1; Path=" + SCOPE),            # the last Path wins: narrowed
    (b"a=1; Max-Age=5; SameSite=Lax", b"a=1; Max-Age=5; SameSite=Lax; Path=" + SCOPE),
])
def test_path_mode_drops_domain_and_narrows_path(given, expected):
    assert cookies.rewrite(given, SCOPE) == expected


@pytest.mark.parametrize("given", [
    b"cocalc_ctl_session=ccs_x; Path=/", b"cocalc_ctl_session=; Max-Age=0", b" cocalc_ctl_session =x",
    b"COCALC_CTL_SESSION=x", b"__Host-cocalc_ctl_session=x; Path=/; Secure", b"__Secure-cocalc_ctl_session=x",
    b"=cocalc_ctl_session=evil", b"cocalc_ctl_session",
    # every variant the proxy reads or strips, in any case, nameless or padded
    b"__host-cocalc_ctl_session=x; Path=/; Secure", b"__SECURE-COCALC_CTL_SESSION=x; Secure",
    b"=__Host-cocalc_ctl_session=x", b"=__Secure-cocalc_ctl_session=x", b"\t__Host-cocalc_ctl_session=x",
    b"__Host-cocalc_ctl_session=; Max-Age=0; Path=/; Secure",
])
def test_the_proxys_own_cookie_cannot_be_set_or_cleared(given):
    assert cookies.rewrite(given, SCOPE) is None
    assert cookies.rewrite(given, b"/") is None


def test_subdomain_mode_keeps_path_but_drops_domain():
    assert cookies.rewrite(b"a=1; Domain=example.org; Path=/", b"/") == b"a=1; Path=/"
    assert cookies.rewrite(b"a=1", b"/") == b"a=1"
    assert cookies.rewrite(b"cocalc_ctl_sessionx=1", b"/") == b"cocalc_ctl_sessionx=1"  # another name


def _head(target: bytes, host: bytes) -> RequestHead:
    h = RequestHead()
    h.method, h.target, h.host = b"GET", target, host
    return h


def test_addressing_in_path_mode():
    a = Addressing(None)
    assert a.project(_head(b"/" + PID.encode() + b"/x", b"anything")) == PID
    assert a.local(_head(b"/healthz", b"x")) and a.cookie_path(PID) == SCOPE


@pytest.mark.parametrize("host,status", [
    (b"example.org", 404), (b"other.net", 404), (b"127.0.0.1:8080", 404),
    (b"x." + PID.encode() + b".example.org", 400), (b"project.example.org", 400),
    (PID.encode() + b".example.org.", 400), (PID.replace("-", "").encode() + b".example.org", 400),
    (PID.encode()[:-1] + b".example.org", 400),
])
def test_subdomain_mode_refuses_other_hosts(host, status):
    with pytest.raises(HttpError) as exc:
        Addressing("example.org").project(_head(b"/x", host))
    assert exc.value.status == status


def test_subdomain_mode_routes_by_host_and_keeps_the_path():
    a = Addressing("example.org")
    assert a.project(_head(b"/lab/tree?x=1", PID.encode() + b".example.org:8443")) == PID
    assert a.project(_head(b"/", PID.upper().encode() + b".Example.ORG")) == PID  # DNS names: any case
    assert a.cookie_path(PID) is None
    assert a.local(_head(b"/metrics", b"example.org"))
    assert not a.local(_head(b"/metrics", PID.encode() + b".example.org"))  # the project's own /metrics
    for bad in (b"/a/../b", b"/%2e%2e/x", b"//evil", b"*", b"/a%2fb"):
        with pytest.raises(HttpError) as exc:
            a.project(_head(bad, PID.encode() + b".example.org"))
        assert exc.value.status == 400
