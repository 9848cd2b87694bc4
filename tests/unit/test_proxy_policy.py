"""The proxy's forwarding rules (cocalc_ctl/proxy/policy.py), one test per rule, no network."""

from __future__ import annotations

import pytest

from cocalc_ctl.proxy import policy
from cocalc_ctl.proxy.http1 import HttpError, UpstreamProtocolError, parse_request_head, parse_response_head

PID = "1b4e28ba-2fa1-41d2-883f-0016d3cca427"
UNTRUSTED = policy.Forwarding((), "http")
HUB = policy.Forwarding(("10.0.0.0/8",), "http")


def _req(text: bytes):
    return policy.parse_request(text.split(b"\r\n"))


def _fields(out: bytes) -> list[tuple[bytes, bytes]]:
    lines = out.split(b"\r\n")
    assert lines[-2:] == [b"", b""], out
    return [tuple(x.split(b": ", 1)) for x in lines[1:-2]]


def _names(out: bytes) -> list[bytes]:
    return [n.lower() for n, _ in _fields(out)]


def _up(raw: bytes, fwd=UNTRUSTED, trusted=False, peer=b"192.0.2.7") -> bytes:
    return policy.upstream_request_head(_req(raw), peer, b"8080", fwd, trusted)


# -- requests ---------------------------------------------------------------------------------

@pytest.mark.parametrize("conn", [b"content-length", b"Content-Length", b"close, CONTENT-LENGTH",
                                  b"transfer-encoding", b"keep-alive,Transfer-Encoding"])
def test_connection_naming_a_framing_field_is_refused(conn):
    with pytest.raises(HttpError) as info:
        _req(b"POST /%s/x HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nConnection: %s" % (PID.encode(), conn))
    assert info.value.status == 400


def test_connection_cannot_remove_host_forwarded_fields_or_the_upgrade():
    out = _up(b"GET /x HTTP/1.1\r\nHost: a\r\nConnection: host, x-forwarded-for, x-forwarded-host, x-private, "
              b"upgrade\r\nUpgrade: websocket\r\nX-Private: s\r\nX-Other: o")
    names = _names(out)
    assert names.count(b"host") == 1 and b"x-private" not in names and b"x-other" in names
    assert names.count(b"x-forwarded-for") == 1 and names.count(b"x-forwarded-host") == 1
    assert (b"upgrade", b"websocket") in _fields(out) and (b"connection", b"upgrade") in _fields(out)


def test_request_framing_is_re_emitted_from_the_parse_never_copied():
    out = _up(b"POST /x HTTP/1.1\r\nHost: a\r\nContent-Length: 007")
    assert [f for f in _fields(out) if f[0].lower() == b"content-length"] == [(b"content-length", b"7")]
    out = _up(b"POST /x HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: Chunked")
    assert [f for f in _fields(out) if f[0].lower() in policy.FRAMING] == [(b"transfer-encoding", b"chunked")]
    out = _up(b"GET /x HTTP/1.1\r\nHost: a")
    assert not set(_names(out)) & policy.FRAMING


@pytest.mark.parametrize("raw,status", [
    (b"CONNECT a:443 HTTP/1.1\r\nHost: a:443", 405),
    (b"TRACE /x HTTP/1.1\r\nHost: a", 405),
    (b"GET /x HTTP/1.1\r\nHost:", 400),
    (b"GET /x HTTP/1.1\r\nHost:   ", 400),
    (b"GET /x HTTP/1.0", 400),
    (b"GET /x HTTP/1.1\r\nHost: " + b"a" * (policy.MAX_HOST_BYTES + 1), 400),
    (b"POST /x HTTP/1.1\r\nHost: a\r\nTransfer-Encoding:\r\nTransfer-Encoding: chunked", 400),
    (b"POST /x HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: ,chunked", 400),
    (b"POST /x HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked,", 400),
])
def test_methods_and_host_refused(raw, status):
    with pytest.raises(HttpError) as info:
        _req(raw)
    assert info.value.status == status


def test_http10_with_host_is_accepted_and_forwarded_as_http11():
    out = _up(b"GET /x HTTP/1.0\r\nHost: a")
    assert out.startswith(b"GET /x HTTP/1.1\r\n") and (b"Host", b"a") in _fields(out)


def test_spoofing_fields_are_dropped_and_client_forwarded_for_is_replaced():
    out = _up(b"GET /x HTTP/1.1\r\nHost: a\r\nX-Forwarded-For: 6.6.6.6\r\nX-Forwarded-Proto: https\r\n"
              b"X-Forwarded-Host: evil\r\nX-Forwarded-Port: 1\r\nForwarded: for=6.6.6.6\r\nX-Real-IP: 6.6.6.6\r\n"
              b"X_Forwarded_Host: evil\r\nX-Forwarded_For: 6.6.6.6\r\nMy_Header: x\r\nX-Ok: y")
    f = dict((n.lower(), v) for n, v in _fields(out))
    assert f[b"x-forwarded-for"] == b"192.0.2.7" and f[b"x-forwarded-proto"] == b"http"
    assert f[b"x-forwarded-host"] == b"a" and f[b"x-forwarded-port"] == b"8080"
    names = _names(out)
    assert not any(b"_" in n for n in names) and b"forwarded" not in names and b"x-real-ip" not in names
    assert b"6.6.6.6" not in out and b"evil" not in out and f[b"x-ok"] == b"y"


