"""Per-client limits kept in the fleet's Redis, so that they hold across every host.

With the Redis store (``JOBPOOL_STORE_URL=redis://…``) several hosts serve one client
behind a load balancer; limits each host kept on its own (:mod:`service.clients.host`) would
give the client N times its share. Here both limits live in the Redis the hosts share:

* **rate** (``JOBPOOL_CLIENT_RATE``, ``JOBPOOL_CLIENT_BURST``): one token bucket per
  client, the hash ``jobpool:bucket:<client>`` (tokens, stamp), refilled and taken by one
  script (:data:`TAKE`) on Redis's own clock (``TIME``), so the hosts' clocks do not
  matter. A bucket idle long enough to be full again expires: an absent bucket is a full
  one. As on one host, a worker takes tokens in leases and spends them locally
  (:mod:`service.clients.bucket`: the script runs its Lua twin of the host's arithmetic),
  so the fleet never admits more than the bucket holds (the burst plus the rate times the
  time); with a small rate or burst a lease is one token and the bucket is exact. The
  round trip is taken off the requests' path: a lease of :data:`PREFETCH_MIN` tokens or
  more is topped up in the background once half spent or half its time gone (measured
  with bench.ingest on the Redis store, requests waiting for each refill cost a quarter of
  the throughput); only a request that finds no lease at all waits, and the requests of
  one client that find none while a refill is on its way wait for that one instead of
  sending their own. With the defaults a worker asks Redis about 40 times a second for a
  client that keeps it busy, in the pipeline of its event-loop tick. A refused refill is
  remembered for ``LEASE_S``, so a client over its rate costs a worker at most one round
  trip per ``LEASE_S``, however hard it floods.
* **jobs in flight** (``JOBPOOL_CLIENT_MAX_INFLIGHT``): counted by the store's own scripts,
  in the same step that changes a job's state, and refused by the script that would store
  the job (see :mod:`service.jobs.redis.scripts`). So jobs waiting in the fleet's shared queue
  count too, the cap is never overshot, and the count is exactly as durable as the jobs: a
  host that dies (SIGKILL) leaves no count behind that its jobs do not stand for, and a job
  taken over by another host counts once. The job layer's quota hooks are no-ops here.

**Redis unreachable.** A request whose worker must ask Redis for tokens answers 503 with
``Retry-After``, as a submit does then (the store's :class:`StoreUnavailable`). Falling
back to host-local buckets would silently give each host the whole limit (N times it);
and while Redis is down the hosts' ``/readyz`` fails and no job route works anyway. Only
the tokens of a lease already taken are spent, for at most ``LEASE_S``.

What a worker holds (leases, refusals) is per client it served: bounded by the clients
that have keys. Tokens a stopping worker holds (at most ``lease_max`` per client, and what
it owes back) are not given back, nor are those of a refill whose answer was lost: the
fleet then admits slightly fewer requests, never more.
"""

from __future__ import annotations

import asyncio
import functools
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from service.clients.bucket import LEASE_S, TAKE_LUA, Bucket, Lease
from service.errors import RateLimited
from service.jobs.redis.store import RedisStore

if TYPE_CHECKING:
    from service.clients.limits import LimitSettings

#: Seconds a full bucket is kept past the time it takes to fill up.
BUCKET_SLACK_S = 1.0
#: Refills a request waits for before it gives up (429): its client's other requests may
#: spend what each one brings.
SHARED_REFILLS = 8
#: The least lease that is refilled ahead, in the background, once half spent or half
#: expired, so that requests do not wait for the round trip. Smaller leases (a small rate
#: or burst) are taken only when needed: a worker does not hold tokens others could use.
PREFETCH_MIN = 4

#: ARGV: prefix, client, rate (tokens/s), burst, most tokens to grant, tokens given back,
#: seconds to keep a full bucket.
#: Returns {tokens granted, tokens left (a string: Lua numbers reply as integers)}.
TAKE = (
    TAKE_LUA
    + r"""
local key = P .. 'bucket:' .. ARGV[2]
local rate, burst = tonumber(ARGV[3]), tonumber(ARGV[4])
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local held = redis.call('HMGET', key, 'tokens', 'stamp')
local grant, tokens = take(tonumber(held[1]), tonumber(held[2]), now, rate, burst,
                           tonumber(ARGV[5]), tonumber(ARGV[6]))
redis.call('HSET', key, 'tokens', string.format('%.17g', tokens),
           'stamp', string.format('%.6f', now))
-- Gone once it would be full again anyway (at most ~30 years, what PEXPIRE takes).
local ttl = math.min(1e12, math.ceil((burst / rate + tonumber(ARGV[7])) * 1000))
redis.call('PEXPIRE', key, ttl)
return {grant, string.format('%.17g', tokens)}
"""
)


