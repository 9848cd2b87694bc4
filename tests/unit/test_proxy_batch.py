"""The hub proxy's batched cache misses (hublink.Batch), the route a decision brings along, and the
lookup-latency histogram on /metrics."""

from __future__ import annotations

import asyncio
import uuid

import pytest

from cocalc_ctl.proxy import hublink
from cocalc_ctl.proxy.http1 import HttpError
from cocalc_ctl.proxy.metrics import Histogram, Metrics


class FakeLink:
    """A HubLink without PostgreSQL: run_batch calls the query with a fake connection (None) after one
    event-loop turn, recording every batch."""

    def __init__(self, pool_size=2, fail=None):
        self.pool_size = pool_size
        self.listening = True
        self.db_errors = 0
        self.calls: list[list] = []
        self.fail = fail or set()
        self.subs = {}

    def subscribe(self, channel, on_note, reset):
        self.subs[channel] = (on_note, reset)

    batch = hublink.HubLink.batch

    async def run_batch(self, query, keys):
        self.calls.append(list(keys))
        await asyncio.sleep(0.01)  # a round trip: keys arriving meanwhile wait for the next batch
        if self.fail & set(keys):
            raise RuntimeError("connection lost")
        return await query(None, keys)


async def _echo(conn, keys):
    return {k: ("row", k) for k in keys if not str(k).startswith("missing")}


def test_misses_in_one_turn_share_one_query_and_each_gets_its_own_row():
    async def main():
        link = FakeLink()
        b = link.batch(_echo)
        keys = [f"k{i}" for i in range(50)] + ["missing-1"]
        got = await asyncio.gather(*(b.get(k) for k in keys), b.get("k3"))  # k3 twice: one key in the batch
        assert got[:50] == [("row", f"k{i}") for i in range(50)] and got[50] is None and got[51] == ("row", "k3")
        assert link.calls == [keys]

    asyncio.run(main())


def test_keys_arriving_while_batches_run_are_taken_by_the_next_query_up_to_the_pool_size():
    async def main():
        link = FakeLink(pool_size=2)
        b = link.batch(_echo)
        first = [b.get(f"a{i}") for i in range(3)]
        await asyncio.sleep(0.002)  # the first batch is on its way (its round trip takes 10 ms)
        second = [b.get(f"b{i}") for i in range(3)]
        await asyncio.sleep(0.002)
        third = [b.get(f"c{i}") for i in range(3)]
        await asyncio.sleep(0.002)
        fourth = [b.get(f"d{i}") for i in range(3)]
        await asyncio.gather(*first, *second, *third, *fourth)
        # two queries in flight at most (the pool's size); what queued meanwhile went as one
        assert link.calls[:2] == [[f"a{i}" for i in range(3)], [f"b{i}" for i in range(3)]]
        assert sorted(sum(link.calls[2:], [])) == sorted([f"c{i}" for i in range(3)] + [f"d{i}" for i in range(3)])
        assert len(link.calls) == 3

    asyncio.run(main())


def test_a_batch_larger_than_the_bound_is_split(monkeypatch):
    monkeypatch.setattr(hublink, "MAX_BATCH", 10)

    async def main():
        link = FakeLink(pool_size=1)
        b = link.batch(_echo)
        await asyncio.gather(*(b.get(i) for i in range(25)))
        assert [len(c) for c in link.calls] == [10, 10, 5]

    asyncio.run(main())


def test_a_failed_query_fails_exactly_its_keys_and_the_routes_fail_closed():
    from cocalc_ctl.proxy.routing import HubRoutes

    p1, p2 = str(uuid.uuid4()), str(uuid.uuid4())

    async def routes_query(conn, keys):
        return {k: ("h" * 8, "http://127.0.0.1:8080") for k in keys}

    async def main():
        link = FakeLink(pool_size=1, fail={p1})
        routes = HubRoutes(link, ttl=60)
        routes._batch = link.batch(routes_query)
        with pytest.raises(HttpError) as exc:
            await routes.resolve(p1)
        assert exc.value.status == 503  # the hub could not answer: no route, nothing cached
        assert routes.resolve_now(p1) is None
        r = await routes.resolve(p2)
        assert (r.host, r.port) == ("127.0.0.1", 8080) and routes.resolve_now(p2) == r
        assert routes.lookup_latency.count == 2

    asyncio.run(main())


def test_a_decision_brings_the_route_along_unless_an_invalidation_raced_it():
    from cocalc_ctl.proxy import access
    from cocalc_ctl.proxy.routing import HubRoutes, Route

    pid, other, gone = str(uuid.uuid4()), str(uuid.uuid4()), str(uuid.uuid4())
    host = str(uuid.uuid4())

    async def main():
        link = FakeLink()
        acc = access.Access("builtin", link=link)
        routes = HubRoutes(link, ttl=60)
        acc.routes = routes

        async def decisions(conn, keys):
            out = {}
            for k in keys:
                if k[1] == other:  # a move commits while this lookup runs: its NOTIFY evicts
                    routes.evict(other)
                exists = k[1] != gone
                out[k] = ("acct", "tok", "collaborator", None, exists, host if exists else None,
                          "http://10.0.0.5:9000" if exists else None)
            return out

        acc._batches = {"token": link.batch(decisions), "session": link.batch(decisions)}
        d = await acc._lookup("token", b"d" * 32, pid, 0.0)
        assert d.role == "collaborator" and d.account_id == "acct"
        assert routes.resolve_now(pid) == Route("10.0.0.5", 9000, host)  # no route query needed
        await acc._lookup("token", b"d" * 32, other, 0.0)
        assert routes.resolve_now(other) is None  # raced an invalidation: not cached
        await acc._lookup("token", b"d" * 32, gone, 0.0)
        with pytest.raises(HttpError) as exc:
            routes.resolve_now(gone)
        assert exc.value.status == 404
        link.listening = False
        third = str(uuid.uuid4())
        await acc._lookup("token", b"d" * 32, third, 0.0)
        link.listening = True
        assert routes.resolve_now(third) is None  # nothing is cached while invalidations could be missed

    asyncio.run(main())


def test_the_lookup_histogram_is_on_metrics_and_survives_the_workers_merge():
    from cocalc_ctl.proxy.workers import label_samples, merge_families

    h = Histogram()
    for v in (0.0001, 0.0004, 0.0012, 0.004, 7.0):
        h.observe(v)
    m = Metrics()
    m.lookup_seconds["route"] = h
    text = m.render().decode()
    assert "# TYPE cocalc_proxy_hub_lookup_seconds histogram" in text
    assert 'cocalc_proxy_hub_lookup_seconds_bucket{kind="route",le="0.00025"} 1' in text
    assert 'cocalc_proxy_hub_lookup_seconds_bucket{kind="route",le="0.0015"} 3' in text
    assert 'cocalc_proxy_hub_lookup_seconds_bucket{kind="route",le="5"} 4' in text
    assert 'cocalc_proxy_hub_lookup_seconds_bucket{kind="route",le="+Inf"} 5' in text
    assert 'cocalc_proxy_hub_lookup_seconds_count{kind="route"} 5' in text
    merged = merge_families([label_samples(text, 0), label_samples(text, 1)])
    lines = merged.splitlines()
    start = lines.index("# TYPE cocalc_proxy_hub_lookup_seconds histogram")
    block = lines[start + 1:start + 1 + 2 * (len(h.bounds) + 3)]
    assert all(x.startswith("cocalc_proxy_hub_lookup_seconds_") for x in block), block
    assert 'cocalc_proxy_hub_lookup_seconds_count{worker="1",kind="route"} 5' in block
