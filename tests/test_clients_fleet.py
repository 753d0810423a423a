"""Fleet-wide client rate limits in a real Redis: one bucket per client for all hosts, leased.

The fleet-wide cap on jobs in flight is the store's: see tests/test_redis_store.py.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from service.clients.bucket import LEASE_S
from service.clients.fleet import FleetLimits
from service.clients.limits import LimitSettings
from service.errors import RateLimited, StoreUnavailable
from service.jobs.redis.store import RedisStore
from tests.redis_server import RedisServer
from tests.test_clients_host import take_until_each_refuses
from tests.test_redis_store import make
from tests.test_security_units import Clock


class Fleet:
    """Workers of different hosts on one Redis: a store and its limits each."""

    def __init__(self, url: str, tmp_path: Path) -> None:
        self.url = url
        self.tmp_path = tmp_path
        self.stores: list[RedisStore] = []

    async def worker(
        self, host: str, *, rate: float = 0.0, burst: int = 1, **kw: Any
    ) -> FleetLimits:
        store = make(self.url, self.tmp_path, host)
        allowed = LimitSettings(rate=rate, burst=burst, max_inflight=0)
        limits = FleetLimits(store, allowed, **kw)
        await store.open()
        limits.open(store.slot)
        self.stores.append(store)
        return limits

    async def close(self) -> None:
        for store in self.stores:
            await store.close()


@pytest.fixture
async def fleet(redis_url: str, tmp_path: Path) -> AsyncIterator[Fleet]:
    f = Fleet(redis_url, tmp_path)
    yield f
    await f.close()


async def script_calls(store: RedisStore) -> int:
    """EVALSHA commands Redis has run so far (every script of every worker)."""
    assert store._client is not None
    stats: dict[str, Any] = await store._client.info("commandstats")
    return int(stats.get("cmdstat_evalsha", {}).get("calls", 0))


# -- the rate -------------------------------------------------------------------------


async def test_hosts_draw_on_one_bucket_per_client(fleet: Fleet) -> None:
    """A burst of 4 at 0.01/s is the client's across hosts: 4 requests pass in all, then 429."""
    a = await fleet.worker("a", rate=0.01, burst=4)
    b = await fleet.worker("b", rate=0.01, burst=4)
    assert a.bucket.lease_max == 1  # a small bucket is exact: one token at a time
    for limits in (a, b, a, b):
        await limits.take("alice")
    for limits in (a, b):
        with pytest.raises(RateLimited, match="JOBPOOL_CLIENT_RATE") as info:
            await limits.take("alice")
        assert 1 <= info.value.retry_after_s <= 100
    await b.take("bob")  # another client has its own bucket


async def test_leases_never_admit_more_than_the_bucket_and_save_round_trips(
    fleet: Fleet,
) -> None:
    """Leased tokens (rate 1000/s, burst 100): two hosts admit at most the burst plus what
    the rate added meanwhile, and the rest of the burst is what they hold still, in far
    fewer round trips than requests."""
    rate, burst = 1000.0, 100
    a = await fleet.worker("a", rate=rate, burst=burst)
    b = await fleet.worker("b", rate=rate, burst=burst)
    assert a.bucket.lease_max > 1
    calls_before = await script_calls(a.store)
    began = time.monotonic()
    admitted = await take_until_each_refuses("alice", a, b)
    elapsed = time.monotonic() - began
    await settle(a)
    await settle(b)
    refills = await script_calls(a.store) - calls_before
    assert admitted <= burst + rate * elapsed
    # What the bucket gave and was not spent is still held (or owed back) by the workers.
    assert admitted + holds(a) + holds(b) >= burst
    assert refills < admitted / 2, (refills, admitted)


async def settle(limits: FleetLimits) -> None:
    """Wait for the refills on their way (prefetches in the background) to end."""
    while limits._refills:
        await asyncio.gather(*limits._refills.values(), return_exceptions=True)


def holds(limits: FleetLimits) -> float:
    """Tokens a worker took from buckets and has not spent (leased, or owed back)."""
    return sum(lease.tokens + lease.back for lease in limits._leases.values())


async def test_concurrent_requests_share_one_refill(fleet: Fleet) -> None:
    """Requests of a client that find no lease wait for the refill on its way."""
    a = await fleet.worker("a", rate=1000.0, burst=400, clock=Clock())
    assert a.bucket.lease_max == 50
    calls_before = await script_calls(a.store)
    await asyncio.gather(*(a.take("alice") for _ in range(20)))
    assert await script_calls(a.store) - calls_before == 1
    assert holds(a) == 30


async def test_a_lease_is_topped_up_before_it_runs_out(fleet: Fleet) -> None:
    """Half spent, a lease is refilled in the background: requests then never wait for Redis."""
    clock = Clock()
    a = await fleet.worker("a", rate=1000.0, burst=400, clock=clock)
    assert a.prefetch
    await a.take("alice")  # waits: there is no lease yet
    calls_before = await script_calls(a.store)
    for _ in range(100):  # four leases' worth, each take served from the lease at hand
        await a.take("alice")
        assert a._spend("alice")  # and one more, never finding the lease empty
        await settle(a)
    # Each top-up brings the lease back to 50 from under 25: 200 tokens, 4 to 9 round trips.
    assert 4 <= await script_calls(a.store) - calls_before <= 9
    assert holds(a) <= a.bucket.lease_max
    clock.now += LEASE_S / 2  # half its time gone: topped up, and good for a lease again
    await a.take("alice")
    await settle(a)
    clock.now += LEASE_S * 0.9
    assert a._spend("alice")


async def test_a_refusal_is_remembered_for_a_lease_so_a_flood_costs_few_round_trips(
    fleet: Fleet,
) -> None:
    """Once refused, a client's requests are refused locally until LEASE_S has passed."""
    clock = Clock()
    a = await fleet.worker("a", rate=0.01, burst=1, clock=clock)
    await a.take("alice")
    calls_before = await script_calls(a.store)
    for _ in range(100):
        with pytest.raises(RateLimited):
            await a.take("alice")
    assert await script_calls(a.store) - calls_before == 1
    clock.now += LEASE_S
    with pytest.raises(RateLimited):
        await a.take("alice")
    assert await script_calls(a.store) - calls_before == 2  # asked again, still empty


async def test_rate_zero_never_asks_redis(fleet: Fleet) -> None:
    """rate 0 switches the rate limit off: nothing is refused, no script runs."""
    a = await fleet.worker("a", rate=0.0)
    calls_before = await script_calls(a.store)
    for _ in range(1000):
        await a.take("alice")
    assert await script_calls(a.store) == calls_before


async def test_redis_down_refuses_with_503_once_the_lease_is_spent(
    redis_factory: Callable[[], RedisServer], tmp_path: Path
) -> None:
    """Without Redis a take raises StoreUnavailable (never unlimited); a lease held is spent."""
    srv = redis_factory()
    fleet = Fleet(srv.url, tmp_path)
    a = await fleet.worker("a", rate=1000.0, burst=16, clock=Clock())
    assert a.bucket.lease_max == 2
    await a.take("alice")  # leases 2 tokens, spends one
    srv.stop()
    await a.take("alice")  # the second, from the lease
    with pytest.raises(StoreUnavailable, match="unreachable"):
        await a.take("alice")
    srv.start()
    await a.take("alice")
    await fleet.close()
