"""The hub-mode proxy's link to PostgreSQL: a connection pool for lookups and one LISTEN connection.

Route lookups (routing.HubRoutes) and access decisions (access.py) run on a
`psycopg_pool.AsyncConnectionPool`, so a slow query never queues every other lookup behind one
connection. One extra connection LISTENs on the channels subscribers name; every subscriber's
`reset()` is called when the listener (re)connects and when it is lost, and `listening` is false
while it is down: a cache must not answer while invalidations could be missed.

psycopg_pool is imported here only, and this module only by `proxy serve --mode hub`, so the
short commands keep their start-up time.
"""

from __future__ import annotations

import asyncio
from typing import Callable


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
