"""Who may pass the hub-mode proxy: authentication and authorization of every request and upgrade.

Both paths call `Access.check_now` (synchronous: the answer when the decision is cached, else None)
and, when that needs I/O, `Access.check`, after the request target has named a project and BEFORE
its route is looked up, so an unauthenticated client learns nothing about which projects exist:
it gets the same 401 for every uuid. What a check returns:

- `Answer`: a local answer (401 with a small HTML page, 403, 400, 503, or the login's 303);
- `Pass`: forward; `Pass.forward()` gives the header changes the upstream head gets (see below).

Credentials (`proxy.auth: builtin`), in this order: `Authorization: Bearer cct_...`, the proxy's
session cookie `<name>=ccs_...`, its name by the client's scheme and addressing (cookie_name(): `__Host-`
over https in subdomain mode, `__Secure-` over https in path mode, bare over http); up to MAX_SESSIONS
of them are tried in the order sent and the first one the hub accepts for the request counts. A browser logs in with `/<project>/...?token=cct_...`
(GET or HEAD only): the token is checked, a session is created in the hub and set as an HttpOnly,
SameSite=Lax cookie scoped to the project's path (Secure when the client's scheme is https), and the
answer is a 303 to the same URL without the token. A credential that is not valid: 401; valid but
without a grant on the project: 403; a viewer may only GET, HEAD and OPTIONS (an upgrade is no safe
method). Before forwarding, the session cookie and an Authorization header carrying a token are
removed, a client's `x-cocalc-account` and `x-cocalc-hub-auth` are always dropped, and the proxy
sets `x-cocalc-account: <account uuid>`.

Decisions are cached in a bounded LRU (valid ones and refusals in separately bounded halves) until
the decision's own expiry or `proxy.auth_cache_ttl`, whichever is first; a LISTEN on the hub's
ACCESS_CHANNEL evicts what a payload touches (`account:<id>`, `grant:<project>:<account>`,
`token:<id>`; anything else drops everything), and open WebSockets whose account, token or grant a
payload touches are checked again and closed when the fresh decision refuses them, and so is one
whose credential reaches its expiry (which sends no NOTIFY). While the
listener is down nothing is cached. Concurrent misses for one credential and project share one
query.

`proxy.auth: external` asks `proxy.auth_url` instead, as nginx's auth_request and Traefik's
ForwardAuth do: a GET carrying the original method and target (X-Original-Method/-URI and
X-Forwarded-Method/-Uri/-Host/-Proto/-For; X-Original-Upgrade for an upgrade), Cookie and Authorization; 2xx allows (the response
headers named in `proxy.auth_copy_headers` are added to the upstream request), 401 and 403 are
passed on, anything else or no answer within `proxy.auth_timeout` is a 503: it fails closed.
A decision is cached for `proxy.auth_cache_ttl` under the whole question it answered (method, target,
Host, scheme, the client address as forwarded, project, Cookie, Authorization), never for another.
`proxy.auth: none` passes everything (loopback listens only; see actions/proxy.py).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import hashlib
import time
from dataclasses import dataclass

from cocalc_ctl.authnames import (ACCESS_CHANNEL, ACCOUNT_HEADER, HUB_AUTH_HEADER, SESSION_COOKIE, SESSION_PREFIX,
                                  TOKEN_PREFIX, TOKEN_QUERY)
from cocalc_ctl.proxy import http1, policy
from cocalc_ctl.proxy.lru import SingleFlight, SplitCache

MODES = ("builtin", "external", "none")
SAFE_METHODS = frozenset({b"GET", b"HEAD", b"OPTIONS"})
_COOKIE_NAME = SESSION_COOKIE.encode()
# The name a session cookie has, by the client's scheme and the addressing: over https in subdomain mode
# `__Host-` (browsers refuse such a cookie with a Domain, so no sibling subdomain can plant one, and
# require Path=/ and Secure); over https in path mode `__Secure-` (__Host- needs Path=/, and a cookie
# scoped to one project's path cannot have it); over http the bare name (prefixes need Secure).
HOST_COOKIE = b"__Host-" + _COOKIE_NAME
SECURE_COOKIE = b"__Secure-" + _COOKIE_NAME
# Every variant is ours: none is ever forwarded to a project (cookies.py keeps projects from setting them).
_ALL_COOKIE_NAMES = frozenset(n.lower() for n in (_COOKIE_NAME, HOST_COOKIE, SECURE_COOKIE))
# At most this many session cookies of the name that applies are tried (in the order the client sent
# them: a planted cookie with a longer Path or a parent Domain comes first and must not shadow the
# client's own), so one request costs at most this many lookups.
MAX_SESSIONS = 3
_TOKEN_PREFIX = TOKEN_PREFIX.encode()
_SESSION_PREFIX = SESSION_PREFIX.encode()
_QUERY_NAME = TOKEN_QUERY.encode()
_SECRET_LEN = 43  # base64url of 32 bytes, no padding
_B64URL = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_")

# Fields a client can never send to a project through the hub: the proxy sets or signs them.
HUB_DROP = policy.request_drop(ACCOUNT_HEADER, HUB_AUTH_HEADER)
_DROP_AUTHZ = policy.request_drop(ACCOUNT_HEADER, HUB_AUTH_HEADER, b"authorization")
_DROP_COOKIE = policy.request_drop(ACCOUNT_HEADER, HUB_AUTH_HEADER, b"cookie")
_DROP_BOTH = policy.request_drop(ACCOUNT_HEADER, HUB_AUTH_HEADER, b"authorization", b"cookie")

LOGIN_PAGE = b"""<!doctype html>
<html><head><meta charset="utf-8"><title>Login required</title></head>
<body><h1>Login required</h1>
<p>This address needs a login. Open the link with <code>?token=...</code> you were given once: it signs this
browser in for this project and takes the token out of the address. Programs send
<code>Authorization: Bearer &lt;token&gt;</code>.</p>
<p>An administrator creates tokens with <code>cocalc-ctl hub token create</code>.</p>
</body></html>
"""


TOUCH_EVERY = 60.0  # seconds: how often this process sends a token's last-used time (the hub keeps a minute)
TOUCHED_MAX = 10000  # tokens remembered for that; past it the memory starts again (a few extra writes)


class Answer:
    """A request the proxy answers itself (nothing is forwarded)."""

    __slots__ = ("status", "note", "body", "ctype", "headers")

    def __init__(self, status: int, note: str, body: bytes | None = None, ctype: bytes = b"text/plain; charset=utf-8",
                 headers: bytes = b""):
        self.status = status
        self.note = note
        self.body = note.encode() + b"\n" if body is None else body
        self.ctype = ctype
        self.headers = headers

    def response(self, keep_alive: bool, head_only: bool) -> bytes:
        return http1.simple_response(self.status, self.body, keep_alive=keep_alive, content_type=self.ctype,
                                     head_only=head_only, extra=self.headers)


UNAUTHENTICATED = Answer(401, "login required", LOGIN_PAGE, b"text/html; charset=utf-8",
                         b'www-authenticate: Bearer realm="cocalc-ctl"\r\ncache-control: no-store\r\n')
FORBIDDEN = Answer(403, "forbidden: no access to this project")
READ_ONLY = Answer(403, "forbidden: a viewer may only GET, HEAD and OPTIONS")
HUB_DOWN = Answer(503, "hub database unavailable")
AUTH_DOWN = Answer(503, "authorization service unavailable")
LOGIN_METHOD = Answer(400, "a ?token= login link works with GET and HEAD only")


@dataclass(eq=False)
class Decision:
    """A cached decision: who (None: not a valid credential) and their role on the project."""

    deadline: float               # time.monotonic() after which it must be asked again
    project_id: str
    account_id: str | None = None
    token_id: str | None = None
    role: str | None = None       # None with an account: authenticated, no access (403)
    extra: bytes = b""            # header lines for the upstream request (x-cocalc-account, copied fields)
    answer: Answer | None = None  # external mode: its refusal; a failed lookup (never cached)
    expires: float = float("inf")  # time.monotonic() when the credential itself expires


class Presented:
    """The credentials of one request, and how its head must change before it is forwarded."""

    __slots__ = ("kind", "secret", "sessions", "login", "answer", "drop", "cookie_line", "raw", "digest",
                 "digests", "question")

    def __init__(self):
        self.kind: str | None = None      # "token" | "session"
        self.secret: bytes | None = None  # the token, or the first well-formed session
        self.sessions: tuple = ()         # kind "session": the well-formed sessions to try, in order
        self.login = False                # the token came in the query (login link)
        self.answer: Answer | None = None  # refused before any lookup
        self.drop = HUB_DROP
        self.cookie_line = b""            # the Cookie header without the session cookie
        self.raw = b""                    # external mode: Cookie and Authorization as sent
        self.digest: bytes | None = None  # sha256 of the secret (or of raw): the cache key's part
        self.digests: tuple | None = None  # kind "session": sha256 of each of `sessions`
        self.question: bytes | None = None  # external mode: the request to the decision point


class Pass:
    """Forward: the decision and the credentials it was made for."""

    __slots__ = ("decision", "presented")

    def __init__(self, decision: Decision, presented: Presented):
        self.decision = decision
        self.presented = presented

    def forward(self) -> tuple[frozenset, bytes]:
        """(fields to drop, lines to add) for policy.upstream_request_head."""
        p = self.presented
        return p.drop, self.decision.extra + p.cookie_line


def _is_secret(value: bytes, prefix: bytes) -> bool:
    return (len(value) == len(prefix) + _SECRET_LEN and value.startswith(prefix)
            and _B64URL.issuperset(value[len(prefix):]))


def cookie_name(https: bool, subdomains: bool) -> bytes:
    """The session cookie's name for a client on https (or not), in subdomain mode (or path mode)."""
    if not https:
        return _COOKIE_NAME
    return HOST_COOKIE if subdomains else SECURE_COOKIE


