"""The request and response corpus of the differential framing suite.

Requests are raw bytes with `{P}` for the project prefix (`/<project id>` of the rig's first
project), substituted when a case is added. Every case is (id, family, bytes); the family names the kind of trick and is what the
README's table of differences from nginx is keyed by. Generated variants use a fixed seed, so a
failing case id names the same bytes in every run.

Responses are scripts for the recording backend (see recording_backend.py): raw bytes it writes
when a request for `/script/<id>` arrives, and what a correct proxy must make of them.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from tests.support.framing_rig import P1

P = b"/" + P1.encode()  # `{P}` in the byte strings below
SMUGGLED = b"GET %s/smuggled HTTP/1.1\r\nHost: x\r\n\r\n" % P
SMUGGLED_POST = b"POST %s/smuggled HTTP/1.1\r\nHost: x\r\nContent-Length: 40\r\n\r\n" % P

# every standard request field (RFC 9110/9111/9112, CORS, fetch metadata, WebSocket) plus the
# forwarding ones; `Connection:` naming any of them, in any case, alone or together, must not
# change framing or routing
STANDARD_FIELDS = [
    "Accept", "Accept-Charset", "Accept-Encoding", "Accept-Language", "Authorization", "Cache-Control",
    "Connection", "Content-Encoding", "Content-Language", "Content-Length", "Content-Location", "Content-Range",
    "Content-Type", "Cookie", "Date", "Expect", "From", "Host", "If-Match", "If-Modified-Since", "If-None-Match",
    "If-Range", "If-Unmodified-Since", "Keep-Alive", "Max-Forwards", "Origin", "Pragma", "Proxy-Authorization",
    "Range", "Referer", "TE", "Trailer", "Transfer-Encoding", "Upgrade", "User-Agent", "Via", "Forwarded",
    "X-Forwarded-For", "X-Forwarded-Host", "X-Forwarded-Proto", "X-Forwarded-Port", "X-Real-IP",
    "Sec-WebSocket-Key", "Sec-WebSocket-Version", "Sec-Fetch-Site", "Close", "Digest", "Priority",
]


@dataclass(frozen=True)
class Case:
    id: str
    family: str
    data: bytes


def _cases() -> list[Case]:
    out: list[Case] = []
    seen: set[str] = set()

    def add(family: str, name: str, data: bytes) -> None:
        cid = f"{family}.{name}"
        assert cid not in seen, cid
        seen.add(cid)
        out.append(Case(cid, family, data.replace(b"{P}", P)))

    post = b"POST {P}/up HTTP/1.1\r\nHost: x\r\n"
    get_next = b"GET {P}/next HTTP/1.1\r\nHost: x\r\n\r\n"

    # -- baseline: well-formed messages and pipelines -----------------------------------------
    add("valid", "get", b"GET {P}/a HTTP/1.1\r\nHost: x\r\n\r\n")
    add("valid", "head", b"HEAD {P}/a HTTP/1.1\r\nHost: x\r\n\r\n")
    add("valid", "post-cl", post + b"Content-Length: 5\r\n\r\nhello")
    add("valid", "post-cl0", post + b"Content-Length: 0\r\n\r\n")
    add("valid", "post-chunked", post + b"Transfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n")
    add("valid", "pipeline-3", b"GET {P}/1 HTTP/1.1\r\nHost: x\r\n\r\n" + post + b"Content-Length: 3\r\n\r\nabc"
        + b"GET {P}/3 HTTP/1.1\r\nHost: x\r\n\r\n")
    add("valid", "pipeline-chunked-then-get", post + b"Transfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n" + get_next)
    add("valid", "close-then-bytes", b"GET {P}/a HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n" + get_next)
    add("valid", "http10-host", b"GET {P}/a HTTP/1.0\r\nHost: x\r\n\r\n")
    add("valid", "http10-keepalive-pipeline", b"GET {P}/a HTTP/1.0\r\nHost: x\r\nConnection: keep-alive\r\n\r\n"
        + get_next)
    add("valid", "options", b"OPTIONS {P}/a HTTP/1.1\r\nHost: x\r\n\r\n")
    add("valid", "delete-chunked", b"DELETE {P}/a HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"1\r\nz\r\n0\r\n\r\n")
    add("valid", "get-with-body", b"GET {P}/a HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\n\r\nbody" + get_next)
    add("valid", "head-with-body", b"HEAD {P}/a HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\n\r\nbody" + get_next)
    add("valid", "custom-method", b"PROPFIND {P}/a HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\n<>")
    add("valid", "obs-text-value", b"GET {P}/a HTTP/1.1\r\nHost: x\r\nX-A: caf\xe9\r\n\r\n")
    add("valid", "empty-value", b"GET {P}/a HTTP/1.1\r\nHost: x\r\nX-Empty:\r\n\r\n")
    add("valid", "tab-in-value", b"GET {P}/a HTTP/1.1\r\nHost: x\r\nX-A: a\tb\r\n\r\n")
    add("valid", "long-target", b"GET {P}/" + b"a" * 3000 + b" HTTP/1.1\r\nHost: x\r\n\r\n")
    add("valid", "query", b"GET {P}/a?x=1&y=%20 HTTP/1.1\r\nHost: x\r\n\r\n")
    add("valid", "te-uppercase", post + b"Transfer-Encoding: CHUNKED\r\n\r\n1\r\nz\r\n0\r\n\r\n" + get_next)
    add("valid", "cl-leading-zeros", post + b"Content-Length: 005\r\n\r\nhello" + get_next)

    # -- CL.TE / TE.CL ---------------------------------------------------------------------------
    add("cl-te", "classic", post + b"Content-Length: 6\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nX")
    add("cl-te", "smuggle-get", post + b"Content-Length: %d\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n%s"
        % (5 + len(SMUGGLED), SMUGGLED))
    add("te-cl", "classic", post + b"Transfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n8\r\nSMUGGLED\r\n0\r\n\r\n")
    add("te-cl", "smuggle-get", post + b"Transfer-Encoding: chunked\r\nContent-Length: 4\r\n\r\n%x\r\n%s"
        b"\r\n0\r\n\r\n" % (len(SMUGGLED), SMUGGLED))
    add("cl-te", "cl0-te", post + b"Content-Length: 0\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n" + get_next)

    # -- TE.TE obfuscations (each with and without a Content-Length beside it) ------------------
    te_variants = {
        "space-before-colon": b"Transfer-Encoding : chunked",
        "tab-before-colon": b"Transfer-Encoding\t: chunked",
        "leading-space-value": b"Transfer-Encoding:  chunked",
        "tab-value": b"Transfer-Encoding:\tchunked",
        "trailing-space": b"Transfer-Encoding: chunked ",
        "vtab": b"Transfer-Encoding:\x0bchunked",
        "formfeed": b"Transfer-Encoding: \x0cchunked",
        "xchunked": b"Transfer-Encoding: xchunked",
        "chunked-x": b"Transfer-Encoding: chunkedx",
        "chunk": b"Transfer-Encoding: chunk",
        "quoted": b'Transfer-Encoding: "chunked"',
        "identity-chunked": b"Transfer-Encoding: identity, chunked",
        "chunked-identity": b"Transfer-Encoding: chunked, identity",
        "gzip-chunked": b"Transfer-Encoding: gzip, chunked",
        "chunked-chunked": b"Transfer-Encoding: chunked, chunked",
        "two-fields": b"Transfer-Encoding: chunked\r\nTransfer-Encoding: x",
        "two-fields-rev": b"Transfer-Encoding: x\r\nTransfer-Encoding: chunked",
        "empty-then-chunked": b"Transfer-Encoding:\r\nTransfer-Encoding: chunked",
        "param": b"Transfer-Encoding: chunked;q=1.0",
        "comma-lead": b"Transfer-Encoding: ,chunked",
        "underscore-name": b"Transfer_Encoding: chunked",
        "obs-fold": b"Transfer-Encoding:\r\n chunked",
        "fold-after": b"Transfer-Encoding: chunked\r\n x",
        "x-prefix-line": b"X: y\nTransfer-Encoding: chunked",
        "nul-value": b"Transfer-Encoding: chunked\x00",
        "cr-value": b"Transfer-Encoding: chunked\r",
        "mixedcase-name": b"tRaNsFeR-eNcOdInG: chunked",
        "unicode-k": b"Transfer-Encoding: chun\xe2\x84\xaaed",
        "leading-ws-line": b" Transfer-Encoding: chunked",
    }
    for name, line in te_variants.items():
        body = b"0\r\n\r\n" + SMUGGLED
        add("te-te", name, post + line + b"\r\n\r\n" + body)
        add("te-te-cl", name, post + line + b"\r\nContent-Length: 5\r\n\r\n" + body)

    # -- Content-Length: duplicates, conflicts, syntax ------------------------------------------
    cl_variants = {
        "dup-equal": b"Content-Length: 5\r\nContent-Length: 5",
        "dup-differ": b"Content-Length: 5\r\nContent-Length: 45",
        "list-equal": b"Content-Length: 5, 5",
        "list-differ": b"Content-Length: 5, 45",
        "list-trailing-comma": b"Content-Length: 5,",
        "plus": b"Content-Length: +5",
        "minus": b"Content-Length: -5",
        "hex": b"Content-Length: 0x5",
        "decimal": b"Content-Length: 5.0",
        "exp": b"Content-Length: 5e0",
        "space-inside": b"Content-Length: 5 5",
        "empty": b"Content-Length:",
        "huge": b"Content-Length: 99999999999999999999999",
        "space-before-colon": b"Content-Length : 5",
        "underscore": b"Content_Length: 45",
        "tab-value": b"Content-Length:\t5",
        "vtab": b"Content-Length:\x0b5",
        "nul": b"Content-Length: 5\x00",
        "obs-fold": b"Content-Length:\r\n 5",
        "unicode-digit": b"Content-Length: \xd9\xa5",
        "many-leading-zeros": b"Content-Length: 0000000000000000000005",
        "dup-other-case": b"Content-Length: 5\r\ncontent-LENGTH: 5",
    }
    for name, line in cl_variants.items():
        add("cl", name, post + line + b"\r\n\r\nhello" + SMUGGLED)
    add("cl", "short-body-then-close", post + b"Content-Length: 10\r\n\r\nhello")

    # -- chunk-size and chunked-body edge cases ---------------------------------------------------
    chunk_bodies = {
        "leading-zeros": b"0005\r\nhello\r\n0\r\n\r\n",
        "upper-hex": b"A\r\n0123456789\r\n0\r\n\r\n",
        "extension": b"5;a=b\r\nhello\r\n0\r\n\r\n",
        "extension-quoted": b'5;a="b;c"\r\nhello\r\n0\r\n\r\n',
        "extension-bws": b"5 ;a\r\nhello\r\n0\r\n\r\n",
        "extension-long": b"5;" + b"a" * 5000 + b"\r\nhello\r\n0\r\n\r\n",
        "extension-very-long": b"5;" + b"a" * 70000 + b"\r\nhello\r\n0\r\n\r\n",
        "extension-nul": b"5;a\x00\r\nhello\r\n0\r\n\r\n",
        "extension-lf": b"5;a\nb\r\nhello\r\n0\r\n\r\n",
        "last-chunk-extension": b"5\r\nhello\r\n0;x=y\r\n\r\n",
        "trailer": b"5\r\nhello\r\n0\r\nX-T: 1\r\n\r\n",
        "trailer-cl": b"5\r\nhello\r\n0\r\nContent-Length: 50\r\n\r\n",
        "trailer-te": b"5\r\nhello\r\n0\r\nTransfer-Encoding: chunked\r\n\r\n",
        "trailer-host": b"5\r\nhello\r\n0\r\nHost: evil\r\n\r\n",
        "trailer-fold": b"5\r\nhello\r\n0\r\nX-T: 1\r\n 2\r\n\r\n",
        "trailer-bare-lf": b"5\r\nhello\r\n0\r\nX-T: 1\n\r\n",
        "negative": b"-5\r\nhello\r\n0\r\n\r\n",
        "plus": b"+5\r\nhello\r\n0\r\n\r\n",
        "0x-prefix": b"0x5\r\nhello\r\n0\r\n\r\n",
        "space-prefix": b" 5\r\nhello\r\n0\r\n\r\n",
        "trailing-space": b"5 \r\nhello\r\n0\r\n\r\n",
        "empty-size": b"\r\nhello\r\n0\r\n\r\n",
        "overflow": b"fffffffffffffffff5\r\nhello\r\n0\r\n\r\n",
        "overflow-wraps-to-5": b"10000000000000005\r\nhello\r\n0\r\n\r\n",
        "sixteen-digits": b"0000000000000005\r\nhello\r\n0\r\n\r\n",
        "data-longer": b"3\r\nhello\r\n0\r\n\r\n",
        "data-shorter": b"8\r\nhello\r\n0\r\n\r\n",
        "bare-lf-size": b"5\nhello\r\n0\r\n\r\n",
        "bare-lf-after-data": b"5\r\nhello\n0\r\n\r\n",
        "bare-cr-after-data": b"5\r\nhello\r0\r\n\r\n",
        "bare-lf-last": b"5\r\nhello\r\n0\n\n",
        "missing-last-crlf": b"5\r\nhello\r\n0\r\n",
        "missing-last-chunk": b"5\r\nhello\r\n",
        "nul-size": b"5\x00\r\nhello\r\n0\r\n\r\n",
        "tab-size": b"5\t\r\nhello\r\n0\r\n\r\n",
        "many-small": b"".join(b"1\r\n%c\r\n" % c for c in b"abcdefghij") + b"0\r\n\r\n",
        "zero-then-data": b"0\r\n\r\nhello",
        "trailers-huge": b"5\r\nhello\r\n0\r\n" + b"".join(b"X-T%d: %s\r\n" % (i, b"t" * 1000) for i in range(20))
                         + b"\r\n",
        "trailer-line-huge": b"5\r\nhello\r\n0\r\nX-T: " + b"t" * 70000 + b"\r\n\r\n",
        "many-chunks-then-bad": b"1\r\na\r\n" * 50 + b"zz\r\n",
    }
    for name, body in chunk_bodies.items():
        add("chunk", name, post + b"Transfer-Encoding: chunked\r\n\r\n" + body + get_next)

    # -- line endings, NUL, folding, whitespace in the head ---------------------------------------
    head_tricks = {
        "bare-lf-all": b"GET {P}/a HTTP/1.1\nHost: x\n\n",
        "bare-lf-request-line": b"GET {P}/a HTTP/1.1\nHost: x\r\n\r\n",
        "bare-lf-header": b"GET {P}/a HTTP/1.1\r\nHost: x\nX-A: b\r\n\r\n",
        "bare-lf-end": b"GET {P}/a HTTP/1.1\r\nHost: x\r\n\n",
        "bare-cr-header": b"GET {P}/a HTTP/1.1\r\nHost: x\rX-A: b\r\n\r\n",
        "cr-cr-lf": b"GET {P}/a HTTP/1.1\r\r\nHost: x\r\n\r\n",
        "nul-target": b"GET {P}/a\x00b HTTP/1.1\r\nHost: x\r\n\r\n",
        "nul-name": b"GET {P}/a HTTP/1.1\r\nHost: x\r\nX-\x00A: b\r\n\r\n",
        "nul-value": b"GET {P}/a HTTP/1.1\r\nHost: x\r\nX-A: b\x00c\r\n\r\n",
        "nul-before-head": b"\x00GET {P}/a HTTP/1.1\r\nHost: x\r\n\r\n",
        "del-value": b"GET {P}/a HTTP/1.1\r\nHost: x\r\nX-A: b\x7fc\r\n\r\n",
        "esc-value": b"GET {P}/a HTTP/1.1\r\nHost: x\r\nX-A: b\x1bc\r\n\r\n",
        "obs-fold": b"GET {P}/a HTTP/1.1\r\nHost: x\r\nX-A: a\r\n b\r\n\r\n",
        "obs-fold-tab": b"GET {P}/a HTTP/1.1\r\nHost: x\r\nX-A: a\r\n\tb\r\n\r\n",
        "fold-first-line": b"GET {P}/a HTTP/1.1\r\n Host: x\r\n\r\n",
        "fold-host": b"GET {P}/a HTTP/1.1\r\nHost: x\r\n y\r\n\r\n",
        "space-before-colon": b"GET {P}/a HTTP/1.1\r\nHost : x\r\n\r\n",
        "empty-name": b"GET {P}/a HTTP/1.1\r\nHost: x\r\n: b\r\n\r\n",
        "no-colon": b"GET {P}/a HTTP/1.1\r\nHost: x\r\nX-A\r\n\r\n",
        "high-byte-name": b"GET {P}/a HTTP/1.1\r\nHost: x\r\nX-\xc3\xa4: b\r\n\r\n",
        "empty-lines-before": b"\r\n\r\n\r\nGET {P}/a HTTP/1.1\r\nHost: x\r\n\r\n",
        "one-crlf-before": b"\r\nGET {P}/a HTTP/1.1\r\nHost: x\r\n\r\n",
        "space-line": b"GET {P}/a HTTP/1.1\r\nHost: x\r\n \r\n\r\n",
        "header-injection-via-cr": b"GET {P}/a HTTP/1.1\r\nHost: x\r\nX-A: b\rTransfer-Encoding: chunked\r\n\r\n",
    }
    for name, data in head_tricks.items():
        add("head", name, data)

    # -- request line ----------------------------------------------------------------------------
    lines = {
        "double-space": b"GET  {P}/a HTTP/1.1",
        "tab-separator": b"GET\t{P}/a HTTP/1.1",
        "trailing-space": b"GET {P}/a HTTP/1.1 ",
        "leading-space": b" GET {P}/a HTTP/1.1",
        "lowercase-method": b"get {P}/a HTTP/1.1",
        "lowercase-version": b"GET {P}/a http/1.1",
        "http12": b"GET {P}/a HTTP/1.2",
        "http2": b"GET {P}/a HTTP/2.0",
        "http09": b"GET {P}/a",
        "version-leading-zero": b"GET {P}/a HTTP/01.1",
        "space-in-target": b"GET {P}/a b HTTP/1.1",
        "fragment": b"GET {P}/a#frag HTTP/1.1",
        "absolute-http": b"GET http://x{P}/a HTTP/1.1",
        "absolute-https": b"GET https://x{P}/a HTTP/1.1",
        "absolute-other-host": b"GET http://127.0.0.1:1{P}/a HTTP/1.1",
        "asterisk-options": b"OPTIONS * HTTP/1.1",
        "asterisk-get": b"GET * HTTP/1.1",
        "authority-connect": b"CONNECT 127.0.0.1:22 HTTP/1.1",
        "connect-origin": b"CONNECT {P}/a HTTP/1.1",
        "trace": b"TRACE {P}/a HTTP/1.1",
        "track": b"TRACK {P}/a HTTP/1.1",
        "empty-target": b"GET  HTTP/1.1",
        "dot-dot": b"GET {P}/../x HTTP/1.1",
        "double-slash": b"GET /{P}/a HTTP/1.1",
        "method-with-slash": b"G/T {P}/a HTTP/1.1",
        "very-long-method": b"A" * 200 + b" {P}/a HTTP/1.1",
    }
    for name, line in lines.items():
        add("line", name, line + b"\r\nHost: x\r\n\r\n")

    # -- Host ------------------------------------------------------------------------------------
    add("host", "missing-11", b"GET {P}/a HTTP/1.1\r\n\r\n")
    add("host", "missing-10", b"GET {P}/a HTTP/1.0\r\n\r\n")
    add("host", "missing-10-post", b"POST {P}/a HTTP/1.0\r\nContent-Length: 2\r\n\r\nhi")
    add("host", "empty", b"GET {P}/a HTTP/1.1\r\nHost:\r\n\r\n")
    add("host", "empty-spaces", b"GET {P}/a HTTP/1.1\r\nHost:   \r\n\r\n")
    add("host", "duplicate", b"GET {P}/a HTTP/1.1\r\nHost: x\r\nHost: y\r\n\r\n")
    add("host", "duplicate-other-case", b"GET {P}/a HTTP/1.1\r\nHost: x\r\nhOST: y\r\n\r\n")
    add("host", "list", b"GET {P}/a HTTP/1.1\r\nHost: x, y\r\n\r\n")
    add("host", "userinfo", b"GET {P}/a HTTP/1.1\r\nHost: u@x\r\n\r\n")
    add("host", "slash", b"GET {P}/a HTTP/1.1\r\nHost: x/y\r\n\r\n")
    add("host", "connection-host", b"GET {P}/a HTTP/1.1\r\nHost: x\r\nConnection: host\r\n\r\n")
    add("host", "underscore", b"GET {P}/a HTTP/1.1\r\nHost: x\r\nX_Forwarded_Host: evil\r\n\r\n")

    # -- Connection naming fields ----------------------------------------------------------------
    def cases_of(name: str) -> list[tuple[str, str]]:
        return [("lower", name.lower()), ("upper", name.upper()), ("title", name),
                ("mixed", "".join(c.upper() if i % 2 else c.lower() for i, c in enumerate(name)))]

    for fname in STANDARD_FIELDS:
        tag = fname.lower()
        add("conn", f"{tag}-cl", post + b"Connection: %s\r\nContent-Length: %d\r\n\r\n%s"
            % (fname.encode(), len(SMUGGLED), SMUGGLED) + get_next)
        add("conn", f"{tag}-chunked", post + b"Connection: %s\r\nTransfer-Encoding: chunked\r\n\r\n"
            b"%x\r\n%s\r\n0\r\n\r\n" % (fname.encode(), len(SMUGGLED), SMUGGLED) + get_next)
    for fname in ("Content-Length", "Transfer-Encoding", "Host", "Upgrade"):
        for style, spelled in cases_of(fname):
            if style == "title":
                continue
            add("conn", f"{fname.lower()}-{style}", post + b"Connection: keep-alive, %s\r\nContent-Length: 5\r\n\r\n"
                b"hello" % spelled.encode() + get_next)
    rng = random.Random(11)
    for i in range(30):
        names = rng.sample(STANDARD_FIELDS, rng.randint(2, 6))
        spelled = [rng.choice(cases_of(n))[1] for n in names]
        sep = rng.choice([b",", b", ", b" ,\t"])
        two_fields = rng.random() < 0.3
        conn = (b"Connection: " + sep.join(s.encode() for s in spelled)) if not two_fields else (
            b"Connection: " + spelled[0].encode() + b"\r\nConnection: " + sep.join(s.encode() for s in spelled[1:]))
        framing = rng.choice(["cl", "chunked", "none"])
        body = b"a=%d" % i
        if framing == "cl":
            msg = post + conn + b"\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body)
        elif framing == "chunked":
            msg = post + conn + b"\r\nTransfer-Encoding: chunked\r\n\r\n%x\r\n%s\r\n0\r\n\r\n" % (len(body), body)
        else:
            msg = b"GET {P}/a HTTP/1.1\r\nHost: x\r\n" + conn + b"\r\n\r\n"
        add("conn-combo", str(i), msg + get_next)

    # -- Expect ----------------------------------------------------------------------------------
    add("expect", "continue-cl", post + b"Expect: 100-continue\r\nContent-Length: 5\r\n\r\nhello" + get_next)
    add("expect", "continue-chunked", post + b"Expect: 100-continue\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"5\r\nhello\r\n0\r\n\r\n" + get_next)
    add("expect", "continue-no-body", b"GET {P}/a HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\n\r\n" + get_next)
    add("expect", "continue-cl0", post + b"Expect: 100-continue\r\nContent-Length: 0\r\n\r\n" + get_next)
    add("expect", "continue-uppercase", post + b"Expect: 100-CONTINUE\r\nContent-Length: 5\r\n\r\nhello" + get_next)
    add("expect", "unknown", post + b"Expect: 200-ok\r\nContent-Length: 5\r\n\r\nhello" + get_next)
    add("expect", "continue-http10", b"POST {P}/up HTTP/1.0\r\nHost: x\r\nExpect: 100-continue\r\n"
        b"Content-Length: 5\r\n\r\nhello")

    # -- upgrades (the recording backend never switches: every one is refused with a 200) ---------
    ws = b"Upgrade: websocket\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n"
    frame = b"\x81\x85\x00\x00\x00\x00hello"
    add("upgrade", "ws-refused-then-frame", b"GET {P}/ws HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\n" + ws
        + b"\r\n" + frame)
    add("upgrade", "ws-refused-then-request", b"GET {P}/ws HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\n" + ws
        + b"\r\n" + get_next)
    add("upgrade", "ws-frame-looks-like-request", b"GET {P}/ws HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\n" + ws
        + b"\r\n" + SMUGGLED)
    add("upgrade", "upgrade-without-connection", b"GET {P}/ws HTTP/1.1\r\nHost: x\r\n" + ws + b"\r\n" + get_next)
    add("upgrade", "connection-without-upgrade", b"GET {P}/ws HTTP/1.1\r\nHost: x\r\nConnection: upgrade\r\n\r\n"
        + get_next)
    add("upgrade", "with-body-cl", b"POST {P}/ws HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\n" + ws
        + b"Content-Length: %d\r\n\r\n%s" % (len(SMUGGLED), SMUGGLED))
    add("upgrade", "with-body-chunked", b"POST {P}/ws HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\n" + ws
        + b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n" + SMUGGLED)
    add("upgrade", "h2c", b"GET {P}/a HTTP/1.1\r\nHost: x\r\nConnection: Upgrade, HTTP2-Settings\r\n"
        b"Upgrade: h2c\r\nHTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\n\r\n" + get_next)
    add("upgrade", "h2-preface", b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
    add("upgrade", "upgrade-in-http10", b"GET {P}/ws HTTP/1.0\r\nHost: x\r\nConnection: Upgrade\r\n" + ws + b"\r\n")

    # -- forwarded fields (framing-neutral; what reaches the backend is checked elsewhere) --------
    for name, line in {"xff": b"X-Forwarded-For: 6.6.6.6", "forwarded": b"Forwarded: for=6.6.6.6;host=evil",
                       "x-real-ip": b"X-Real-IP: 6.6.6.6", "xfh-underscore": b"X_Forwarded_Host: evil",
                       "xfp": b"X-Forwarded-Proto: https", "many-xff": b"X-Forwarded-For: 1.1.1.1\r\n"
                       b"X-Forwarded-For: 2.2.2.2"}.items():
        add("forwarded", name, b"GET {P}/a HTTP/1.1\r\nHost: x\r\n" + line + b"\r\n\r\n")

    # -- the proxy's own answers (local endpoints, routing errors) with bodies behind them ----------
    nobody = b"/99999999-9999-4999-8999-999999999999"
    for name, target in (("healthz", b"/healthz"), ("metrics", b"/metrics"), ("unknown-project", nobody + b"/x"),
                         ("bad-target", b"{P}/../x"), ("not-uuid", b"/not-a-project/x")):
        add("local", f"{name}-cl-body", b"POST %s HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n%s"
            % (target, len(SMUGGLED), SMUGGLED) + get_next)
        add("local", f"{name}-chunked-body", b"POST %s HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
            b"%x\r\n%s\r\n0\r\n\r\n" % (target, len(SMUGGLED), SMUGGLED) + get_next)
        add("local", f"{name}-expect", b"POST %s HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\n"
            b"Content-Length: %d\r\n\r\n%s" % (target, len(SMUGGLED), SMUGGLED) + get_next)
        add("local", f"{name}-head-then-get", b"HEAD %s HTTP/1.1\r\nHost: x\r\n\r\n" % target + get_next)
    add("valid", "http10-keepalive-post", b"POST {P}/a HTTP/1.0\r\nHost: x\r\nConnection: keep-alive\r\n"
        b"Content-Length: 5\r\n\r\nhello" + get_next)
    add("valid", "huge-chunk-then-close", post + b"Transfer-Encoding: chunked\r\n\r\n7fffffffffffffff\r\nabc")

    # -- generated pipelines of valid messages with random framing ---------------------------------
    rng = random.Random(1111)
    for i in range(40):
        parts = []
        for j in range(rng.randint(1, 4)):
            body = bytes(rng.randrange(256) for _ in range(rng.choice([0, 1, 7, 100, 3000])))
            kind = rng.choice(["get", "cl", "chunked"])
            extra = rng.choice([b"", b"Connection: keep-alive\r\n", b"X-A: 1\r\n", b"Cookie: s=%d\r\n" % i,
                                b"Connection: cookie\r\nCookie: c=1\r\n"])
            t = b"{P}/g%d-%d" % (i, j)
            if kind == "get":
                parts.append(b"GET %s HTTP/1.1\r\nHost: x\r\n%s\r\n" % (t, extra))
            elif kind == "cl":
                parts.append(b"PUT %s HTTP/1.1\r\nHost: x\r\n%sContent-Length: %d\r\n\r\n%s" % (t, extra, len(body), body))
            else:
                chunks, k = [], 0
                while k < len(body):
                    n = rng.randint(1, max(1, len(body) - k))
                    chunks.append(b"%x\r\n%s\r\n" % (n, body[k:k + n]))
                    k += n
                parts.append(b"POST %s HTTP/1.1\r\nHost: x\r\n%sTransfer-Encoding: chunked\r\n\r\n%s0\r\n\r\n"
                             % (t, extra, b"".join(chunks)))
        add("generated", str(i), b"".join(parts))
    return out


REQUESTS: list[Case] = _cases()


# -- responses ------------------------------------------------------------------------------------

@dataclass(frozen=True)
class RespCase:
    id: str
    family: str
    steps: tuple          # what the backend writes (see RecordingBackend)
    method: bytes = b"GET"
    body: bytes | None = None   # the body the client must get when the status is passed through


def _resp_cases() -> list[RespCase]:
    out: list[RespCase] = []

    def add(family, name, steps, method=b"GET", body=None):
        out.append(RespCase(f"{family}.{name}", family, tuple(steps), method, body))

    ok = b"HTTP/1.1 200 OK\r\n"
    add("valid", "cl", [ok + b"Content-Length: 5\r\n\r\nhello"], body=b"hello")
    add("valid", "chunked", [ok + b"Transfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n"], body=b"hello")
    add("valid", "chunked-ext-trailer", [ok + b"Transfer-Encoding: chunked\r\n\r\n5;a=b\r\nhello\r\n0\r\nX-T: 1\r\n\r\n"],
        body=b"hello")
    add("valid", "close-delimited", [ok + b"Content-Type: text/plain\r\n\r\nhello", ("close",)], body=b"hello")
    add("valid", "http10-close", [b"HTTP/1.0 200 OK\r\n\r\nhello", ("close",)], body=b"hello")
    add("valid", "http10-cl", [b"HTTP/1.0 200 OK\r\nContent-Length: 5\r\n\r\nhello"], body=b"hello")
    add("valid", "no-reason", [b"HTTP/1.1 200 \r\nContent-Length: 5\r\n\r\nhello"], body=b"hello")
    add("valid", "gzip-te-close", [ok + b"Transfer-Encoding: gzip\r\n\r\nhello", ("close",)])
    add("valid", "head", [ok + b"Content-Length: 5\r\n\r\n"], method=b"HEAD")
    add("valid", "cl-dup-equal", [ok + b"Content-Length: 5\r\nContent-Length: 5\r\n\r\nhello"], body=b"hello")
    add("valid", "cl-list-equal", [ok + b"Content-Length: 5, 5\r\n\r\nhello"], body=b"hello")
    add("valid", "set-cookies", [ok + b"Set-Cookie: a=1\r\nSet-Cookie: b=2\r\nContent-Length: 2\r\n\r\nok"], body=b"ok")
    # Connection naming framing fields, in every case, alone and with others
    for fname in ("content-length", "Content-Length", "CONTENT-LENGTH", "transfer-encoding", "Transfer-Encoding",
                  "keep-alive, content-length", "close, content-length"):
        tag = fname.replace(", ", "+").lower() + ("-" + fname if fname != fname.lower() else "")
        add("conn", f"{tag}-cl", [ok + b"Connection: %s\r\nContent-Length: 5\r\n\r\nhello" % fname.encode()])
        add("conn", f"{tag}-chunked", [ok + b"Connection: %s\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n"
                                       b"0\r\n\r\n" % fname.encode()])
    for fname in STANDARD_FIELDS:
        if fname.lower() in ("content-length", "transfer-encoding"):
            continue
        add("conn-named", fname.lower(), [ok + b"Connection: %s\r\n%s: v\r\nContent-Length: 5\r\n\r\nhello"
                                          % (fname.encode(), fname.encode())], body=b"hello")
    # framing conflicts
    add("framing", "cl-and-te", [ok + b"Content-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n"])
    add("framing", "te-and-cl", [ok + b"Transfer-Encoding: chunked\r\nContent-Length: 30\r\n\r\n5\r\nhello\r\n0\r\n\r\n"])
    add("framing", "cl-conflict", [ok + b"Content-Length: 5\r\nContent-Length: 6\r\n\r\nhello!"])
    add("framing", "cl-list-conflict", [ok + b"Content-Length: 5, 6\r\n\r\nhello!"])
    add("framing", "cl-negative", [ok + b"Content-Length: -1\r\n\r\nhello", ("close",)])
    add("framing", "cl-plus", [ok + b"Content-Length: +5\r\n\r\nhello"])
    add("framing", "cl-huge", [ok + b"Content-Length: 99999999999999999999\r\n\r\nhello", ("close",)])
    add("framing", "te-chunked-http10", [b"HTTP/1.0 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n"])
    add("framing", "te-space-colon", [ok + b"Transfer-Encoding : chunked\r\nContent-Length: 5\r\n\r\nhello"])
    add("framing", "chunk-overflow", [ok + b"Transfer-Encoding: chunked\r\n\r\nfffffffffffffffff5\r\nhello\r\n0\r\n\r\n"])
    add("framing", "chunk-negative", [ok + b"Transfer-Encoding: chunked\r\n\r\n-5\r\nhello\r\n0\r\n\r\n"])
    add("framing", "chunk-data-longer", [ok + b"Transfer-Encoding: chunked\r\n\r\n3\r\nhello\r\n0\r\n\r\n"])
    add("framing", "chunk-bare-lf", [ok + b"Transfer-Encoding: chunked\r\n\r\n5\nhello\n0\n\n"])
    add("framing", "chunk-trailer-cl", [ok + b"Transfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n"
                                        b"Content-Length: 40\r\n\r\n"], body=b"hello")
    # bodies where there must be none
    for status in (204, 304):
        add("nobody", f"{status}-with-body", [b"HTTP/1.1 %d X\r\n\r\n" % status + b"HTTP/1.1 200 OK\r\nx-rec: fake\r\n"
                                              b"Content-Length: 4\r\n\r\nfake"])
        add("nobody", f"{status}-cl-body", [b"HTTP/1.1 %d X\r\nContent-Length: 5\r\n\r\nhello" % status])
        add("nobody", f"{status}-chunked", [b"HTTP/1.1 %d X\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n"
                                            b"0\r\n\r\n" % status])
    add("nobody", "304-te-no-body", [b"HTTP/1.1 304 X\r\nTransfer-Encoding: chunked\r\n\r\n"])
    add("nobody", "204-cl-no-body", [b"HTTP/1.1 204 X\r\nContent-Length: 5\r\n\r\n"])
    add("nobody", "head-cl-no-body", [ok + b"Content-Length: 5\r\n\r\n"], method=b"HEAD")
    add("nobody", "head-te-no-body", [ok + b"Transfer-Encoding: chunked\r\n\r\n"], method=b"HEAD")
    add("nobody", "head-with-body", [ok + b"Content-Length: 5\r\n\r\nhello"], method=b"HEAD")
    add("nobody", "head-chunked-with-body", [ok + b"Transfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n"],
        method=b"HEAD")
    add("nobody", "head-injects", [ok + b"Content-Length: 38\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nfake"],
        method=b"HEAD")
    # interim responses
    add("interim", "100-then-200", [b"HTTP/1.1 100 Continue\r\n\r\n" + ok + b"Content-Length: 5\r\n\r\nhello"],
        body=b"hello")
    add("interim", "103-then-200", [b"HTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\n" + ok
                                    + b"Content-Length: 5\r\n\r\nhello"], body=b"hello")
    add("interim", "102-then-200", [b"HTTP/1.1 102 Processing\r\n\r\n" + ok + b"Content-Length: 5\r\n\r\nhello"],
        body=b"hello")
    add("interim", "1xx-x20", [b"HTTP/1.1 100 Continue\r\n\r\n" * 20 + ok + b"Content-Length: 5\r\n\r\nhello"],
        body=b"hello")
    add("interim", "1xx-with-cl", [b"HTTP/1.1 100 Continue\r\nContent-Length: 5\r\n\r\n" + ok
                                   + b"Content-Length: 5\r\n\r\nhello"])
    add("interim", "unasked-101", [b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                                   b"\r\nHTTP/1.1 200 OK\r\nx-rec: fake\r\nContent-Length: 4\r\n\r\nfake"])
    add("interim", "unasked-101-no-upgrade", [b"HTTP/1.1 101 Switching Protocols\r\n\r\n"])
    add("interim", "199", [b"HTTP/1.1 199 X\r\n\r\n" + ok + b"Content-Length: 5\r\n\r\nhello"])
    # lying lengths, early close, stale bytes
    add("lying", "cl-short", [ok + b"Content-Length: 2\r\n\r\nhelloHTTP/1.1 200 OK\r\nx-rec: fake\r\n"
                              b"Content-Length: 4\r\n\r\nfake"])
    add("lying", "cl-long-close", [ok + b"Content-Length: 50\r\n\r\nhello", ("close",)])
    add("lying", "chunked-extra", [ok + b"Transfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n"
                                   b"HTTP/1.1 200 OK\r\nx-rec: fake\r\nContent-Length: 4\r\n\r\nfake"], body=b"hello")
    add("lying", "chunked-unfinished-close", [ok + b"Transfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n", ("close",)])
    add("lying", "two-responses", [ok + b"Content-Length: 5\r\n\r\nhello" + ok + b"x-rec: fake\r\n"
                                   b"Content-Length: 4\r\n\r\nfake"], body=b"hello")
    add("early", "close-before-head", [("close",)])
    add("early", "close-mid-status", [b"HTTP/1.1 20", ("close",)])
    add("early", "close-mid-head", [ok + b"Content-Length: 5\r\n", ("close",)])
    add("early", "garbage", [b"hello world\r\n\r\n", ("close",)])
    add("early", "http09-body", [b"<html>hi</html>", ("close",)])
    # malformed heads
    add("head", "bare-lf", [b"HTTP/1.1 200 OK\nContent-Length: 5\n\nhello"])
    add("head", "obs-fold", [ok + b"X-A: a\r\n b\r\nContent-Length: 5\r\n\r\nhello"])
    add("head", "nul-value", [ok + b"X-A: a\x00b\r\nContent-Length: 5\r\n\r\nhello"])
    add("head", "cr-injection", [ok + b"X-A: a\rSet-Cookie: evil=1\r\nContent-Length: 5\r\n\r\nhello"])
    add("head", "space-before-colon", [ok + b"Content-Length : 5\r\n\r\nhello", ("close",)])
    add("head", "status-2000", [b"HTTP/1.1 2000 OK\r\nContent-Length: 5\r\n\r\nhello"])
    add("head", "status-lower", [b"http/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello"])
    add("head", "http2-status", [b"HTTP/2 200\r\nContent-Length: 5\r\n\r\nhello"])
    add("head", "reason-ctl", [b"HTTP/1.1 200 O\x01K\r\nContent-Length: 5\r\n\r\nhello"])
    add("head", "too-many-fields", [ok + b"X-A: b\r\n" * 300 + b"Content-Length: 5\r\n\r\nhello"])
    add("head", "long-line", [ok + b"X-A: " + b"a" * 70000 + b"\r\nContent-Length: 5\r\n\r\nhello"])
    add("head", "huge-head", [ok + b"".join(b"X-%d: %s\r\n" % (i, b"v" * 900) for i in range(150))
                              + b"Content-Length: 5\r\n\r\nhello"])
    return out


RESPONSES: list[RespCase] = _resp_cases()
