"""Which upstream a request goes to: target validation and the two route tables.

A request target is accepted only in origin form `/<project_id>[/...]` with a canonical lowercase
uuid, no dot segments and no percent-encoded slash, backslash, dot or NUL (those are how `..`
sneaks past a proxy and is decoded by the server behind it). The upstream address always comes
from registered state: the host's sqlite (`projects.http_port`, host mode) or the hub's PostgreSQL
(`projects.host_id` -> `project_hosts.internal_url`, hub mode). Nothing in the request can name
a host or a port.
"""

from __future__ import annotations

import ipaddress
import re
import time
from dataclasses import dataclass
from pathlib import Path

from cocalc_ctl.ids import is_uuid
from cocalc_ctl.proxy.http1 import HttpError

# Percent-encodings that decode to a path delimiter or to something a server may normalise.
_ENCODED_DANGER = (b"%2f", b"%2e", b"%5c", b"%00", b"\\")
_VISIBLE_ASCII = re.compile(rb"[\x21-\x7e]+")
# The common case in one match: `/<uuid>` then `/...` or `?...` of visible ASCII without `#`, `\` or `%`.
# Anything else takes the detailed checks below (which also produce the precise error).
_PLAIN_TARGET = re.compile(rb"/([0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12})(?:[/?][\x21-\x22\x24\x26-\x5b\x5d-\x7e]*)?")
_DOT_SEGMENT = re.compile(rb"/\.\.?(?:/|\?|$)")


def project_from_target(target: bytes) -> str:
    """The project id a request target addresses; HttpError(400) for hostile forms, 404 otherwise."""
    m = _PLAIN_TARGET.fullmatch(target)
    if m is not None and _DOT_SEGMENT.search(target.split(b"?", 1)[0]) is None:
        return m.group(1).decode("ascii")
    if not target.startswith(b"/"):
        raise HttpError(400, "only origin-form request targets are accepted")
    if target.startswith(b"//"):
        raise HttpError(400, "request target starts with //")
    if _VISIBLE_ASCII.fullmatch(target) is None or b"#" in target:
        raise HttpError(400, "invalid character in the request target")
    path = target.split(b"?", 1)[0]
    lower = path.lower()
    for bad in _ENCODED_DANGER:
        if bad in lower:
            raise HttpError(400, "encoded slash, dot or backslash in the path")
    segments = path.split(b"/")
    for seg in segments:
        if seg == b".." or seg == b".":
            raise HttpError(400, "dot segment in the path")
    first = segments[1].decode("ascii")
    if not is_uuid(first):
        raise HttpError(404, "no such project")
    return first


_HOST_PORT = re.compile(rb"(.*?)(?::[0-9]{1,5})?")


def project_from_host(host: bytes, domain: bytes) -> str | None:
    """Subdomain mode: the project a Host field `<project_id>.<domain>[:port]` names; None for a Host
    outside the domain (the proxy's own name: /healthz, /metrics); HttpError(400) for anything else
    under the domain (another label, a trailing dot, not a canonical uuid) or a malformed Host."""
    name = _HOST_PORT.fullmatch(host.lower()).group(1)
    if name == domain or not name.endswith(b"." + domain):
        if name.endswith(b"." + domain + b".") or name == domain + b".":
            raise HttpError(400, "Host with a trailing dot")
        return None
    label = name[:-len(domain) - 1]
    if len(label) != 36 or not is_uuid(label.decode("ascii", "replace")):
        raise HttpError(400, "Host is not <project_id>.<project_domain>")
    return label.decode("ascii")


def check_target(target: bytes) -> None:
    """The target rules without the project segment (subdomain mode): origin form, visible ASCII, no dot
    segment, no encoded slash, dot or backslash; HttpError(400) otherwise."""
    if _VISIBLE_ASCII.fullmatch(target) is None or b"#" in target:
        raise HttpError(400, "invalid character in the request target")
    if not target.startswith(b"/"):
        raise HttpError(400, "only origin-form request targets are accepted")
    if target.startswith(b"//"):
        raise HttpError(400, "request target starts with //")
    path = target.split(b"?", 1)[0]
    lower = path.lower()
    for bad in _ENCODED_DANGER:
        if bad in lower:
            raise HttpError(400, "encoded slash, dot or backslash in the path")
    if _DOT_SEGMENT.search(path) is not None:
        raise HttpError(400, "dot segment in the path")