class _Cookies:
    """What the Cookie headers of one request carry: the sessions of cookie `name` (up to
    MAX_SESSIONS), how many cookies of that name came (well-formed or not), whether any of our
    cookie names came (all are removed), and the other cookies, kept."""

    __slots__ = ("name", "seen", "sessions", "strip", "kept")

    def __init__(self, name: bytes):
        self.name, self.seen, self.sessions, self.strip, self.kept = name, 0, [], False, []

    def read(self, value: bytes) -> None:
        for piece in value.split(b";"):
            piece = piece.strip()
            cname, eq, val = piece.partition(b"=")
            cname = cname.strip()
            if cname.lower() in _ALL_COOKIE_NAMES:
                self.strip = True
                if cname == self.name and self.seen < MAX_SESSIONS:
                    self.seen += 1
                    val = val.strip()
                    if _is_secret(val, _SESSION_PREFIX):
                        self.sessions.append(val)
            elif piece:
                self.kept.append(piece)


def present(head, name: bytes = _COOKIE_NAME) -> Presented:
    """Read (and plan the removal of) the credentials a request carries. Never looks anything up.
    `name`: the session cookie's name that applies to this request (cookie_name()); only cookies of
    exactly that name are read (up to MAX_SESSIONS), every variant of it is removed."""
    p = Presented()
    bearer = None
    cookies = _Cookies(name)
    authz = 0
    raw = []
    for lname, _, value in head.headers:
        if lname == b"authorization":
            authz += 1
            raw.append(b"authorization: " + value)
            scheme, _, rest = value.partition(b" ")
            rest = rest.strip()
            if scheme.lower() == b"bearer" and rest.startswith(_TOKEN_PREFIX):
                bearer = rest
        elif lname == b"cookie":
            raw.append(b"cookie: " + value)
            cookies.read(value)
    p.raw = b"\r\n".join(raw)
    if authz > 1:
        p.answer = Answer(400, "more than one Authorization header")
        return p
    if bearer is not None:
        p.drop = _DROP_BOTH if cookies.strip else _DROP_AUTHZ
    elif cookies.strip:
        p.drop = _DROP_COOKIE
    if cookies.strip and cookies.kept:
        p.cookie_line = b"cookie: " + b"; ".join(cookies.kept) + b"\r\n"
    return _choose_credential(p, head, bearer, cookies)