class FleetLimits:
    """The fleet-wide limits of one worker process, kept in ``store``'s Redis."""

    def __init__(
        self,
        store: RedisStore,
        settings: LimitSettings,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.store = store
        #: Its ``max_inflight`` is enforced by ``store`` (its ``client_max_inflight``).
        self.settings = settings
        self.bucket = Bucket(settings.rate, settings.burst)
        self.clock = clock
        #: Whether a lease is refilled before it runs out (see :data:`PREFETCH_MIN`).
        self.prefetch = self.bucket.lease_max >= PREFETCH_MIN
        self._leases: dict[str, Lease] = {}
        self._refused: dict[str, tuple[float, int]] = {}  # client -> (until, Retry-After)
        self._refills: dict[str, asyncio.Task[None]] = {}
        store.define("take_tokens", TAKE)

    def open(self, slot: int) -> None:
        """Nothing to open: the state is in Redis, reached through the store."""

    def close(self) -> None:
        for refill in self._refills.values():
            refill.cancel()
        self._refills.clear()
        self._leases.clear()
        self._refused.clear()

    # -- the rate ---------------------------------------------------------------------

    async def take(self, client: str) -> None:
        """Take one request token of ``client``; :class:`RateLimited` when there is none,
        :class:`StoreUnavailable` when Redis had to be asked and could not be."""
        if self.bucket.rate <= 0 or self._spend(client):
            return
        for _ in range(SHARED_REFILLS):
            refill = self._refills.get(client) or self._refill(client)
            await asyncio.shield(refill)  # one request's end does not cancel the others'
            if self._spend(client):
                return
        # Every refill it waited for was spent by the client's other requests meanwhile.
        raise self._limited(1)

    def _spend(self, client: str) -> bool:
        """Spend a leased token; False if there is none; RateLimited if refused lately."""
        now = self.clock()
        lease = self._leases.get(client)
        if lease is not None and lease.spend(now):
            if (
                self.prefetch
                and client not in self._refills
                and (lease.tokens < self.bucket.lease_max / 2 or now >= lease.until - LEASE_S / 2)
            ):
                self._refill(client)  # in the background, while this lease lasts
            return True
        refused = self._refused.get(client)
        if refused is not None:
            if now < refused[0]:
                raise self._limited(refused[1])
            del self._refused[client]
        return False

    def _refill(self, client: str) -> asyncio.Task[None]:
        """Start topping up the client's lease; requests that find none wait for it."""
        task = asyncio.get_running_loop().create_task(self._top_up(client))
        self._refills[client] = task
        task.add_done_callback(functools.partial(self._refilled, client))
        return task

    def _refilled(self, client: str, task: asyncio.Task[None]) -> None:
        if self._refills.get(client) is task:
            del self._refills[client]
        if not task.cancelled():
            task.exception()  # a prefetch nobody waits for fails quietly (the store logs it)

    async def _top_up(self, client: str) -> None:
        """Give back what the lease owes, take tokens up to ``lease_max`` from the bucket."""
        bucket = self.bucket
        lease = self._leases.setdefault(client, Lease())
        back = lease.give_back(self.clock())
        # Lost if the call fails (it may or may not have run): fewer requests admitted,
        # never more.
        granted, left = await self.store.script(
            "take_tokens", client, repr(bucket.rate), repr(bucket.burst),
            lease.most(bucket.lease_max), repr(back), repr(BUCKET_SLACK_S),
        )  # fmt: skip
        now = self.clock()
        if int(granted) < 1:
            self._refused[client] = (now + LEASE_S, bucket.retry_after_s(float(left)))
            return
        self._refused.pop(client, None)
        lease = self._leases.setdefault(client, Lease())  # (close() may have run)
        lease.fill(int(granted), now, bucket.lease_max)

    def _limited(self, retry_after_s: int) -> RateLimited:
        return RateLimited(
            f"over {self.bucket.rate:g} requests/s (JOBPOOL_CLIENT_RATE) across the fleet;"
            " slow down",
            retry_after_s=retry_after_s,
        )

    # -- jobs in flight: counted and capped by the store's scripts --------------------

    def acquire(self, owner: str) -> None:
        """Nothing here: the store refuses a job over the cap in the step that stores it."""

    def force(self, owner: str) -> None:
        """Nothing here: a resumed job was counted when it was stored."""

    def release(self, owner: str) -> None:
        """Nothing here: a job stops counting in the step that ends it."""

    async def inflight(self, owner: str) -> int:
        """Jobs of ``owner`` queued or running in the fleet."""
        return await self.store.inflight(owner)
