"""The per-client limits of one worker: one interface, kept where the job store is.

- SQLite store (one host): :class:`service.clients.host.HostLimits`, a table every worker of the
  host maps; the limits hold host-wide.
- Redis store (a fleet): :class:`service.clients.fleet.FleetLimits`, kept in that Redis; the
  limits hold fleet-wide.

The security middleware takes request tokens with :meth:`ClientLimits.take`; the job layer
counts jobs in flight through the same object (its quota hooks).
"""

from __future__ import annotations

from typing import Protocol

from service.clients.fleet import FleetLimits
from service.clients.host import HostLimits
from service.config import Settings
from service.jobs.redis_store import RedisStore
from service.jobs.store import Store


class ClientLimits(Protocol):
    """A client's request rate and jobs in flight; each limit switched off by 0."""

    def open(self) -> None:
        """Make ready (in the worker, before the job layer resumes jobs)."""

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


def for_store(settings: Settings, store: Store) -> ClientLimits:
    """The limits that hold as far as ``store`` is shared: the host, or the fleet."""
    s = settings
    if isinstance(store, RedisStore):
        return FleetLimits(
            store, rate=s.client_rate, burst=s.client_burst, max_inflight=s.client_max_inflight
        )
    return HostLimits(
        s.state_dir / "limits",
        rate=s.client_rate,
        burst=s.client_burst,
        max_inflight=s.client_max_inflight,
    )
