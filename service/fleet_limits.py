"""Per-client limits kept in the fleet's Redis, so that they hold across every host.

With the Redis store (``JOBPOOL_STORE_URL=redis://…``) several hosts serve one client
behind a load balancer; limits each host kept on its own (:mod:`service.limits`) would give
the client N times its share. Here both limits live in the Redis the hosts share:

* **rate** (``JOBPOOL_CLIENT_RATE``, ``JOBPOOL_CLIENT_BURST``): one token bucket per
  client, the hash ``jobpool:bucket:<client>`` (tokens, stamp), refilled and taken by one
  script (:data:`TAKE`) on Redis's own clock (``TIME``), so the hosts' clocks do not
  matter. A bucket idle long enough to be full again expires: an absent bucket is a full
  one. As on one host, a worker takes tokens in small leases, at most :data:`LEASE_S`
  seconds' worth of the rate, at most half of what is left, at least one; it spends a lease
  locally and gives back what is left of it at its next refill. Tokens are only ever spent
  after the bucket gave them, so the fleet never admits more than the bucket holds (the
  burst plus the rate times the time); with a small rate or burst a lease is one token and
  the bucket is exact. With the defaults a worker asks Redis about once in 50 requests of a
  client, in the pipeline of its event-loop tick. The requests of one client that find the
  lease spent while a refill is on its way wait for that refill instead of sending their
  own; a refused refill is remembered for up to :data:`LEASE_S`, so a client over its
  rate costs a worker at most one round trip per :data:`LEASE_S`, however hard it floods.
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
the tokens of a lease already taken are spent, for at most :data:`LEASE_S`.

What a worker holds (leases, refusals) is per client it served: bounded by the clients
that have keys. Leases a stopping worker holds are not given back (at most
:data:`LEASE_S`' worth of the rate per client): the fleet then admits slightly fewer
requests, never more.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Callable

from service.errors import RateLimited
from service.jobs.redis_store import RedisStore

#: Longest a worker spends leased tokens, and remembers a refusal (seconds).
LEASE_S = 0.05
#: Seconds a full bucket is kept past the time it takes to fill up.
BUCKET_SLACK_S = 1.0
#: Refills a request waits for (its client's, sent by other requests) before its own.
SHARED_REFILLS = 8

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
        #: Most tokens one lease takes.
        self.lease_max = max(1, int(min(rate * LEASE_S, self.burst / 8)))
        self._leases: dict[str, list[float]] = {}  # client -> [tokens left, good until]
        self._refused: dict[str, tuple[float, int]] = {}  # client -> (until, Retry-After)
        self._refills: dict[str, asyncio.Future[None]] = {}
        store.define("take_tokens", TAKE)

    @property
    def enabled(self) -> bool:
        return self.rate > 0 or self.max_inflight > 0

    def open(self) -> None:
        """Nothing to open: the state is in Redis, reached through the store."""

    def close(self) -> None:
        self._leases.clear()
        self._refused.clear()

    # -- the rate ---------------------------------------------------------------------

    async def take(self, client: str) -> None:
        """Take one request token of ``client``; :class:`RateLimited` when there is none,
        :class:`StoreUnavailable` when Redis had to be asked and could not be."""
        if self.rate <= 0 or self._spend(client):
            return
        for _ in range(SHARED_REFILLS):
            pending = self._refills.get(client)
            if pending is None:
                break
            await asyncio.shield(pending)
            if self._spend(client):
                return
        await self._refill(client)

    def _spend(self, client: str) -> bool:
        """Spend a leased token; False if there is none; RateLimited if refused lately."""
        now = self.clock()
        lease = self._leases.get(client)
        if lease is not None and lease[0] >= 1.0 and now < lease[1]:
            lease[0] -= 1.0
            return True
        refused = self._refused.get(client)
        if refused is not None:
            if now < refused[0]:
                raise self._limited(refused[1])
            del self._refused[client]
        return False

    async def _refill(self, client: str) -> None:
        """Give back what is left of the lease, take a new one and spend one token of it."""
        done = asyncio.get_running_loop().create_future()
        self._refills[client] = done
        lease = self._leases.pop(client, None)
        back = lease[0] if lease is not None else 0.0
        try:
            granted, left = await self.store.script(
                "take_tokens", client, repr(self.rate), repr(self.burst), self.lease_max,
                repr(back), repr(BUCKET_SLACK_S),
            )  # fmt: skip
        finally:
            if self._refills.get(client) is done:
                del self._refills[client]
            done.set_result(None)
        now = self.clock()
        if int(granted) < 1:
            retry_after = max(1, math.ceil((1.0 - float(left)) / self.rate))
            self._refused[client] = (now + LEASE_S, retry_after)
            raise self._limited(retry_after)
        self._refused.pop(client, None)
        self._leases[client] = [int(granted) - 1.0, now + LEASE_S]

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
