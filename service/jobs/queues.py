"""Where a stored job waits when it cannot start at once: the strategy, chosen once.

- :class:`LocalQueue` (SQLite): in the lane of the worker that accepted it. Each worker runs
  what it accepted (and what it adopts from a dead worker's shard); a scheduled job (delayed,
  or waiting for a retry) waits for its time on a timer of that worker, and is scheduled
  again from the store after a restart.
- :class:`SharedQueue` (Redis, a fleet): in the store, where any worker of any host with room
  takes it (:meth:`~service.jobs.store.Store.claim`): when one of its jobs ends while the
  queue held more, and every ``PULL_INTERVAL_S`` for work other hosts queued. A busy host
  then never sits on work an idle one could run. Scheduled jobs wait in the store too, and
  a claim moves those whose time has come to the queue first, so any host runs them.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from typing import Protocol

from service.background import cancel_and_wait
from service.errors import StoreUnavailable
from service.jobs.hold import Admissions, Hold
from service.jobs.lanes import Lanes, Waiting
from service.jobs.record import JobRecord
from service.jobs.registry import POOLS, Pool
from service.jobs.state import JobState
from service.jobs.store import Store

log = logging.getLogger(__name__)

#: Shared queue: how often a worker with room looks for jobs other hosts queued (seconds).
PULL_INTERVAL_S = 0.2
#: After the store failed, the first pause before looking for work again (seconds).
PULL_RETRY_S = 1.0


class Queue(Protocol):
    async def start(self) -> None: ...

    async def stop(self) -> None:
        """Take no more work (shutdown)."""

    def enqueue(self, pool: Pool, record: JobRecord, hold: Hold) -> None:
        """``record`` was stored queued: it waits for a place."""

    def schedule(self, pool: Pool, record: JobRecord) -> None:
        """``record`` was stored scheduled: it waits for ``record.not_before``."""

    def unschedule(self, job_id: str) -> bool:
        """A scheduled job was cancelled: stop waiting for it; whether it waited here."""

    def scheduled(self, pool: Pool) -> int:
        """Jobs of ``pool`` waiting here for their time."""

    def freed(self, pool: Pool, suspect: bool = False) -> None:
        """A place of ``pool`` was freed (every pool's, after a suspect)."""


class LocalQueue:
    """A job waits in this worker's lane; a scheduled one on a timer of this worker."""

    def __init__(
        self,
        *,
        store: Store,
        lanes: Lanes,
        admissions: Admissions,
        clock: Callable[[], float],
    ) -> None:
        self.store = store
        self.lanes = lanes
        self.admissions = admissions
        self.clock = clock
        self._timers: dict[str, tuple[Pool, asyncio.TimerHandle]] = {}
        self._moving: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        pass

    async def stop(self) -> None:
        # They stay scheduled in the store: the next start of this shard schedules them.
        for _, timer in self._timers.values():
            timer.cancel()
        self._timers.clear()

    def enqueue(self, pool: Pool, record: JobRecord, hold: Hold) -> None:
        self.lanes.add(pool, Waiting(record, hold))
        self.lanes.pump(pool)

    def schedule(self, pool: Pool, record: JobRecord) -> None:
        delay = max(0.0, (record.not_before or 0.0) - self.clock())
        timer = asyncio.get_running_loop().call_later(delay, self._due, pool, record)
        self._timers[record.id] = (pool, timer)

    def unschedule(self, job_id: str) -> bool:
        found = self._timers.pop(job_id, None)
        if found is not None:
            found[1].cancel()
        return found is not None

    def scheduled(self, pool: Pool) -> int:
        return sum(p == pool for p, _ in self._timers.values())

    def _due(self, pool: Pool, record: JobRecord) -> None:
        self._timers.pop(record.id, None)
        task = asyncio.get_running_loop().create_task(self._queue(pool, record))
        self._moving.add(task)
        task.add_done_callback(self._moving.discard)

    async def _queue(self, pool: Pool, record: JobRecord) -> None:
        """Its time has come: queued in the store, then it waits here for a place."""
        try:
            if not await self.store.due(record.id):
                return  # cancelled meanwhile
        except StoreUnavailable:
            # Still scheduled in the store: try again soon (the store logged why).
            self.schedule(pool, record.replace(not_before=self.clock() + PULL_RETRY_S))
            return
        places = len(record.items) if record.items is not None else 1
        hold = self.admissions.readmit(pool, record.owner, places)  # accepted already
        self.enqueue(pool, record.replace(state=JobState.QUEUED), hold)

    def freed(self, pool: Pool, suspect: bool = False) -> None:
        pass  # the lanes start what waits for the place


class SharedQueue:
    """A job waits in the store; this worker claims queued jobs as far as it has room."""

    def __init__(
        self,
        *,
        store: Store,
        lanes: Lanes,
        admissions: Admissions,
        pool_of: Callable[[JobRecord], Pool],
        clock: Callable[[], float],
    ) -> None:
        self.store = store
        self.lanes = lanes
        self.admissions = admissions
        self.pool_of = pool_of
        self.clock = clock
        self._task: asyncio.Task[None] | None = None
        self._pull_now = asyncio.Event()
        self._stopping = False
        #: Per pool: whether the shared queue may hold more than this worker took last.
        self._more: dict[Pool, bool] = dict.fromkeys(POOLS, True)
        #: Per pool: whether this worker queued a job while its last claim was in flight.
        self._queued_meanwhile: dict[Pool, bool] = dict.fromkeys(POOLS, False)

    async def start(self) -> None:
        self._task = asyncio.create_task(self._pull_loop(), name="jobpool-puller")

    async def stop(self) -> None:
        self._stopping = True
        await cancel_and_wait(self._task)

    def enqueue(self, pool: Pool, record: JobRecord, hold: Hold) -> None:
        # It waits in the store (bounded there), which counts it in flight for its client:
        # this worker holds nothing for it until it claims it.
        hold.release()
        self._more[pool] = True
        self._queued_meanwhile[pool] = True
        if self.lanes.room(pool):
            self._pull_now.set()

    def schedule(self, pool: Pool, record: JobRecord) -> None:
        pass  # it waits in the store; a claim moves it to the queue when it is due

    def unschedule(self, job_id: str) -> bool:
        return False

    def scheduled(self, pool: Pool) -> int:
        return 0

    def freed(self, pool: Pool, suspect: bool = False) -> None:
        if self._more[pool] or suspect:
            self._pull_now.set()

    async def _pull_loop(self) -> None:
        pause = PULL_INTERVAL_S
        while not self._stopping:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._pull_now.wait(), pause)
            self._pull_now.clear()
            pause = PULL_INTERVAL_S
            room = {pool: n for pool in POOLS if (n := self.lanes.room(pool))}
            if not room or self._stopping:
                continue
            for pool, n in room.items():  # held while the claim is in flight
                self.lanes[pool].running += n
                self._queued_meanwhile[pool] = False
            try:
                records = await self.store.claim(room, self.clock())
            except StoreUnavailable:
                records = []
                pause = PULL_RETRY_S  # the store logged it; look again later
            except Exception:
                records = []
                pause = PULL_RETRY_S
                log.exception("taking work from the store failed")
            finally:
                for pool, n in room.items():
                    self.lanes[pool].running -= n
            self._take(records)
            for pool, n in room.items():
                got = sum(self.pool_of(r) == pool for r in records)
                # Took all it asked for, or queued a job itself meanwhile (a submit that
                # found the room held by this claim): there may be more.
                self._more[pool] = got >= n or self._queued_meanwhile[pool]
                if self._more[pool]:
                    self._pull_now.set()

    def _take(self, records: list[JobRecord]) -> None:
        """Run the claimed jobs (already running in the store). A job whose last run ended
        with its process runs alone, as after a restart: the others of the same claim wait
        here until it is done."""
        alone = any(record.interrupted for record in records)
        for record in records:
            pool = self.pool_of(record)
            places = len(record.items) if record.items is not None else 1
            job = Waiting(record, self.admissions.readmit(pool, record.owner, places), True)
            if alone:
                self.lanes.add(pool, job)
            else:
                self.lanes.start_now(pool, job)
        if alone:
            self.lanes.pump()