class Addressing:
    """Which project a request addresses: the ONE answer both the fast and the stream path use.

    Path mode (no `proxy.project_domain`): `/<project_id>/...` (project_from_target). Subdomain mode:
    Host `<project_id>.<domain>` with the target passed unchanged; a Host outside the domain reaches
    only /healthz and /metrics (anything else 404). `cookie_path` is what a project's Set-Cookie Path
    is narrowed to (path mode) or None (subdomain mode: the origin is the project's own).
    """

    __slots__ = ("domain",)

    def __init__(self, domain: str | None = None):
        self.domain = domain.lower().encode() if domain else None

    def local(self, head) -> bool:
        """A request for the proxy itself (/healthz, /metrics), not for a project."""
        if head.target != b"/healthz" and head.target != b"/metrics":
            return False
        if self.domain is None:
            return True
        try:
            return project_from_host(head.host, self.domain) is None
        except HttpError:
            return False  # a bad project Host: project() refuses it

    def project(self, head) -> str:
        if self.domain is None:
            return project_from_target(head.target)
        pid = project_from_host(head.host, self.domain)
        if pid is None:
            raise HttpError(404, "no such project")
        check_target(head.target)
        return pid

    def cookie_path(self, project_id: str) -> bytes | None:
        return None if self.domain is not None else b"/%s/" % project_id.encode()


@dataclass(frozen=True)
class Route:
    host: str
    port: int
    host_id: str | None = None  # hub mode: the project host, for cache invalidation


class HostRoutes:
    """Host mode: `/<project>/...` -> 127.0.0.1:<projects.http_port> from the host sqlite.

    `project stop` clearing the port must take effect for the very next request, so an answer is
    only reused while the database provably has not changed since it was read: the host database is
    in WAL mode, where every commit rewrites the wal-index header in the `-shm` file (its change
    counter, frame count and checksums; two copies, written in turn). That header is mapped
    read-only and compared with the copy taken before the cached answers were read; any difference,
    or the two copies disagreeing (a commit in progress), drops the whole cache and reads sqlite
    again. Our open connection holds a shared lock that keeps the WAL (and so the `-shm` file) from
    being removed or switched off. Without WAL the lookup simply runs on every request.
    """

    mode = "host"

    def __init__(self, data_dir: Path, upstream_host: str = "127.0.0.1"):
        from cocalc_ctl.state import host_db

        self._conn = host_db.connect_readonly(Path(data_dir))
        self._lookup = host_db.project_http_route
        self.upstream_host = upstream_host
        self._routes: dict[int, Route] = {}  # immutable, shared: one per port
        self._cache: dict[str, Route] = {}  # running projects only
        self._seen = b""  # wal-index header the cached answers were read under
        self._shm = self._map_wal_index(host_db.db_path(Path(data_dir)))
        self.lookups = 0

    def _map_wal_index(self, db: Path):
        import mmap

        try:
            if self._conn.execute("PRAGMA journal_mode").fetchone()[0].lower() != "wal":
                return None
            with open(f"{db}-shm", "rb") as f:
                shm = mmap.mmap(f.fileno(), _WAL_HDR * 2, access=mmap.ACCESS_READ)
        except (OSError, ValueError, IndexError, AttributeError):
            return None
        return shm

    async def start(self) -> None:
        pass

    async def close(self) -> None:
        if self._shm is not None:
            self._shm.close()
        self._conn.close()

    async def resolve(self, project_id: str) -> Route:
        return self.resolve_now(project_id)

    def resolve_now(self, project_id: str) -> Route:
        shm = self._shm
        if shm is not None:
            hdr = shm[:_WAL_HDR * 2]
            if hdr == self._seen:
                hit = self._cache.get(project_id)
                if hit is not None:
                    return hit
            elif hdr[:_WAL_HDR] == hdr[_WAL_HDR:]:
                self._cache.clear()  # read before the lookup: a commit racing it only empties the cache again
                self._seen = hdr
            else:
                self._cache.clear()  # a commit is being published: do not cache anything now
                self._seen = b""
        route = self._read(project_id)  # errors are not cached: a request cannot make the cache grow
        if shm is not None and self._seen and len(self._cache) < _CACHE_MAX:
            self._cache[project_id] = route
        return route

    def _read(self, project_id: str) -> Route:
        self.lookups += 1
        row = self._lookup(self._conn, project_id)
        if row is None:
            raise HttpError(404, "no such project")
        state, port = row
        if port is None or state == "stopped":
            raise HttpError(502, "project is not running")
        if not isinstance(port, int) or not 0 < port < 65536:
            raise HttpError(502, "project has an invalid http port")
        route = self._routes.get(port)
        if route is None:
            route = self._routes[port] = Route(self.upstream_host, port)
        return route