def test_a_trusted_peer_keeps_its_forwarded_fields_and_gets_appended():
    out = _up(b"GET /x HTTP/1.1\r\nHost: a\r\nX-Forwarded-For: 198.51.100.1\r\nX-Forwarded-For: 198.51.100.2\r\n"
              b"X-Forwarded-Proto: https\r\nX-Forwarded-Host: hub.example\r\nX-Forwarded-Port: 443\r\n"
              b"X-Real-IP: 6.6.6.6\r\nX_Forwarded_For: 6.6.6.6", fwd=HUB, trusted=True, peer=b"10.1.2.3")
    f = dict((n.lower(), v) for n, v in _fields(out))
    assert f[b"x-forwarded-for"] == b"198.51.100.1, 198.51.100.2, 10.1.2.3"
    assert (f[b"x-forwarded-proto"], f[b"x-forwarded-host"], f[b"x-forwarded-port"]) == (b"https", b"hub.example", b"443")
    assert b"6.6.6.6" not in out


def test_forwarding_trust_is_by_address_and_network():
    fwd = policy.Forwarding(("10.0.0.0/8", "192.0.2.1", "2001:db8::/32"))
    assert fwd.trusted("10.200.0.1") and fwd.trusted("192.0.2.1") and fwd.trusted("2001:db8::5")
    assert fwd.trusted("::ffff:10.0.0.1")  # IPv4-mapped, as a dual-stack listener reports it
    assert not fwd.trusted("192.0.2.2") and not fwd.trusted("11.0.0.1") and not fwd.trusted("-")
    assert not UNTRUSTED.trusted("127.0.0.1")


def test_what_the_hub_accepts_the_host_accepts():
    """A head at the hub's limits, re-emitted by the hub, fits the host's limits for its trusted hub."""
    max_bytes, max_fields = 8192, 20
    host = b"h" * policy.MAX_HOST_BYTES
    lines = [b"GET /" + PID.encode() + b"/x HTTP/1.1", b"Host: " + host]
    while len(lines) < max_fields + 1:
        lines.append(b"X-F%d: v" % len(lines))
    lines[-1] += b"v" * (max_bytes - sum(len(x) + 2 for x in lines) - 2)
    assert sum(len(x) + 2 for x in lines) + 2 == max_bytes
    head = policy.parse_request(lines)
    out = policy.upstream_request_head(head, b"2001:db8:ffff:ffff:ffff:ffff:ffff:ffff", b"65535", UNTRUSTED, False)
    host_bytes, host_fields = policy.request_limits(max_bytes, max_fields, True)
    assert len(out) <= host_bytes
    assert len(out.split(b"\r\n")) - 3 <= host_fields
    assert policy.request_limits(max_bytes, max_fields, False) == (max_bytes, max_fields)


# -- responses --------------------------------------------------------------------------------

def _resp(*lines: bytes):
    return parse_response_head([*lines])


@pytest.mark.parametrize("conn", [b"content-length", b"Transfer-Encoding", b"close, content-length"])
def test_response_connection_naming_framing_is_a_502(conn):
    with pytest.raises(UpstreamProtocolError):
        policy.check_response(_req(b"GET /x HTTP/1.1\r\nHost: a"),
                              _resp(b"HTTP/1.1 200 OK", b"Content-Length: 2", b"Connection: " + conn))


def test_interim_responses_not_asked_for_are_a_502():
    plain = _req(b"GET /x HTTP/1.1\r\nHost: a")
    expect = _req(b"POST /x HTTP/1.1\r\nHost: a\r\nContent-Length: 1\r\nExpect: 100-continue")
    upgrade = _req(b"GET /x HTTP/1.1\r\nHost: a\r\nConnection: upgrade\r\nUpgrade: websocket")
    for head, status in ((plain, 101), (plain, 100), (plain, 103), (expect, 101), (expect, 102), (upgrade, 100)):
        with pytest.raises(UpstreamProtocolError):
            policy.check_response(head, _resp(b"HTTP/1.1 %d X" % status))
    policy.check_response(expect, _resp(b"HTTP/1.1 100 Continue"))
    with pytest.raises(UpstreamProtocolError):  # a second one
        policy.check_response(expect, _resp(b"HTTP/1.1 100 Continue"), interim_seen=1)
    policy.check_response(upgrade, _resp(b"HTTP/1.1 101 Switching Protocols"))


