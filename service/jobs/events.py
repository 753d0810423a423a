"""What the job layer reports as it works, for metrics: it knows nothing of Prometheus.

The layer calls a :class:`JobEvents` on its event loop at each step of a job; this base
class ignores everything (``JOBPOOL_METRICS=off`` costs a method call per step).
``service.metrics.Metrics`` counts them. :class:`PoolStats` is what the layer answers when
asked how full its pools are.
"""

from __future__ import annotations

from dataclasses import dataclass

from service.jobs.registry import Pool
from service.jobs.state import JobState

#: Why a job was refused before it was stored (the ``reason`` of a rejection).
OVERLOADED = "overloaded"  # its pool has no free admission slot (503)
TOO_LARGE = "too_large"  # more tasks than its pool can ever hold (422)
SHUTTING_DOWN = "shutting_down"  # the worker is draining (503)
STORE_UNAVAILABLE = "store_unavailable"  # the store refused the write (503)
CLIENT_LIMIT = "client_limit"  # the client has its most jobs in flight (429)
REASONS = (OVERLOADED, TOO_LARGE, SHUTTING_DOWN, STORE_UNAVAILABLE, CLIENT_LIMIT)


class JobEvents:
    """Receives the job layer's events; this one does nothing with them."""

    def accepted(self, job: str, pool: Pool) -> None:
        """The job ``job`` was stored and will run on ``pool``."""

    def rejected(self, job: str, reason: str) -> None:
        """A submit of ``job`` was refused for ``reason`` (one of :data:`REASONS`)."""

    def started(self, job: str, waited_s: float) -> None:
        """A run of ``job`` started ``waited_s`` seconds after the job was created."""

    def finished(self, job: str, state: JobState, ran_s: float | None) -> None:
        """A job ended in a final ``state`` after running ``ran_s`` seconds (None: never ran)."""

    def retried(self, job: str) -> None:
        """A failed attempt of ``job`` is to run again (its job is scheduled)."""

    def scheduled(self, job: str) -> None:
        """A job ``job`` was stored to start later (a delayed submit)."""

    def cancelled(self, job: str, how: str) -> None:
        """A job ``job`` was cancelled: ``how`` (dequeued, terminated, stopped, abandoned)."""


@dataclass(frozen=True)
class PoolStats:
    """How full one pool of one worker is, right now."""

    pool: Pool
    #: Jobs accepted and waiting for a place in the pool.
    queued_jobs: int
    #: Jobs running (a batch is one job however many threads its items use).
    running_jobs: int
    #: Threads (io) or processes (cpu) running a task now, and how many there are.
    busy_slots: int
    slots: int
    #: Tasks admitted and not yet done (queued or running), and the bound where 503 starts.
    admitted_tasks: int
    admission_limit: int
    #: Jobs of the pool waiting here for their time (delayed, or a retry's backoff).
    scheduled_jobs: int = 0
