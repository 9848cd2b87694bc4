"""The hub credential: how a host proxy knows a request was forwarded by its hub, and how the hub signs.

Every request the hub proxy forwards to a host carries one header

    x-cocalc-hub-auth: v2.<key_id>.<unix_ts>.<mac>

where `mac` is base64url (no padding) of HMAC-SHA256 keyed by the host's secret (256 bits, made by
the hub, one per host, distributed by `keys sync`) over, one per line: the version, the key id, the
timestamp, the host id, the project id, the method, the Host field, the request target and the
x-cocalc-account value (empty when none). The project id is the one the hub authorized and the one
the host addresses, each by its own `proxy.project_domain`: a hub and a host that read the same
Host and target as different projects (one in path mode, one in subdomain mode) disagree on the mac,
so the host refuses instead of serving a project the hub never authorized. A credential seen on the
wire cannot be replayed for another project, target, method, account or host, nor after its window (`proxy.hub_auth_window`, +-30 s by default: hub and hosts must keep
their clocks within that of each other, NTP). Inside the window the same request may be repeated:
nothing here remembers credentials, so nothing a replay sends can fill or poison a cache.

The host checks it before routing (both the fast and the stream path), answers 401 without a valid
one, then forwards x-cocalc-account re-emitted from the verified head; the credential itself never
reaches a project. A rotation publishes a second key: the host accepts every key it has synced, the
hub signs with the oldest one until the rotation is finished, so no request fails in between.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import re
import stat
import time
from pathlib import Path

from cocalc_ctl.authnames import ACCOUNT_HEADER, HUB_AUTH_HEADER
from cocalc_ctl.proxy.http1 import HttpError

VERSION = b"v2"
KEY_ID_RE = re.compile(rb"[0-9a-f]{16}")
_TS_RE = re.compile(rb"[0-9]{1,12}")
_MAC_RE = re.compile(rb"[A-Za-z0-9_-]{43}")
SECRET_BYTES = 32
DEFAULT_WINDOW = 30
SECRETS_DIR, SECRETS_FILE = "proxy", "hub_secrets"


def secrets_path(secrets_dir: Path) -> Path:
    """Where `keys sync` keeps this host's hub secrets: `key_id base64url(secret)` per line, 0600."""
    return Path(secrets_dir) / SECRETS_DIR / SECRETS_FILE


def mac(secret: bytes, key_id: bytes, ts: bytes, host_id: bytes, project: bytes, method: bytes, host: bytes,
        target: bytes, account: bytes) -> bytes:
    msg = b"\n".join((VERSION, key_id, ts, host_id, project, method, host, target, account))
    return base64.urlsafe_b64encode(hmac.new(secret, msg, hashlib.sha256).digest()).rstrip(b"=")


def credential(secret: bytes, key_id: bytes, host_id: bytes, method: bytes, host: bytes, target: bytes,
               account: bytes = b"", now: float | None = None, *, project: bytes) -> bytes:
    """The header value for one forwarded request to `project` (the project id the hub authorized)."""
    ts = b"%d" % int(time.time() if now is None else now)
    return b".".join((VERSION, key_id, ts,
                      mac(secret, key_id, ts, host_id, project, method, host, target, account)))


def header_line(secret: bytes, key_id: bytes, host_id: bytes, head, account: bytes, project: bytes) -> bytes:
    """`x-cocalc-hub-auth: ...\\r\\n` for the hub's upstream head of `head`, authorized for `project`."""
    return b"%s: %s\r\n" % (HUB_AUTH_HEADER, credential(secret, key_id, host_id, head.method, head.host,
                                                         head.target, account, project=project))


def account_in(extra: bytes) -> bytes:
    """The x-cocalc-account value among the header lines the hub adds (b"" when none): what the host sees."""
    prefix = ACCOUNT_HEADER + b": "
    for line in extra.split(b"\r\n"):
        if line[:len(prefix)].lower() == prefix:
            return line[len(prefix):]
    return b""


