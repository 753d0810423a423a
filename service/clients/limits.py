"""The per-client limits as the rest of the service sees them: one interface, two homes.

Two limits, each switched off by 0:

* **rate** (``JOBPOOL_CLIENT_RATE`` requests/s, ``JOBPOOL_CLIENT_BURST``): a token bucket per
  client; every authenticated request takes a token (the security middleware).
* **jobs in flight** (``JOBPOOL_CLIENT_MAX_INFLIGHT``): a client's jobs queued or running; a
  submit over the cap is refused (the job layer's quota hooks).

They hold as far as the job store is shared: on one host with SQLite
(:class:`~service.clients.host.HostLimits`, a table every worker maps), across the fleet
with Redis (:class:`~service.clients.fleet.FleetLimits`). :func:`for_store` picks;
callers hold a :class:`ClientLimits`.
"""

from __future__ import annotations

import functools
from collections.abc import Awaitable
from dataclasses import dataclass
from typing import Protocol

from service.clients.fleet import FleetLimits
from service.clients.host import HostLimits
from service.config import Settings
from service.jobs.redis.store import RedisStore
from service.jobs.sqlite.shards import is_claimed
from service.jobs.sqlite.store import SqliteStore
from service.jobs.store import Store


@dataclass(frozen=True)
class LimitSettings:
    """What every client is allowed, the same for either home of the limits."""

    #: Requests a second (0: no rate limit).
    rate: float
    #: Requests at once above the rate.
    burst: int
    #: Jobs queued or running (0: no cap).
    max_inflight: int

    @classmethod
    def from_settings(cls, s: Settings) -> LimitSettings:
        return cls(rate=s.client_rate, burst=s.client_burst, max_inflight=s.client_max_inflight)

    @property
    def enabled(self) -> bool:
        return self.rate > 0 or self.max_inflight > 0


class ClientLimits(Protocol):
    """A client's request rate and jobs in flight; each limit switched off by 0."""

    def open(self, slot: int) -> None:
        """Make ready in the worker holding ``slot`` (claimed by the store), before the job
        layer resumes jobs."""

    def close(self) -> None:
        """Give back what this worker holds."""

    async def take(self, client: str) -> None:
        """Take one request token of ``client``; RateLimited when there is none."""

    def acquire(self, owner: str) -> None:
        """Count a new job of ``owner``; TooManyJobs at the cap."""

    def force(self, owner: str) -> None:
        """Count a job accepted earlier (resumed), whatever the cap."""

    def release(self, owner: str) -> None:
        """A counted job of ``owner`` has ended here."""

    def inflight(self, owner: str) -> int | Awaitable[int]:
        """Jobs of ``owner`` queued or running where the limits hold (the fleet's limits ask
        Redis: awaitable); counted only while ``JOBPOOL_CLIENT_MAX_INFLIGHT`` is on."""


def for_store(settings: Settings, store: Store) -> ClientLimits:
    """The limits that hold as far as ``store`` is shared: the host, or the fleet."""
    allowed = LimitSettings.from_settings(settings)
    if isinstance(store, RedisStore):
        return FleetLimits(store, allowed)
    if isinstance(store, SqliteStore):
        alive = functools.partial(is_claimed, store.directory)
        return HostLimits(settings.state_dir / "limits", allowed, alive=alive)
    raise TypeError(f"no client limits for a {type(store).__name__}")
