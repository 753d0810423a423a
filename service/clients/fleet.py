"""Per-client limits kept in the fleet's Redis, so that they hold across every host.

With the Redis store (``JOBPOOL_STORE_URL=redis://…``) several hosts serve one client
behind a load balancer; limits each host kept on its own (:mod:`service.clients.host`) would give
the client N times its share. Here both limits live in the Redis the hosts share:

* **rate** (``JOBPOOL_CLIENT_RATE``, ``JOBPOOL_CLIENT_BURST``): one token bucket per
  client, the hash ``jobpool:bucket:<client>`` (tokens, stamp), refilled and taken by one
  script (:data:`TAKE`) on Redis's own clock (``TIME``), so the hosts' clocks do not
  matter. A bucket idle long enough to be full again expires: an absent bucket is a full
  one. As on one host (the same rule, :func:`service.clients.host.lease_size`), a worker takes
  tokens in small leases, at most ``LEASE_S`` seconds' worth of the rate (and an eighth of
  the burst), at most half of what is left, at least one, and spends them locally for up to
  ``LEASE_S``; what a lease still holds after that goes back with the next refill. Tokens
  are only ever spent after the bucket gave them, so the fleet never admits more than the
  bucket holds (the burst plus the rate times the time); with a small rate or burst a lease
  is one token and the bucket is exact. The round trip is taken off the requests' path: a
  lease of :data:`PREFETCH_MIN` tokens or more is topped up in the background once half
  spent or half its time gone (measured with bench.ingest on the Redis store, requests
  waiting for each refill cost a quarter of the throughput); only a request that finds no
  lease at all waits, and the requests of one client that find none while a refill is on
  its way wait for that one instead of sending their own. With the defaults a worker asks
  Redis about 40 times a second for a client that keeps it busy, in the pipeline of its
  event-loop tick. A refused refill is remembered for ``LEASE_S``, so a client over its
  rate costs a worker at most one round trip per ``LEASE_S``, however hard it floods.
* **jobs in flight** (``JOBPOOL_CLIENT_MAX_INFLIGHT``): counted by the store's own scripts,
  in the same step that changes a job's state, and refused by the script that would store
  the job (see :mod:`service.jobs.redis_lua`). So jobs waiting in the fleet's shared queue
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
import math
import time
from collections.abc import Callable
from dataclasses import dataclass

from service.clients.host import LEASE_S, lease_size
from service.errors import RateLimited
from service.jobs.redis_store import RedisStore

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
TAKE = r"""
local key = P .. 'bucket:' .. ARGV[2]
local rate, burst = tonumber(ARGV[3]), tonumber(ARGV[4])
local most, back = tonumber(ARGV[5]), tonumber(ARGV[6])
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local held = redis.call('HMGET', key, 'tokens', 'stamp')
local tokens, stamp = tonumber(held[1]), tonumber(held[2])
if not tokens or not stamp then
  tokens = burst
elseif now > stamp then  -- a clock that went back (a failover) adds nothing
  tokens = tokens + (now - stamp) * rate
end
tokens = math.min(burst, tokens + back)
local grant = 0
if tokens >= 1 then grant = math.max(1, math.min(most, math.floor(tokens / 2))) end
tokens = tokens - grant
redis.call('HSET', key, 'tokens', string.format('%.17g', tokens),
           'stamp', string.format('%.6f', now))
-- Gone once it would be full again anyway (at most ~30 years, what PEXPIRE takes).
local ttl = math.min(1e12, math.ceil((burst / rate + tonumber(ARGV[7])) * 1000))
redis.call('PEXPIRE', key, ttl)
return {grant, string.format('%.17g', tokens)}
"""


@dataclass
class _Lease:
    """Tokens of one client this worker took from the bucket and has not spent."""

    #: Spendable until ``until`` (this worker's monotonic clock).
    tokens: float = 0.0
    until: float = -math.inf
    #: Not to be spent: given back to the bucket with the next refill.
    back: float = 0.0


class FleetLimits:
    """The fleet-wide limits of one worker process, kept in ``store``'s Redis."""

    def __init__(
        self,
        store: RedisStore,
        *,
        rate: float,
        burst: int,
        max_inflight: int,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.store = store
        self.rate = rate
        self.burst = float(max(1, burst))
        #: Enforced by ``store`` (its ``client_max_inflight``); kept here to be shown.
        self.max_inflight = max_inflight
        self.clock = clock
        #: Most tokens one lease holds.
        self.lease_max = lease_size(rate, self.burst)
        #: Whether a lease is refilled before it runs out (see :data:`PREFETCH_MIN`).
        self.prefetch = self.lease_max >= PREFETCH_MIN
        self._leases: dict[str, _Lease] = {}
        self._refused: dict[str, tuple[float, int]] = {}  # client -> (until, Retry-After)
        self._refills: dict[str, asyncio.Task[None]] = {}
        store.define("take_tokens", TAKE)

    @property
    def enabled(self) -> bool:
        return self.rate > 0 or self.max_inflight > 0

    def open(self) -> None:
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
        if self.rate <= 0 or self._spend(client):
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
        if lease is not None and lease.tokens >= 1.0 and now < lease.until:
            lease.tokens -= 1.0
            if (
                self.prefetch
                and client not in self._refills
                and (lease.tokens < self.lease_max / 2 or now >= lease.until - LEASE_S / 2)
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
        lease = self._leases.setdefault(client, _Lease())
        now = self.clock()
        if now >= lease.until:  # run out: its tokens go back
            lease.back += lease.tokens
            lease.tokens = 0.0
        back, lease.back = lease.back, 0.0
        # Lost if the call fails (it may or may not have run): fewer requests admitted,
        # never more.
        granted, left = await self.store.script(
            "take_tokens", client, repr(self.rate), repr(self.burst),
            max(1, self.lease_max - int(lease.tokens)), repr(back), repr(BUCKET_SLACK_S),
        )  # fmt: skip
        now = self.clock()
        if int(granted) < 1:
            retry_after = max(1, math.ceil((1.0 - float(left)) / self.rate))
            self._refused[client] = (now + LEASE_S, retry_after)
            return
        self._refused.pop(client, None)
        lease = self._leases.setdefault(client, _Lease())  # (close() may have run)
        if now >= lease.until:
            lease.back += lease.tokens
            lease.tokens = 0.0
        total = lease.tokens + int(granted)
        lease.tokens = min(total, float(self.lease_max))
        lease.back += total - lease.tokens
        lease.until = now + LEASE_S

    def _limited(self, retry_after_s: int) -> RateLimited:
        return RateLimited(
            f"over {self.rate:g} requests/s (JOBPOOL_CLIENT_RATE) across the fleet; slow down",
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
