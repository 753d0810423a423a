"""The job store interface. Every backend (SQLite on one host, Redis for a fleet) has it."""

from __future__ import annotations

import pickle
from collections.abc import Mapping, Sequence
from contextlib import AbstractAsyncContextManager
from typing import Any, Protocol

from service.jobs.document import CancelHow
from service.jobs.record import (
    BatchProgress,
    Delivery,
    DeliveryState,
    FailedAttempt,
    IdempotencyKey,
    JobEnd,
    JobQuery,
    JobRecord,
    Progress,
)
from service.jobs.registry import Pool
from service.jobs.state import JobState

#: The error a job carries when it was found running by a process that is gone (a crash).
INTERRUPTED = "interrupted: the process running it stopped"


def capped_result(
    result: Any, state: JobState, error: str | None, *, limit: int
) -> tuple[bytes | None, JobState, str | None]:
    """A result as stored (pickled), or the job failed when it is over ``limit`` bytes."""
    blob = None if result is None else pickle.dumps(result, protocol=pickle.HIGHEST_PROTOCOL)
    if blob is not None and len(blob) > limit:
        return (
            None,
            JobState.FAILED,
            (f"the result ({len(blob)} bytes) is over JOBPOOL_RESULT_MAX ({limit})"),
        )
    return blob, state, error


class KeyTaken(Exception):
    """Another submit stored a job with this idempotency key first (a shared store)."""

    def __init__(self, job_id: str, fingerprint: bytes) -> None:
        super().__init__(job_id)
        self.job_id = job_id
        self.fingerprint = fingerprint