def test_response_transfer_codings_other_than_chunked_are_refused():
    for te in (b"gzip", b"gzip, chunked", b"chunked, chunked", b"identity", b",chunked", b""):
        with pytest.raises(UpstreamProtocolError):
            _resp(b"HTTP/1.1 200 OK", b"Transfer-Encoding: " + te)
    both = _resp(b"HTTP/1.1 200 OK", b"Transfer-Encoding: chunked", b"Content-Length: 3", b"Connection: keep-alive")
    assert both.chunked and both.keep_alive is False  # never pooled after that anomaly
    both10 = _resp(b"HTTP/1.0 200 OK", b"Transfer-Encoding: chunked", b"Content-Length: 3", b"Connection: keep-alive")
    assert both10.keep_alive is False


def test_response_framing_is_re_emitted_never_copied():
    head = _req(b"GET /x HTTP/1.1\r\nHost: a")
    resp = _resp(b"HTTP/1.1 200 OK", b"Content-Length: 5, 005", b"Connection: x-secret", b"X-Secret: 1", b"X-Keep: 2")
    mode, chunked_out, keep, reusable = policy.plan_response(head, resp)
    assert (mode, chunked_out, keep, reusable) == (policy.FIXED, False, True, True)
    out = policy.client_response_head(resp, mode, chunked_out, keep)
    assert _fields(out) == [(b"X-Keep", b"2"), (b"content-length", b"5")]
    chunked = _resp(b"HTTP/1.1 200 OK", b"Transfer-Encoding: chunked")
    mode, chunked_out, keep, reusable = policy.plan_response(head, chunked)
    assert _fields(policy.client_response_head(chunked, mode, chunked_out, keep)) == [(b"transfer-encoding", b"chunked")]
    # HTTP/1.0 client: raw body delimited by close
    head10 = _req(b"GET /x HTTP/1.0\r\nHost: a")
    mode, chunked_out, keep, _ = policy.plan_response(head10, chunked)
    assert _fields(policy.client_response_head(chunked, mode, chunked_out, keep)) == [(b"connection", b"close")]


def test_body_less_answers_carry_no_framing_except_the_stated_length():
    get = _req(b"GET /x HTTP/1.1\r\nHost: a")
    head_req = _req(b"HEAD /x HTTP/1.1\r\nHost: a")
    r204 = _resp(b"HTTP/1.1 204 No Content", b"Content-Length: 10", b"Transfer-Encoding: chunked")
    assert _fields(policy.client_response_head(r204, *policy.plan_response(get, r204)[:3])) == []
    r = _resp(b"HTTP/1.1 200 OK", b"Content-Length: 10")
    assert policy.plan_response(head_req, r)[0] == policy.NONE
    assert _fields(policy.client_response_head(r, *policy.plan_response(head_req, r)[:3])) == [
        (b"content-length", b"10")]
    until_close = _resp(b"HTTP/1.1 200 OK")
    assert policy.plan_response(get, until_close)[3] is False  # never reusable


def test_oversized_response_heads_are_refused():
    with pytest.raises(UpstreamProtocolError):
        policy.parse_response_lines(b"HTTP/1.1 200 OK" + b"\r\nX: y" * (policy.RESPONSE_ACCEPT_FIELDS + 1))
    with pytest.raises(UpstreamProtocolError):
        policy.parse_response_lines(b"HTTP/1.1 200 OK\r\nX: " + b"y" * policy.RESPONSE_ACCEPT_BYTES)
    # accepted as received but too large once re-emitted: refused too, so the next proxy agrees
    resp = policy.parse_response_lines(b"HTTP/1.1 200 OK" + b"\r\nX: y" * (policy.RESPONSE_MAX_FIELDS + 1))
    with pytest.raises(UpstreamProtocolError):
        policy.client_response_head(resp, policy.NONE, False, True)


def test_http1_still_parses_http10_without_host_for_the_policy_to_refuse():
    assert parse_request_head([b"GET /x HTTP/1.0"]).host == b""


# -- config -----------------------------------------------------------------------------------

def test_trust_forwarded_config_is_a_validated_address_list():
    from cocalc_ctl.config import _as_trusted_proxies

    assert _as_trusted_proxies(["10.0.0.5", "10.1.0.0/16", "::1"]) == ("10.0.0.5/32", "10.1.0.0/16", "::1/128")
    assert _as_trusted_proxies("10.0.0.5, 192.0.2.0/24") == ("10.0.0.5/32", "192.0.2.0/24")
    assert _as_trusted_proxies(False) == () and _as_trusted_proxies([]) == ()
    for bad in (True, ["hub.example"], ["10.0.0.1/33"], "10.0.0.1;rm"):
        with pytest.raises(ValueError):
            _as_trusted_proxies(bad)
