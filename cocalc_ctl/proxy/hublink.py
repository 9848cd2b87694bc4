"""The hub-mode proxy's link to PostgreSQL: a connection pool for lookups and one LISTEN connection.

Route lookups (routing.HubRoutes) and access decisions (access.py) run on a
`psycopg_pool.AsyncConnectionPool`, so a slow query never queues every other lookup behind one
connection. One extra connection LISTENs on the channels subscribers name; every subscriber's
`reset()` is called when the listener (re)connects and when it is lost, and `listening` is false
while it is down: a cache must not answer while invalidations could be missed.

Cache misses are batched (`Batch`): the lookups of one kind (routes, token decisions, session
decisions) that arrive within one event-loop turn, or while the previous batch of that kind is still
waiting for its answer, go to the hub as ONE query (`= ANY(array)` / `unnest(arrays)`), so 64 clients
missing at once cost a few round trips, pool checkouts and event-loop wake-ups instead of 64 of each.
Single-flight per key stays above this (routing.py, access.py): a batch never holds one key twice.

psycopg_pool is imported here only, and this module only by `proxy serve --mode hub`, so the
short commands keep their start-up time.
"""

from __future__ import annotations

import asyncio
from itertools import islice
from typing import Awaitable, Callable

MAX_BATCH = 256  # keys in one batched query; more wait for the next one


class HubLink:
    def __init__(self, dsn: str, pool_size: int = 4, connect_timeout: float = 10.0):
        self.dsn = dsn
        self.pool_size = max(1, int(pool_size))
        self.connect_timeout = connect_timeout
        self.pool = None
        self.listening = False
        self.notifications = 0
        self.db_errors = 0
        self._subs: dict[str, list[tuple[Callable[[str], None], Callable[[], None]]]] = {}
        self._task: asyncio.Task | None = None
        self._ready = asyncio.Event()
        self._started = False
        self._closed = False
        self.batches = 0       # batched queries sent (metrics: lookups / batches = keys per query)
        self.batched_keys = 0

    def batch(self, query: Callable[[object, list], Awaitable[dict]]) -> "Batch":
        """A batcher for one kind of lookup: `query(conn, keys) -> {key: row}` answers many keys at once."""
        return Batch(self, query)

    async def run_batch(self, query, keys: list) -> dict:
        """`query(conn, keys)` on a pooled connection; retried once on a broken connection, as fetchone."""
        from psycopg_pool import PoolTimeout

        self.batches += 1
        self.batched_keys += len(keys)
        last = None
        for _ in (1, 2):
            try:
                async with self.pool.connection() as conn:
                    return await query(conn, keys)
            except PoolTimeout:
                self.db_errors += 1
                raise
            except Exception as exc:  # noqa: BLE001 - every database failure is "hub unavailable" to a caller
                self.db_errors += 1
                last = exc
        raise last

    def subscribe(self, channel: str, on_note: Callable[[str], None], reset: Callable[[], None]) -> None:
        """Call on_note(payload) for each NOTIFY on `channel`; reset() whenever notes may have been missed.
        Subscribe before start()."""
        self._subs.setdefault(channel, []).append((on_note, reset))

    async def start(self) -> None:
        if self._started:
            return
        self._started = True
        from psycopg_pool import AsyncConnectionPool

        self.pool = AsyncConnectionPool(self.dsn, min_size=1, max_size=self.pool_size, open=False,
                                        kwargs={"autocommit": True, "connect_timeout": int(self.connect_timeout)},
                                        timeout=self.connect_timeout, name="cocalc-proxy-hub")
        await self.pool.open(wait=False)
        try:  # a hub that cannot be reached at start is a configuration error: say so and exit
            async with self.pool.connection() as conn:
                await conn.execute("SELECT 1")
        except Exception as exc:  # noqa: BLE001
            await self.pool.close()
            from cocalc_ctl.errors import OperationFailed

            reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise OperationFailed(f"cannot reach the hub database: {reason}"[:300],
                                  hint="check hub_dsn and that PostgreSQL is running") from None
        self._task = asyncio.create_task(self._listen_forever())
        try:
            await asyncio.wait_for(self._ready.wait(), self.connect_timeout)
        except asyncio.TimeoutError:
            pass  # serve uncached; the listener keeps retrying

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except (asyncio.CancelledError, Exception):
                pass
        if self.pool is not None:
            await self.pool.close()

    async def fetchone(self, sql: str, params: tuple):
        """One row (or None) of a query on a pooled connection; retried once on a broken connection.
        Raises the last error when the hub cannot answer."""
        from psycopg_pool import PoolTimeout

        last = None
        for _ in (1, 2):
            try:
                async with self.pool.connection() as conn:
                    cur = await conn.execute(sql, params)
                    return await cur.fetchone() if cur.description else None
            except PoolTimeout:
                self.db_errors += 1
                raise  # no connection within the timeout: waiting as long again would not help
            except Exception as exc:  # noqa: BLE001 - every database failure is "hub unavailable" to a caller
                self.db_errors += 1
                last = exc
        raise last

    def _reset_all(self) -> None:
        for subs in self._subs.values():
            for _, reset in subs:
                reset()

    async def _listen_forever(self) -> None:
        import psycopg

        delay = 0.5
        while True:
            try:
                conn = await psycopg.AsyncConnection.connect(self.dsn, autocommit=True,
                                                             connect_timeout=int(self.connect_timeout))
                async with conn:
                    for channel in self._subs:
                        await conn.execute(f"LISTEN {channel}")
                    self._reset_all()  # anything cached while we were deaf may be stale
                    self.listening = True
                    self._ready.set()
                    delay = 0.5
                    async for note in conn.notifies():
                        self.notifications += 1
                        for on_note, reset in self._subs.get(note.channel, ()):
                            try:
                                on_note(note.payload)
                            except Exception:  # noqa: BLE001 - a subscriber's bug: forget rather than go stale
                                reset()
            except asyncio.CancelledError:
                self.listening = False
                raise
            except Exception:  # noqa: BLE001 - reconnect after any failure
                self.db_errors += 1
            self.listening = False
            self._reset_all()
            await asyncio.sleep(delay)
            delay = min(delay * 2, 10)