def parse_secrets(text: bytes) -> dict[bytes, bytes]:
    """`key_id base64url` lines -> {key_id: secret}; ValueError on anything else."""
    keys = {}
    for n, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line or line.startswith(b"#"):
            continue
        parts = line.split()
        if len(parts) != 2 or KEY_ID_RE.fullmatch(parts[0]) is None:
            raise ValueError(f"line {n} is not `key_id secret`")
        try:
            secret = base64.urlsafe_b64decode(parts[1] + b"=" * (-len(parts[1]) % 4))
        except ValueError:
            raise ValueError(f"line {n}: the secret is not base64url") from None
        if len(secret) != SECRET_BYTES:
            raise ValueError(f"line {n}: the secret is not {SECRET_BYTES} bytes")
        keys[parts[0]] = secret
    return keys


def format_secrets(keys: list[tuple[str, bytes]]) -> bytes:
    return b"".join(b"%s %s\n" % (k.encode(), base64.urlsafe_b64encode(s).rstrip(b"=")) for k, s in keys)


class HubVerifier:
    """Host mode: the check of the hub credential. `verify(head, project)` (`project`: the project id this
    host addresses for `head`, b"" when none) returns the verified x-cocalc-account value (b"" when none)
    or raises HttpError(401).

    The secrets file is re-read when it changes (a `keys sync` after a rotation): every check lstats it
    (one system call) and reads it again only when its inode, size, mtime, mode or owner changed, so a
    key a sync added or dropped counts from the next request on. It must stay a 0600 regular file of
    ours in a 0700 directory.
    """

    def __init__(self, host_id: str, path: Path, window: int = DEFAULT_WINDOW, clock=time.time):
        self.host_id = host_id.encode()
        self.path = Path(path)
        self.window = window
        self.clock = clock
        self.keys: dict[bytes, bytes] = {}
        self._sig = None
        self.problem: str | None = None  # why there are no keys (for the start-up warning)
        self.failures = 0
        self._reload()

    def _reload(self) -> None:
        try:
            st = os.lstat(self.path)
        except FileNotFoundError:
            self.keys, self._sig, self.problem = {}, None, f"no hub secret at {self.path} (run `keys sync`)"
            return
        sig = (st.st_ino, st.st_mtime_ns, st.st_size, st.st_mode, st.st_uid)
        if sig == self._sig:
            return
        self._sig = sig
        try:
            self.keys = load_secrets(self.path)
            self.problem = None if self.keys else f"{self.path} holds no hub secret (run `keys sync`)"
        except (OSError, ValueError) as exc:
            self.keys, self.problem = {}, f"{self.path}: {exc}"

    def verify(self, head, project: bytes | None) -> bytes:
        cred = account = None
        for lname, _, value in head.headers:
            if lname == HUB_AUTH_HEADER:
                if cred is not None:
                    raise self._fail("more than one hub credential")
                cred = value
            elif lname == ACCOUNT_HEADER:
                if account is not None:
                    raise self._fail("more than one x-cocalc-account")
                account = value
        if cred is None:
            raise self._fail("hub credential required")
        parts = cred.split(b".")
        if (len(parts) != 4 or parts[0] != VERSION or KEY_ID_RE.fullmatch(parts[1]) is None
                or _TS_RE.fullmatch(parts[2]) is None or _MAC_RE.fullmatch(parts[3]) is None):
            raise self._fail("malformed hub credential")
        self._reload()  # one lstat: a key `keys sync` dropped is refused from the next request on
        secret = self.keys.get(parts[1])
        if secret is None:
            raise self._fail("unknown hub credential key")
        if abs(self.clock() - int(parts[2])) > self.window:
            raise self._fail("hub credential outside its time window")
        if project is None:  # a target this host cannot address: no project was authorized for it
            raise self._fail("invalid hub credential")
        expected = mac(secret, parts[1], parts[2], self.host_id, project, head.method, head.host, head.target,
                       account or b"")
        if not hmac.compare_digest(expected, parts[3]):
            raise self._fail("invalid hub credential")
        return account or b""

    def _fail(self, reason: str) -> HttpError:
        self.failures += 1
        return HttpError(401, reason)