class Store(Protocol):
    """Durable job state. Writes resolve only once they are committed."""

    #: This worker's slot on its host (0, 1, ...), claimed by :meth:`open`.
    slot: int

    #: Whether workers of other processes and hosts share this store's queue (Redis, a
    #: fleet). Then a job that cannot start at once waits in the store, not in the worker
    #: that accepted it, and every worker takes work with :meth:`claim` when it has room.
    #: False (SQLite): each worker runs what it accepted; :meth:`claim` finds nothing.
    shares_queue: bool

    async def open(self) -> None:
        """Claim this worker's part of the store and make it ready."""

    async def close(self) -> None: ...

    def hold_key(self, key: IdempotencyKey) -> AbstractAsyncContextManager[None]:
        """Keep other submits of ``key`` (on any worker) out while this one looks for an
        earlier job of it and stores its own; KeyInFlight when one is being accepted."""

    async def find_key(self, key: IdempotencyKey, now: float) -> tuple[str, bytes] | None:
        """The job and fingerprint of an unexpired earlier submit of ``key``, if any."""

    async def add(
        self,
        record: JobRecord,
        *,
        key: IdempotencyKey | None = None,
        items: BatchProgress | None = None,
    ) -> JobState:
        """Store a new job (queued, or running when it starts at once); return once it is
        durable (the 202 waits for this), with the state it was stored in: a shared queue
        that holds older jobs of the same pool stores a job offered as running as queued
        (first come, first served across the fleet). Raises Overloaded when a shared queue
        is full. With ``key``, the key is stored with the job in the same write (a shared
        store raises KeyTaken if another submit stored it first). A job stored already
        ended (an inline batch: its state final, its result set) comes with its keyed
        ``items`` results, written in the same write."""

    async def claim(self, room: Mapping[Pool, int], now: float) -> list[JobRecord]:
        """Start (queued → running, attempts + 1) up to ``room[pool]`` of the oldest queued
        jobs of each pool for this worker, and return them."""

    async def start(self, job_id: str, now: float) -> bool:
        """queued → running (attempts + 1); False if it is no longer queued (cancelled)."""

    async def progress(self, record: JobRecord, progress: BatchProgress) -> None:
        """Record finished items of a batch job."""

    async def finish(
        self,
        record: JobRecord,
        state: JobState,
        now: float,
        *,
        result: Any = None,
        error: str | None,
        progress: BatchProgress | None = None,
        how: CancelHow | None = None,
        reported: Progress | None = None,
    ) -> None:
        """running → a final state, with the result or the error (and a batch's last items,
        how a cancelled job was stopped, its task's last progress)."""

    async def finish_many(self, ends: Sequence[JobEnd], now: float) -> None:
        """:meth:`finish` for several jobs in one write (the layer ends jobs in groups)."""

    async def due(self, job_id: str) -> bool:
        """scheduled -> queued (its time has come); False if it is no longer scheduled.
        A shared queue moves due jobs itself (:meth:`claim`): there, this does nothing."""

    async def retry(
        self, record: JobRecord, *, not_before: float, error: str, attempt: FailedAttempt
    ) -> bool:
        """running -> scheduled for its next attempt at ``not_before``, the failed
        ``attempt`` recorded; False if it was not running (it was cancelled)."""

    async def report(self, job_id: str, progress: Progress) -> None:
        """Keep what a running job's task said of how far it got."""

    async def stop_requests(self) -> list[str]:
        """Running jobs a client asked to stop that may run in this worker (its own, or any
        of the fleet's for a shared store); a request goes once its job has ended."""

    async def requeue(self, job_id: str, *, error: str | None) -> None:
        """running → queued: its run was cut off and it will run again."""

    async def cancel(self, job_id: str, now: float) -> JobState | None:
        """queued → cancelled; return the state after the attempt (None: no such job)."""

    async def get(self, job_id: str) -> JobRecord | None:
        """The job as the API shows it: everything but its arguments (left empty)."""

    async def arguments(self, job_id: str) -> dict[str, Any] | None:
        """The arguments a job was submitted with (a batch's options), to submit it again;
        None if the job is unknown or they are no longer kept (SQLite drops arguments kept
        in files, over 8 KiB, when their job ends)."""

    async def list_jobs(self, query: JobQuery) -> list[JobRecord]:
        """The jobs ``query`` wants, newest first, without arguments or results; an index
        walk, never a scan of every job."""

    async def get_item(self, name: str, owner: str, key: str) -> Any | None:
        """The newest successful item result of job ``name`` with ``key`` for ``owner``."""

    async def unfinished(self) -> list[JobRecord]:
        """Jobs of this worker's part that are queued or running (to run after a restart).

        Running ones were cut off by a crash: they come back queued, marked ``interrupted``
        (their ``interruptions`` counted; :data:`INTERRUPTED` as their error). A shared queue
        puts them back in the queue instead and returns none.
        """

    async def adopt_orphans(self) -> list[JobRecord]:
        """Unfinished jobs of parts nobody holds any more, now this worker's to run. A
        shared queue puts jobs whose lease ran out back in the queue and returns none."""

    async def purge(self, now: float) -> int:
        """Delete finished jobs older than the result TTL; return how many."""

    # -- the callbacks' outbox: a job that names a callback gets its delivery in the write
    # that ends it (every move to a final state), due at once.

    async def take_deliveries(self, n: int, now: float, lease_until: float) -> list[Delivery]:
        """Up to ``n`` callbacks due by ``now``, each taken for one more attempt and leased
        until ``lease_until``: one not settled by then is due again (its worker died
        mid-POST). SQLite: this worker's shard's; Redis: any of the fleet's."""

    async def settle_delivery(
        self,
        delivery: Delivery,
        state: DeliveryState,
        now: float,
        *,
        next_at: float | None = None,
        status: int | None = None,
        error: str | None = None,
    ) -> bool:
        """Record the outcome of ``delivery``'s attempt: ``delivered``, ``failed`` (given
        up), or ``pending`` again at ``next_at``; False if it was taken again since (its
        lease ran out): nothing is written then."""

    async def resend_delivery(self, job_id: str, now: float) -> bool:
        """Make a job's callback pending again from ``now`` (its horizon starts over); False
        when the job has no delivery (no callback, or it has not ended)."""

    async def ping(self) -> None:
        """Raise if the store cannot be used (readiness)."""