class Batch:
    """Lookups of one kind, answered many keys per query.

    `get(key)` returns a future. The first key after a quiet moment schedules a flush for the end of
    this event-loop turn (`call_soon`): whatever else missed in the same turn joins it. Up to the pool's
    size of flushes run at once; each takes every key pending when it starts (at most MAX_BATCH) and,
    when its answer is in, takes what arrived meanwhile, so under load the batches grow instead of the
    queue of single queries. A failed query fails exactly the keys it carried (callers fail closed).
    """

    __slots__ = ("link", "query", "pending", "flushing", "scheduled", "_tasks")

    def __init__(self, link: HubLink, query):
        self.link = link
        self.query = query
        self.pending: dict = {}  # key -> future, in arrival order
        self.flushing = 0
        self.scheduled = False
        self._tasks: set = set()

    def get(self, key) -> asyncio.Future:
        fut = self.pending.get(key)
        if fut is None:
            loop = asyncio.get_running_loop()
            fut = self.pending[key] = loop.create_future()
            if not self.scheduled:
                self.scheduled = True
                loop.call_soon(self._kick)
        return fut

    def _kick(self) -> None:
        self.scheduled = False
        if self.pending and self.flushing < self.link.pool_size:
            self.flushing += 1
            task = asyncio.ensure_future(self._flush())
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _flush(self) -> None:
        try:
            while self.pending:
                keys = list(islice(self.pending, MAX_BATCH))
                futs = [self.pending.pop(k) for k in keys]
                try:
                    found = await self.link.run_batch(self.query, keys)
                except BaseException as exc:
                    err = exc if isinstance(exc, Exception) else RuntimeError("hub lookup cancelled")
                    for f in futs:
                        if not f.done():
                            f.set_exception(err)
                            f.exception()  # retrieved: a caller that gave up must not log "never retrieved"
                    if not isinstance(exc, Exception):
                        raise
                    continue
                for k, f in zip(keys, futs):
                    if not f.done():
                        f.set_result(found.get(k))
        finally:
            self.flushing -= 1
            if self.pending and not self.scheduled:  # keys that arrived while every flush was busy
                self.scheduled = True
                asyncio.get_running_loop().call_soon(self._kick)