def load_secrets(path: Path) -> dict[bytes, bytes]:
    """Read the secrets file: a 0600 regular file owned by us in a 0700 directory, never a link."""
    for p, want, kind in ((path.parent, stat.S_ISDIR, "directory"), (path, stat.S_ISREG, "file")):
        st = os.lstat(p)
        if not want(st.st_mode):
            raise ValueError(f"{p} is not a {kind}")
        if st.st_mode & 0o077 or st.st_uid != os.geteuid():
            raise ValueError(f"{p} must be mode {'0700' if kind == 'directory' else '0600'} and ours")
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        data = os.read(fd, 1 << 16)
    finally:
        os.close(fd)
    return parse_secrets(data)


class HubSigner:
    """Hub mode: each host's signing key from the hub database, cached per host.

    The signing key is the oldest one of the host (`hub_db.HUB_SIGNING_KEY_SQL`): during a rotation
    that is the old key, which every host still has; after `--finish` the new one. A LISTEN on the
    keys channel (the table's trigger) evicts a host's entry when its keys change; while that listener
    is down, nothing is cached.
    """

    def __init__(self, dsn: str):
        self.dsn = dsn
        self._cache: dict[str, tuple[bytes, bytes] | None] = {}
        self._listening = False
        self._conn = None
        self._listener = None
        self._lock = None
        self._generation = 0
        self.lookups = 0
        self.db_errors = 0

    async def start(self) -> None:
        import asyncio

        import psycopg

        self._lock = asyncio.Lock()
        try:  # at start, like the route table's: a steady state from the first request on
            self._conn = await psycopg.AsyncConnection.connect(self.dsn, autocommit=True, connect_timeout=10)
        except Exception:
            self.db_errors += 1  # the first lookup retries
        ready = asyncio.Event()
        self._listener = asyncio.create_task(self._listen_forever(ready))
        try:
            await asyncio.wait_for(ready.wait(), 10)
        except asyncio.TimeoutError:
            pass

    async def close(self) -> None:
        import asyncio

        if self._listener is not None:
            self._listener.cancel()
            try:
                await self._listener
            except (asyncio.CancelledError, Exception):
                pass
        if self._conn is not None:
            await self._conn.close()

    async def _listen_forever(self, ready) -> None:
        import asyncio

        import psycopg

        from cocalc_ctl.state.hub_db import KEYS_CHANNEL

        delay = 0.5
        while True:
            try:
                conn = await psycopg.AsyncConnection.connect(self.dsn, autocommit=True, connect_timeout=10)
                async with conn:
                    await conn.execute(f"LISTEN {KEYS_CHANNEL}")
                    self._cache.clear()
                    self._generation += 1
                    self._listening = True
                    ready.set()
                    delay = 0.5
                    async for note in conn.notifies():
                        self._generation += 1
                        if note.payload in self._cache:
                            del self._cache[note.payload]
                        elif not note.payload.startswith("hub:") and len(note.payload) != 36:
                            self._cache.clear()
            except asyncio.CancelledError:
                raise
            except Exception:
                self.db_errors += 1
            self._listening = False
            self._cache.clear()
            ready.set()
            await asyncio.sleep(delay)
            delay = min(delay * 2, 10)

    def key_now(self, host_id: str):
        """(key_id, secret), or None when the host has no key; raises KeyError when a lookup is needed."""
        if not self._listening:
            raise KeyError(host_id)
        return self._cache[host_id]

    async def key(self, host_id: str):
        try:
            return self.key_now(host_id)
        except KeyError:
            pass
        from cocalc_ctl.state.hub_db import HUB_SIGNING_KEY_SQL

        generation = self._generation
        async with self._lock:
            import psycopg

            for attempt in (1, 2):
                try:
                    if self._conn is None or self._conn.closed:
                        self._conn = await psycopg.AsyncConnection.connect(self.dsn, autocommit=True,
                                                                           connect_timeout=10)
                    cur = await self._conn.execute(HUB_SIGNING_KEY_SQL, (host_id,))
                    row = await cur.fetchone()
                    break
                except Exception:
                    self.db_errors += 1
                    self._conn = None
                    if attempt == 2:
                        raise HttpError(503, "hub database unavailable") from None
        self.lookups += 1
        value = None
        if row is not None and KEY_ID_RE.fullmatch(row[0].encode()) and len(bytes(row[1])) == SECRET_BYTES:
            value = (row[0].encode(), bytes(row[1]))
        if self._listening and generation == self._generation and len(self._cache) < 100_000:
            self._cache[host_id] = value
        return value