_WAL_HDR = 48  # bytes in one copy of the wal-index header (sqlite's walformat: two copies at offset 0)
_CACHE_MAX = 10000  # cached routes; past it lookups go to sqlite


def _fresh(cached: HttpError) -> HttpError:
    """A new exception for a cached refusal. Raising the cached instance itself would chain every raise's
    traceback onto it (Python prepends to an exception's existing __traceback__), keeping the frames of
    every request that hit the entry alive until it expires: memory growing with request rate x TTL,
    not with the cache's bound."""
    return HttpError(cached.status, cached.reason)


def parse_internal_url(url: str | None) -> tuple[str, int] | None:
    """`http://HOST:PORT` (optionally with a trailing `/`) -> (host, port); None if unusable."""
    if not url:
        return None
    m = re.fullmatch(r"http://(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9.-]+):([0-9]{1,5})/?", url.strip(), re.ASCII)
    if m is None:
        return None
    host, port = m.group(1), int(m.group(2))
    if host.startswith("["):
        try:
            host = str(ipaddress.IPv6Address(host[1:-1]))
        except ValueError:
            return None
    if not 0 < port < 65536:
        return None
    return host, port


class HubRoutes:
    """Hub mode: project -> its host's internal_url, cached for `ttl` seconds in a bounded LRU.

    A listener on the hub's `ROUTE_CHANNEL` (fed by triggers on `projects` and `project_hosts`)
    evicts entries the moment a move or a host change commits. While that listener is down the
    cache is bypassed entirely, so a missed NOTIFY can never route to a stale host. Answers (routes)
    and refusals (404, 502: any request can name a random uuid) live in separately bounded LRUs, so
    refusals cannot push out routes in use; concurrent misses for one project share one lookup, run
    on the link's connection pool (hublink.py).
    """

    mode = "hub"

    def __init__(self, link, ttl: float = 5.0, cache_size: int = 10000):
        from cocalc_ctl.proxy.hublink import HubLink  # hub mode only (it brings psycopg_pool)
        from cocalc_ctl.proxy.lru import SingleFlight, SplitCache
        from cocalc_ctl.state.hub_db import ROUTE_CHANNEL

        if isinstance(link, str):
            link = HubLink(link)
        self.link = link
        self.ttl = ttl
        from cocalc_ctl.proxy.metrics import Histogram

        self._cache = SplitCache(cache_size, max(16, cache_size // 4))
        self._flights = SingleFlight()
        self.notifications = 0
        self._generation = 0  # bumped by every eviction: a lookup that raced one is not cached
        self.lookup_latency = Histogram()  # seconds from a miss to its answer (routes this process looked up)
        # batched lookups when the link offers them (HubLink); a link with only fetchone() asks one by one
        self._batch = link.batch(_routes_query) if hasattr(link, "batch") else None
        link.subscribe(ROUTE_CHANNEL, self._note, self._reset)

    @property
    def lookups(self) -> int:
        return self._flights.started

    @property
    def db_errors(self) -> int:
        return self.link.db_errors

    async def start(self) -> None:
        await self.link.start()

    async def close(self) -> None:
        await self.link.close()

    def _reset(self) -> None:
        self._generation += 1
        self._cache.clear()
        self._flights.forget()

    def _note(self, payload: str) -> None:
        self.notifications += 1
        self.evict(payload)

    def evict(self, payload: str) -> None:
        self._generation += 1
        if payload.startswith("host:"):
            host_id = payload[5:]
            self._cache.pos.drop_where(lambda _, hit: isinstance(hit[1], Route) and hit[1].host_id == host_id)
            self._cache.neg.clear()  # a refusal (no reachable host) may name no host: forget them all
            self._flights.forget()
        elif is_uuid(payload):
            self._cache.pop(payload)
            self._flights.forget(payload)
        else:
            self._cache.clear()
            self._flights.forget()

    def resolve_now(self, project_id: str) -> Route | None:
        """The cached route (or raises the cached error); None when a database lookup is needed."""
        if not self.link.listening:
            return None
        hit = self._cache.get(project_id)
        if hit is None or hit[0] <= time.monotonic():
            return None
        if isinstance(hit[1], HttpError):
            raise _fresh(hit[1])
        return hit[1]

    async def resolve(self, project_id: str) -> Route:
        hit = self.resolve_now(project_id)
        if hit is not None:
            return hit
        t0 = time.perf_counter()
        result = await self._flights.run(project_id, lambda: self._lookup_and_cache(project_id))
        self.lookup_latency.observe(time.perf_counter() - t0)
        if isinstance(result, HttpError):
            raise _fresh(result)
        return result

    @property
    def generation(self) -> int:
        """Take before a lookup elsewhere (a decision bringing the route along) and pass to prime()."""
        return self._generation

    def prime(self, project_id: str, generation: int, row) -> None:
        """Cache a route another query read (row: exists, host_id, internal_url), under the same rule as
        our own lookups: only while listening and if no invalidation came since `generation` was taken;
        a route already cached (fresh) is left alone."""
        if not self.link.listening or generation != self._generation:
            return
        hit = self._cache.get(project_id)
        now = time.monotonic()
        if hit is not None and hit[0] > now:
            return
        exists, host_id, internal_url = row
        result = _route_of((host_id, internal_url)) if exists else HttpError(404, "no such project")
        self._cache.put(project_id, (now + self.ttl, result), positive=isinstance(result, Route))

    async def _lookup_and_cache(self, project_id: str) -> Route | HttpError:
        generation = self._generation
        now = time.monotonic()
        result = await self._lookup(project_id)
        cacheable = not (isinstance(result, HttpError) and result.status >= 503)
        if self.link.listening and cacheable and generation == self._generation:
            self._cache.put(project_id, (now + self.ttl, result), positive=isinstance(result, Route))
        return result

    async def _lookup(self, project_id: str) -> Route | HttpError:
        from cocalc_ctl.state.hub_db import PROJECT_ROUTE_SQL

        try:
            if self._batch is not None:
                row = await self._batch.get(project_id)
            else:
                row = await self.link.fetchone(PROJECT_ROUTE_SQL, (project_id,))
        except Exception:  # noqa: BLE001
            return HttpError(503, "hub database unavailable")
        if row is None:
            return HttpError(404, "no such project")
        return _route_of(row)


def _route_of(row) -> Route | HttpError:
    """(host_id, internal_url) of an existing project -> its Route, or 502 without a reachable host."""
    host_id, internal_url = row
    target = parse_internal_url(internal_url)
    if host_id is None or target is None:
        return HttpError(502, "project has no reachable host")
    return Route(target[0], target[1], str(host_id))


async def _routes_query(conn, keys: list) -> dict:
    """The batched route lookup: {project_id: (host_id, internal_url)} of those that exist."""
    from cocalc_ctl.state.hub_db import PROJECT_ROUTES_SQL

    cur = await conn.execute(PROJECT_ROUTES_SQL, (keys,))
    return {r[0]: (r[1], r[2]) for r in await cur.fetchall()}