def _choose_credential(p: Presented, head, bearer: bytes | None, cookies: _Cookies) -> Presented:
    """The credential the request is judged by: a query token (GET/HEAD only), else the bearer token,
    else the session cookies; what is not even shaped like a secret is answered without a lookup."""
    query_token = _query_token(head.target)
    if query_token is not None:
        if head.method not in (b"GET", b"HEAD") or head.upgrade is not None:
            p.answer = LOGIN_METHOD  # a token in the query is never forwarded
            return p
        p.kind, p.secret, p.login = "token", query_token, True
    elif bearer is not None:
        p.kind, p.secret = "token", bearer
    elif cookies.sessions:
        p.kind, p.secret, p.sessions = "session", cookies.sessions[0], tuple(cookies.sessions)
    elif cookies.seen:
        p.answer = UNAUTHENTICATED  # only session cookies not even shaped like one: no lookup
        return p
    if p.kind == "token" and not _is_secret(p.secret, _TOKEN_PREFIX):
        p.answer = UNAUTHENTICATED  # not even the shape of one: no lookup
    return p


def _ours(param: bytes) -> bool:
    """A `token=cct_...` query parameter: ours. Another `token=` (Jupyter's own login link) is the project's."""
    name, _, value = param.partition(b"=")
    return name == _QUERY_NAME and value.startswith(_TOKEN_PREFIX)


