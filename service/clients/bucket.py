"""A client's token bucket and the leases workers take from it: the arithmetic, once.

A bucket holds up to ``burst`` tokens and gains ``rate`` a second; every request takes one.
A worker does not go to the shared bucket for each request: it takes a *lease* of a few
tokens (:meth:`Bucket.take`), spends them locally for up to :data:`LEASE_S`
(:class:`Lease`), and gives back what is left with its next refill. Tokens are spent only
after the bucket gave them, so the workers together never admit more than it holds.

The host's bucket (:mod:`service.clients.host`) is taken in Python; the fleet's lives in
Redis and must change in one atomic step, so :data:`TAKE_LUA` is :func:`take` again, in
Lua, for the fleet's script. The two are kept one by tests/test_client_bucket.py, which
runs both on the same cases in a real Redis and wants the same bits back: change both or
neither.
"""

from __future__ import annotations

import math

#: Longest a worker spends leased tokens: the bucket's timing is this coarse at most.
LEASE_S = 0.05


def lease_size(rate: float, burst: float) -> int:
    """Most tokens one lease takes: ``LEASE_S`` seconds' worth of the rate and an eighth of
    the burst at most, one at least (a small rate or burst: one token, an exact bucket)."""
    return max(1, int(min(rate * LEASE_S, burst / 8)))


def take(
    tokens: float | None,
    stamp: float,
    now: float,
    *,
    rate: float,
    burst: float,
    most: int,
    back: float,
) -> tuple[int, float]:
    """Refill a bucket holding ``tokens`` at ``stamp`` up to ``now``, add ``back`` (tokens
    a lease returns), and grant a lease: (tokens granted, tokens left).

    An absent bucket (None) is full. A ``now`` before ``stamp`` is a clock that went back (a
    host's reboot, a Redis failover): it adds nothing. A lease is at most ``most`` tokens
    and half of what is there, at least one; nothing when there is not one whole token.
    """
    if tokens is None:
        tokens = burst
    elif now > stamp:
        tokens = tokens + (now - stamp) * rate
    tokens = min(burst, tokens + back)
    grant = max(1, min(most, int(tokens / 2))) if tokens >= 1.0 else 0
    return grant, tokens - grant


#: :func:`take` in Lua, the same operations in the same order (Lua's numbers are doubles),
#: for scripts to call: ``local grant, left = take(tokens or nil, stamp, now, rate, burst,
#: most, back)``.
TAKE_LUA = r"""
local function take(tokens, stamp, now, rate, burst, most, back)
  if not tokens or not stamp then
    tokens = burst
  elseif now > stamp then
    tokens = tokens + (now - stamp) * rate
  end
  tokens = math.min(burst, tokens + back)
  local grant = 0
  if tokens >= 1 then grant = math.max(1, math.min(most, math.floor(tokens / 2))) end
  return grant, tokens - grant
end
"""


class Bucket:
    """The rate limit of every client: ``rate`` tokens a second, ``burst`` at most."""

    __slots__ = ("burst", "lease_max", "rate")

    def __init__(self, rate: float, burst: int) -> None:
        self.rate = rate
        self.burst = float(max(1, burst))
        #: Most tokens one lease holds.
        self.lease_max = lease_size(rate, self.burst)

    def take(
        self, tokens: float | None, stamp: float, now: float, *, most: int, back: float
    ) -> tuple[int, float]:
        """:func:`take` with this bucket's rate and burst."""
        return take(tokens, stamp, now, rate=self.rate, burst=self.burst, most=most, back=back)

    def retry_after_s(self, tokens: float) -> int:
        """Whole seconds until a bucket left with ``tokens`` (under one) holds one again."""
        return max(1, math.ceil((1.0 - tokens) / self.rate))


class Lease:
    """Tokens of one client a worker took from the bucket and has not spent."""

    __slots__ = ("back", "tokens", "until")

    def __init__(self) -> None:
        #: Spendable until ``until`` (the worker's monotonic clock).
        self.tokens = 0.0
        self.until = -math.inf
        #: Not to be spent: given back to the bucket with the next refill.
        self.back = 0.0

    def spend(self, now: float) -> bool:
        """Spend one token; False if the lease has none or has run out."""
        if self.tokens >= 1.0 and now < self.until:
            self.tokens -= 1.0
            return True
        return False

    def give_back(self, now: float) -> float:
        """What goes back to the bucket with a refill asked for at ``now``: what the lease
        owes, and all its tokens once it has run out."""
        self._expire(now)
        back, self.back = self.back, 0.0
        return back

    def most(self, lease_max: int) -> int:
        """Tokens to ask the bucket for: what tops the lease up to ``lease_max``, one at least."""
        return max(1, lease_max - int(self.tokens))

    def fill(self, granted: int, now: float, lease_max: int) -> None:
        """Add the ``granted`` tokens, good for ``LEASE_S`` from ``now``; past ``lease_max``
        they are owed back."""
        self._expire(now)  # (it may have run out while the bucket was asked)
        total = self.tokens + granted
        self.tokens = min(total, float(lease_max))
        self.back += total - self.tokens
        self.until = now + LEASE_S

    def _expire(self, now: float) -> None:
        if now >= self.until:
            self.back += self.tokens
            self.tokens = 0.0
