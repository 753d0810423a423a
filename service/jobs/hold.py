"""What a job holds while a worker has it: places in its pool, and one count against its
client's cap of jobs in flight. Both are taken together when the job is admitted and given
back together, exactly once, whichever way the job leaves the worker (it ends, is cancelled
while it waits, is requeued at shutdown, or is handed to a shared queue).

A place is one task's worth of the pool's admission bound (:mod:`service.jobs.admission`); a
batch holds one per item. An io place cannot go back before its thread is done (a thread
cannot be stopped), so it is handed over to the thread's future and goes back when that
ends; the rest go back at :meth:`Hold.release`.
"""

from __future__ import annotations

import asyncio
from typing import Any, Protocol

from service.errors import Overloaded, TooManyJobs, TooManyTasks
from service.jobs import events as ev
from service.jobs.admission import Admission
from service.jobs.registry import Pool


class Quota(Protocol):
    """Jobs in flight per owner (a cap may refuse one); see :mod:`service.clients`.

    On one host a job counts on the worker that holds it, from its admission (or resume)
    until it leaves. With a fleet's shared store the store counts them itself, in the steps
    that change a job's state, and these do nothing.
    """

    def acquire(self, owner: str) -> None:
        """Count a new job of ``owner``, or raise (a ServiceError) if it is over its cap."""

    def force(self, owner: str) -> None:
        """Count a job accepted earlier (resumed), whatever the cap."""

    def release(self, owner: str) -> None:
        """A counted job of ``owner`` has left this worker."""


class NoQuota:
    """No cap on jobs in flight."""

    def acquire(self, owner: str) -> None:
        pass

    def force(self, owner: str) -> None:
        pass

    def release(self, owner: str) -> None:
        pass


class Hold:
    """A job's places in its pool and its count against its client's cap."""

    __slots__ = ("_counted", "admission", "owner", "places", "quota")

    def __init__(self, admission: Admission, places: int, quota: Quota, owner: str) -> None:
        self.admission = admission
        self.places = places
        self.quota = quota
        self.owner = owner
        self._counted = True

    def hand_over(self, future: asyncio.Future[Any], n: int = 1) -> None:
        """``n`` places go back when ``future`` ends (a thread), not at :meth:`release`."""
        n = self.take(n)
        future.add_done_callback(lambda _f: self.admission.release(n))

    def take(self, n: int) -> int:
        """Take ``n`` places out of the hold (a batch chunk gives them back with
        :meth:`give_back` when its thread is done); returns how many it took."""
        n = min(n, self.places)
        self.places -= n
        return n

    def give_back(self, n: int) -> None:
        """Places taken out with :meth:`take` are free again."""
        self.admission.release(n)

    def release(self) -> None:
        """Give back what is held; once: a second call does nothing."""
        if not self._counted:
            return
        self._counted = False
        if self.places:
            self.admission.release(self.places)
            self.places = 0
        self.quota.release(self.owner)


class Admissions:
    """The admission bound of each pool and the client quota: where holds are taken."""

    def __init__(
        self,
        *,
        io_queue_max: int,
        cpu_queue_max: int,
        wait_s: float,
        quota: Quota | None = None,
        events: ev.JobEvents,
    ) -> None:
        self.quota: Quota = quota or NoQuota()
        self.events = events
        self.pools: dict[Pool, Admission] = {
            "io": Admission("io", io_queue_max, wait_s=wait_s),
            "cpu": Admission("cpu", cpu_queue_max, wait_s=wait_s),
        }

    async def admit(self, job: str, pool: Pool, owner: str, places: int) -> Hold:
        """A hold for a new job: its client's count, then ``places`` in ``pool``; a refusal
        is counted and raised (TooManyJobs, TooManyTasks, Overloaded)."""
        try:
            self.quota.acquire(owner)
        except TooManyJobs:
            self.events.rejected(job, ev.CLIENT_LIMIT)
            raise
        admission = self.pools[pool]
        try:
            await admission.acquire(places)
        except BaseException as ex:
            self.quota.release(owner)
            if isinstance(ex, TooManyTasks):
                self.events.rejected(job, ev.TOO_LARGE)
            elif isinstance(ex, Overloaded):
                self.events.rejected(job, ev.OVERLOADED)
            raise
        return Hold(admission, places, self.quota, owner)

    def readmit(self, pool: Pool, owner: str, places: int) -> Hold:
        """A hold for a job accepted earlier (resumed, or claimed from a shared queue):
        never refused, even past the bounds."""
        admission = self.pools[pool]
        admission.force(places)
        self.quota.force(owner)
        return Hold(admission, places, self.quota, owner)
