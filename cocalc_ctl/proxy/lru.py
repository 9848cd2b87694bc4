"""Bounded caches for the hub-mode proxy: an LRU, a pair of them for answers and refusals, and
single-flight lookups.

A request can name any key (a random project uuid, a random token), so a cache fed by requests
must be bounded, and refusals must not be able to push out answers that are used: `SplitCache`
keeps positive entries and negative ones in two LRUs with their own bounds, so a flood of random
keys only churns the (smaller) negative side. `SingleFlight` makes concurrent misses for one key
share one lookup, so a burst of requests for a cold key costs one database query.
"""

from __future__ import annotations

import asyncio
from collections import OrderedDict


class LRU:
    """An OrderedDict with a bound; `get` marks an entry as recently used."""

    __slots__ = ("max", "d")

    def __init__(self, max_entries: int):
        self.max = max(1, int(max_entries))
        self.d: OrderedDict = OrderedDict()

    def get(self, key):
        d = self.d
        value = d.get(key)
        if value is not None:
            d.move_to_end(key)
        return value

    def put(self, key, value) -> None:
        d = self.d
        d[key] = value
        d.move_to_end(key)
        while len(d) > self.max:
            d.popitem(last=False)

    def pop(self, key) -> None:
        self.d.pop(key, None)

    def clear(self) -> None:
        self.d.clear()

    def drop_where(self, pred) -> int:
        """Remove the entries for which pred(key, value) is true; how many."""
        doomed = [k for k, v in self.d.items() if pred(k, v)]
        for k in doomed:
            del self.d[k]
        return len(doomed)

    def __len__(self) -> int:
        return len(self.d)


class SplitCache:
    """Positive and negative entries in two LRUs: negatives can never evict positives."""

    __slots__ = ("pos", "neg")

    def __init__(self, max_positive: int, max_negative: int):
        self.pos = LRU(max_positive)
        self.neg = LRU(max_negative)

    def get(self, key):
        hit = self.pos.get(key)
        return hit if hit is not None else self.neg.get(key)

    def put(self, key, value, positive: bool) -> None:
        (self.pos if positive else self.neg).put(key, value)
        (self.neg if positive else self.pos).pop(key)

    def pop(self, key) -> None:
        self.pos.pop(key)
        self.neg.pop(key)

    def clear(self) -> None:
        self.pos.clear()
        self.neg.clear()

    def __len__(self) -> int:
        return len(self.pos) + len(self.neg)


class SingleFlight:
    """`await run(key, factory)`: concurrent calls for one key share one `factory()` coroutine.

    `forget()` detaches the lookups in flight: callers that arrive afterwards start a fresh one (an
    invalidation must not be answered by a lookup that began before it).
    """

    __slots__ = ("flights", "started")

    def __init__(self):
        self.flights: dict = {}
        self.started = 0  # lookups actually run (tests and metrics)

    async def run(self, key, factory):
        fut = self.flights.get(key)
        if fut is None:
            fut = asyncio.ensure_future(self._one(key, factory))
            self.flights[key] = fut
        # shield: one waiter giving up (client gone) must not cancel the lookup the others wait on
        return await asyncio.shield(fut)

    async def _one(self, key, factory):
        self.started += 1
        me = asyncio.current_task()
        try:
            return await factory()
        finally:
            if self.flights.get(key) is me:
                del self.flights[key]

    def forget(self, key=None) -> None:
        if key is None:
            self.flights.clear()
        else:
            self.flights.pop(key, None)