def _query_token(target: bytes) -> bytes | None:
    q = target.find(b"?")
    if q < 0 or b"token=cct_" not in target:
        return None
    for param in target[q + 1:].split(b"&"):
        if _ours(param):
            return param.partition(b"=")[2]
    return None


def without_token(target: bytes) -> bytes:
    """The target of a login link with our `token=cct_...` parameters removed (the 303's Location)."""
    path, q, query = target.partition(b"?")
    if not q:
        return target
    kept = [x for x in query.split(b"&") if not _ours(x)]
    return path + (b"?" + b"&".join(kept) if kept else b"")


def client_scheme(head, trusted: bool, default: bytes) -> bytes:
    if trusted:
        for lname, _, value in head.headers:
            if lname == b"x-forwarded-proto":
                return value.strip().lower()
    return default


class Access:
    """The decision point of one hub-mode proxy; see the module docstring."""

    def __init__(self, mode: str, *, link=None, cache_size: int = 10000, ttl: float = 30.0,
                 session_ttl: float = 86400.0, scheme: str = "http", auth_url: str | None = None,
                 auth_timeout: float = 2.0, copy_headers: tuple = ()):
        if mode not in MODES:
            raise ValueError(mode)
        self.mode = mode
        self.link = link
        self.ttl = float(ttl)
        self.session_ttl = float(session_ttl)
        self.scheme = scheme.encode()
        self.cache = SplitCache(cache_size, max(16, cache_size // 4))
        self.flights = SingleFlight()
        self.generation = 0
        self._touched: dict[str, float] = {}  # token id -> when this process last sent its last-used time
        self.tunnels: dict = {}  # Tunnel -> (head, Presented, project_id, Decision)
        self.expiry: dict = {}  # Tunnel -> the timer that checks it again when its credential expires
        self.allowed = 0
        self.refused = 0
        self.notifications = 0
        self.websockets_closed = 0
        self.open_pass = Pass(Decision(float("inf"), ""), Presented())
        self.external = None
        from cocalc_ctl.proxy.metrics import Histogram

        self.lookup_latency = Histogram()  # seconds from a miss to its decision (lookups of this process)
        self.routes = None  # hub mode: the HubRoutes a decision lookup primes with the project's route
        # batched lookups when the link offers them (HubLink); a link with only fetchone() asks one by one
        self._batches = None
        if mode == "builtin" and hasattr(link, "batch"):
            self._batches = {"token": link.batch(_token_decisions), "session": link.batch(_session_decisions)}
        # proxy.project_domain: each project is its own origin, so the session cookie is scoped to all of
        # it (Path=/, host-only); in path mode to /<project_id>/ (set by actions/proxy.py)
        self.subdomains = False
        if mode == "external":
            self.external = ExternalAuth(auth_url, auth_timeout, copy_headers)
            self.external_drop = HUB_DROP | self.external.copy
        if mode == "builtin":
            if link is None:
                raise ValueError("builtin access control needs the hub link")
            link.subscribe(ACCESS_CHANNEL, self._note, self._reset)

    @property
    def lookups(self) -> int:
        return self.flights.started

    async def start(self) -> None:
        if self.link is not None:
            await self.link.start()

    async def close(self) -> None:
        if self.link is not None:
            await self.link.close()

    # -- checks ------------------------------------------------------------------------------------

    def _cacheable(self) -> bool:
        return self.mode == "external" or self.link.listening

    def check_now(self, head, project_id: str, trusted: bool = False, p: Presented | None = None,
                  peer: str = "-"):
        """Answer or Pass when known without I/O; None when a lookup is needed (then call check).
        `p`: what present_for(head, trusted) returned for this very head before (the fast path keeps it
        for a keep-alive client repeating its request), to save reading the head again."""
        if self.mode == "none":
            return self.open_pass
        if p is None:
            p = self._present(head, trusted)
        if p.answer is not None:
            return self._count(p.answer)
        if p.login:
            return None
        keys = self._keys(head, p, project_id, peer, trusted)
        if not keys:
            return self._count(UNAUTHENTICATED)
        if not self._cacheable():
            return None
        now = time.monotonic()
        refusal = None
        for key in keys:
            d = self.cache.get(key)
            if d is None or d.deadline <= now:
                return None  # a lookup is needed before the next candidate could decide
            v = self._judge(d, head, p)
            if v.__class__ is Pass:
                return self._count(v)
            if refusal is None:
                refusal = v
        return self._count(refusal)

    async def check(self, head, project_id: str, peer: str = "-", trusted: bool = False,
                    p: Presented | None = None):
        if p is None and self.mode != "none":
            p = self._present(head, trusted)  # once: check_now and the lookups below share it
        v = self.check_now(head, project_id, trusted, p, peer)
        if v is not None:
            return v
        if p.login:
            return self._count(await self._login(head, project_id, p, trusted))
        refusal = None
        for key in self._keys(head, p, project_id, peer, trusted):
            d = self.cache.get(key)
            if d is None or d.deadline <= time.monotonic():
                t0 = time.perf_counter()
                d = await self.flights.run(key, lambda key=key: self._decide(key, head, p, project_id, peer,
                                                                             trusted))
                self.lookup_latency.observe(time.perf_counter() - t0)
            v = self._judge(d, head, p)
            if v.__class__ is Pass:
                return self._count(v)
            # the first candidate's refusal, unless a lookup failed (then no refusal is certain: 503)
            if refusal is None or (v.status >= 500 and refusal.status < 500):
                refusal = v
        return self._count(refusal)

    def present_for(self, head, trusted: bool = False) -> Presented | None:
        """The credentials of `head` as this decision point reads them (None with proxy.auth none)."""
        return None if self.mode == "none" else self._present(head, trusted)

    def cookie_name(self, head, trusted: bool) -> bytes:
        return cookie_name(client_scheme(head, trusted, self.scheme) == b"https", self.subdomains)

    def _present(self, head, trusted: bool = False) -> Presented:
        if self.mode == "external":
            p = present(head)
            # the credentials are the decision point's: passed on as sent; what it vouches for
            # (proxy.auth_copy_headers) a client cannot send itself
            p.drop, p.cookie_line, p.kind, p.secret, p.sessions, p.login = (self.external_drop, b"", None, None,
                                                                             (), False)
            if p.answer is LOGIN_METHOD or p.answer is UNAUTHENTICATED:
                p.answer = None  # our own token rules do not apply to the decision point's credentials
            return p
        return present(head, self.cookie_name(head, trusted))

    def _keys(self, head, p: Presented, project_id: str, peer: str = "-", trusted: bool = False) -> list:
        """The cache keys of the candidates to decide on, in order (empty: no credential)."""
        if self.mode == "external":
            # the key is the whole question (method, target, Host, scheme, client address, project,
            # Cookie, Authorization): a decision point may decide by any of them, so a cached answer
            # may only answer the very same question
            if p.question is None:
                p.question = self.external.question(head, p, project_id, policy.forwarded_for(head, peer.encode(),
                                                                                             trusted),
                                                    client_scheme(head, trusted, self.scheme))
                p.digest = hashlib.sha256(p.question).digest()
            return [(p.digest, project_id)]
        if p.kind == "session":
            if p.digests is None:
                p.digests = tuple(hashlib.sha256(s).digest() for s in p.sessions)
            return [(digest, project_id) for digest in p.digests]
        if p.secret is None:
            return []
        if p.digest is None:
            p.digest = hashlib.sha256(p.secret).digest()
        return [(p.digest, project_id)]

    def _count(self, v):
        if isinstance(v, Pass):
            self.allowed += 1
        else:
            self.refused += 1
        return v

    def _judge(self, d: Decision, head, p: Presented):
        """The Answer or Pass decision `d` gives this request (not counted)."""
        if d.answer is not None:
            return d.answer
        if self.mode == "external":
            return Pass(d, p)
        if d.account_id is None:
            return UNAUTHENTICATED
        if d.role is None:
            return FORBIDDEN
        if d.role == "viewer" and (head.method not in SAFE_METHODS or head.upgrade is not None):
            return READ_ONLY
        return Pass(d, p)

    async def _decide(self, key, head, p: Presented, project_id: str, peer: str, trusted: bool) -> Decision:
        generation = self.generation
        now = time.monotonic()
        if self.mode == "external":
            d = await self.external.decide(p.question, project_id)
            d.deadline = now + self.ttl
            d.project_id = project_id
            if d.answer is None or d.answer.status in (401, 403):
                self.cache.put(key, d, positive=d.answer is None)
            return d
        d = await self._lookup(p.kind, key[0], project_id, now)
        if d.answer is None and self.link.listening and generation == self.generation:
            # only access is "positive": an account probing random project ids (403s) churns the
            # refusals' side, never the decisions in use
            self.cache.put(key, d, positive=d.role is not None)
        return d

    async def _lookup(self, kind: str, digest: bytes, project_id: str, now: float) -> Decision:
        from cocalc_ctl.state.hub_access import SESSION_DECISION_SQL, TOKEN_DECISION_SQL

        sql = TOKEN_DECISION_SQL if kind == "token" else SESSION_DECISION_SQL
        routes = self.routes
        generation = routes.generation if routes is not None else 0  # before the query, as a route lookup
        try:
            if self._batches is not None:
                row = await self._batches[kind].get((digest, project_id))
            else:
                row = await self.link.fetchone(sql, (digest, project_id))
        except Exception:  # noqa: BLE001 - fail closed
            return Decision(0.0, project_id, answer=HUB_DOWN)
        if row is None:
            return Decision(now + self.ttl, project_id)
        if len(row) > 4:  # the batched form brings the project's route along: the request needs it next
            if routes is not None:
                routes.prime(project_id, generation, row[4:])
            row = row[:4]
        account_id, token_id, role, expires_at = str(row[0]), str(row[1]), row[2], row[3]
        expires = float("inf")
        if expires_at is not None:
            expires = now + (expires_at - dt.datetime.now(dt.timezone.utc)).total_seconds()
        if now - self._touched.get(token_id, -TOUCH_EVERY) >= TOUCH_EVERY:
            # the database writes last-used at most once a minute anyway: a flood of lookups for one
            # token (e.g. 403s for random project ids) costs one round trip a minute, not one per miss
            if len(self._touched) >= TOUCHED_MAX:
                self._touched.clear()
            self._touched[token_id] = now
            asyncio.ensure_future(self._touch(token_id))
        return Decision(min(now + self.ttl, expires), project_id, account_id, token_id, role,
                        extra=b"%s: %s\r\n" % (ACCOUNT_HEADER, account_id.encode()), expires=expires)

    async def _touch(self, token_id: str) -> None:
        from cocalc_ctl.state.hub_access import TOUCH_TOKEN_SQL

        try:
            await self.link.fetchone(TOUCH_TOKEN_SQL, (token_id,))
        except Exception:  # noqa: BLE001 - last-used is best effort
            pass

    async def _login(self, head, project_id: str, p: Presented, trusted: bool) -> Answer:
        """`?token=` on GET/HEAD: check it, create a session, 303 to the URL without the token."""
        from cocalc_ctl.state.hub_access import CREATE_SESSION_SQL, hash_secret, new_session

        if self.mode != "builtin":
            return UNAUTHENTICATED
        d = await self._lookup("token", hashlib.sha256(p.secret).digest(), project_id, time.monotonic())
        if d.answer is not None:
            return d.answer
        if d.account_id is None:
            return UNAUTHENTICATED
        if d.role is None:
            return FORBIDDEN
        session = new_session()
        now = dt.datetime.now(dt.timezone.utc)
        lifetime = min(self.session_ttl, d.expires - time.monotonic())  # never past the token's expiry
        if lifetime < 1:
            return UNAUTHENTICATED
        expires = now + dt.timedelta(seconds=lifetime)
        try:
            await self.link.fetchone(CREATE_SESSION_SQL, (hash_secret(session), d.token_id, d.account_id,
                                                          project_id, expires))
        except Exception:  # noqa: BLE001
            return HUB_DOWN
        https = client_scheme(head, trusted, self.scheme) == b"https"
        secure = b"; Secure" if https else b""
        path = b"/" if self.subdomains else b"/%s/" % project_id.encode()
        cookie = b"%s=%s; Path=%s; Max-Age=%d; HttpOnly; SameSite=Lax%s" % (
            cookie_name(https, self.subdomains), session.encode(), path, int(lifetime), secure)
        headers = (b"location: %s\r\nset-cookie: %s\r\ncache-control: no-store\r\nreferrer-policy: no-referrer\r\n"
                   % (without_token(head.target), cookie))
        return Answer(303, "login: session created", b"", headers=headers)

    # -- invalidation ------------------------------------------------------------------------------

    def _reset(self) -> None:
        """The listener (re)connected or was lost: forget everything; check open WebSockets again."""
        self.generation += 1
        self.cache.clear()
        self.flights.forget()
        self._recheck(list(self.tunnels))

    def _note(self, payload: str) -> None:
        self.notifications += 1
        self.generation += 1
        self.flights.forget()
        kind, _, rest = payload.partition(":")
        if kind == "account" and rest:
            match = lambda d: d.account_id == rest  # noqa: E731
        elif kind == "token" and rest:
            match = lambda d: d.token_id == rest  # noqa: E731
        elif kind == "grant" and rest.count(":") == 1:
            project_id, account_id = rest.split(":")
            match = lambda d: d.project_id == project_id and d.account_id == account_id  # noqa: E731
        else:
            self.cache.clear()
            self._recheck(list(self.tunnels))
            return
        self.cache.pos.drop_where(lambda _, d: match(d))
        if kind != "grant":
            self.cache.neg.clear()  # a token or account valid again (un-revoked, enabled, expiry moved)
        self._recheck([t for t, (_, _, _, d) in self.tunnels.items() if match(d)])

    # -- open WebSockets ---------------------------------------------------------------------------

    def watch(self, tunnel, head, verdict: Pass, project_id: str, generation: int) -> None:
        """Keep an open WebSocket under watch; `generation` as it was when it was checked (an
        invalidation that came while its upstream was answering the upgrade checks it again at once)."""
        if self.mode == "builtin":
            self.tunnels[tunnel] = (head, verdict.presented, project_id, verdict.decision)
            self._expire_at(tunnel, verdict.decision)
            if generation != self.generation:
                self._recheck([tunnel])

    def unwatch(self, tunnel) -> None:
        self.tunnels.pop(tunnel, None)
        timer = self.expiry.pop(tunnel, None)
        if timer is not None:
            timer.cancel()

    def _expire_at(self, tunnel, d: Decision) -> None:
        """A credential's expiry sends no NOTIFY: check the tunnel again when its decision's credential
        expires (the check closes it unless the hub still accepts the credential then)."""
        timer = self.expiry.pop(tunnel, None)
        if timer is not None:
            timer.cancel()
        if d.expires != float("inf"):
            delay = max(0.0, d.expires - time.monotonic()) + 0.05
            self.expiry[tunnel] = asyncio.get_running_loop().call_later(delay, self._expired, tunnel)

    def _expired(self, tunnel) -> None:
        self.expiry.pop(tunnel, None)
        if tunnel in self.tunnels:
            self._recheck([tunnel])

    def _recheck(self, tunnels: list) -> None:
        if tunnels:
            asyncio.get_running_loop().create_task(self._recheck_tunnels(tunnels))

    async def _recheck_tunnels(self, tunnels: list) -> None:
        """Ask again for each affected WebSocket (one query per credential); close the refused ones.
        A failed lookup closes nothing: the listener's reconnect checks every tunnel again."""
        for tunnel in tunnels:
            entry = self.tunnels.get(tunnel)
            if entry is None or tunnel.closed:
                continue
            head, p, project_id, _ = entry
            try:
                v = await self.check(head, project_id, p=p)
            except Exception:  # noqa: BLE001
                continue
            if isinstance(v, Pass):
                if tunnel in self.tunnels:
                    self.tunnels[tunnel] = (head, p, project_id, v.decision)
                    self._expire_at(tunnel, v.decision)
            elif v.status < 500 and not tunnel.closed:
                self.websockets_closed += 1
                tunnel.close(note=f"access revoked: {v.note}")

    def metrics(self) -> dict:
        return {
            "cocalc_proxy_auth_decisions_total_allowed": ("counter", "Requests access control let through.",
                                                          self.allowed),
            "cocalc_proxy_auth_decisions_total_refused": ("counter", "Requests access control answered itself "
                                                          "(401, 403, 400, 503, login 303).", self.refused),
            "cocalc_proxy_auth_lookups_total": ("counter", "Access decisions looked up (cache misses).", self.lookups),
            "cocalc_proxy_auth_cache_entries": ("gauge", "Cached access decisions.", len(self.cache)),
            "cocalc_proxy_auth_notifications_total": ("counter", "Access NOTIFY messages received.",
                                                      self.notifications),
            "cocalc_proxy_auth_websockets_closed_total": ("counter", "Open WebSockets closed because access went.",
                                                          self.websockets_closed),
        }


async def _decisions(sql: str, conn, keys: list) -> dict:
    """A batched decision lookup: {(hash, project): (account, token, role, expires, exists, host, url)} of
    the valid credentials among `keys` (the others get no row: unauthenticated)."""
    cur = await conn.execute(sql, ([k[0] for k in keys], [k[1] for k in keys]))
    return {keys[r[0] - 1]: r[1:] for r in await cur.fetchall()}


async def _token_decisions(conn, keys: list) -> dict:
    from cocalc_ctl.state.hub_access import TOKEN_DECISIONS_SQL

    return await _decisions(TOKEN_DECISIONS_SQL, conn, keys)


async def _session_decisions(conn, keys: list) -> dict:
    from cocalc_ctl.state.hub_access import SESSION_DECISIONS_SQL

    return await _decisions(SESSION_DECISIONS_SQL, conn, keys)


def parse_auth_url(url: str | None) -> tuple[str, int, bool, bytes, str]:
    """`http[s]://HOST[:PORT][/PATH[?QUERY]]` -> (host, port, tls, Host header, path); ValueError if not."""
    import re

    m = re.fullmatch(r"(https?)://(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9.-]+)(?::([0-9]{1,5}))?(/[\x21-\x7e]*)?",
                     (url or "").strip(), re.ASCII)
    if m is None or "#" in (m.group(4) or ""):
        raise ValueError(f"not an http(s) URL: {url!r}")
    tls = m.group(1) == "https"
    port = int(m.group(3) or (443 if tls else 80))
    if not 0 < port < 65536:
        raise ValueError(f"bad port in {url!r}")
    host = m.group(2)
    hostport = (host + (f":{m.group(3)}" if m.group(3) else "")).encode()
    return host.strip("[]"), port, tls, hostport, m.group(4) or "/"


class ExternalAuth:
    """`proxy.auth: external`: one GET to `auth_url` per decision (see the module docstring)."""

    def __init__(self, url: str | None, timeout: float, copy_headers: tuple):
        self.host, self.port, self.tls, self.hostport, self.path = parse_auth_url(url)
        self.timeout = float(timeout)
        self.copy = frozenset(h.lower().encode() for h in copy_headers)

    def question(self, head, p: Presented, project_id: str, client: bytes, scheme: bytes) -> bytes:
        """The request that asks about `head`; `client`: the X-Forwarded-For the upstream gets."""
        lines = [b"GET %s HTTP/1.1" % self.path.encode(), b"host: " + self.hostport, b"connection: close",
                 b"x-original-method: " + head.method, b"x-original-uri: " + head.target,
                 b"x-forwarded-method: " + head.method, b"x-forwarded-uri: " + head.target,
                 b"x-forwarded-host: " + head.host, b"x-forwarded-proto: " + scheme,
                 b"x-forwarded-for: " + client, b"x-cocalc-project: " + project_id.encode()]
        if head.upgrade is not None:  # a WebSocket is no plain GET: the decision point may tell them apart
            lines.append(b"x-original-upgrade: " + head.upgrade)
        if p.raw:
            lines.append(p.raw)
        return b"\r\n".join(lines) + b"\r\n\r\n"

    async def decide(self, request: bytes, project_id: str) -> Decision:
        writer = None
        try:
            async with asyncio.timeout(self.timeout):
                ssl = None
                if self.tls:
                    import ssl as ssl_mod

                    ssl = ssl_mod.create_default_context()
                reader, writer = await asyncio.open_connection(self.host, self.port, ssl=ssl)
                writer.write(request)
                resp_lines = await http1.read_head_lines(reader, max_bytes=policy.RESPONSE_ACCEPT_BYTES,
                                                         max_lines=policy.RESPONSE_ACCEPT_FIELDS + 1, strict=False)
            if resp_lines is None:
                raise ConnectionError("no answer")
            resp = http1.parse_response_head(resp_lines)
        except Exception:  # noqa: BLE001 - timeout, refused, garbled: fail closed
            return Decision(0.0, project_id, answer=AUTH_DOWN)
        finally:
            if writer is not None:
                writer.close()
        if 200 <= resp.status < 300:
            extra = b"".join(b"%s: %s\r\n" % (lname, value) for lname, _, value in resp.headers if lname in self.copy)
            return Decision(0.0, project_id, extra=extra)
        if resp.status == 401:
            return Decision(0.0, project_id, answer=UNAUTHENTICATED)
        if resp.status == 403:
            return Decision(0.0, project_id, answer=FORBIDDEN)
        return Decision(0.0, project_id, answer=AUTH_DOWN)
