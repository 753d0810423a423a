"""Where this worker's jobs wait for a place, and which one starts next.

Each pool has a lane: at most ``limit`` jobs running, the rest waiting first come, first
served. Batch jobs run their items in chunks shared by many jobs (:mod:`service.jobs.batches`):
a chunk in flight takes a thread, so chunks take places of the io lane too.

Jobs a crash cut off (``record.interrupted``) are suspects: one of them may be what crashed
the process. They run one at a time with nothing else beside them (the quarantine), so a
poison job takes down only itself; the lanes wait until none is left.
"""

from __future__ import annotations

import collections
from collections.abc import Callable
from dataclasses import dataclass

from service.jobs.hold import Hold
from service.jobs.record import JobRecord
from service.jobs.registry import POOLS, Pool


@dataclass(slots=True)
class Waiting:
    """A job waiting here for a place."""

    record: JobRecord
    hold: Hold
    #: Already running in the store (claimed from a shared queue): no start to write.
    started: bool = False


class Lane:
    """One pool's running jobs (at most ``limit``) and the jobs waiting for a place."""

    def __init__(
        self,
        limit: int,
        shared: Callable[[], int] = lambda: 0,
        active: Callable[[], bool] = lambda: False,
    ) -> None:
        self.limit = limit
        self.running = 0
        #: Places taken by other work than jobs of this lane (batch chunks in flight).
        self.shared = shared
        #: Whether such other work is going on (a batch is running).
        self.active = active
        self.waiting: collections.deque[Waiting] = collections.deque()

    @property
    def free(self) -> int:
        return self.limit - self.running - self.shared()

    @property
    def busy(self) -> bool:
        return self.running > 0 or self.active()


#: Starts a job that got its place: (pool, the job, whether it is a suspect).
Starter = Callable[[Pool, Waiting, bool], None]


class Lanes:
    """The lanes of this worker's pools, and the suspects of the quarantine."""

    def __init__(self, lanes: dict[Pool, Lane], start: Starter) -> None:
        self.lanes = lanes
        self._start = start
        self._suspects: collections.deque[tuple[Pool, Waiting]] = collections.deque()
        self._suspect_running = False
        self.stopped = False

    def __getitem__(self, pool: Pool) -> Lane:
        return self.lanes[pool]

    @property
    def quarantined(self) -> bool:
        return bool(self._suspects) or self._suspect_running

    def can_start_now(self, pool: Pool) -> bool:
        """Whether a new job of ``pool`` may start at once (nothing waits before it)."""
        lane = self.lanes[pool]
        return not self.quarantined and not lane.waiting and lane.free > 0

    def room(self, pool: Pool) -> int:
        """How many more jobs of ``pool`` this worker could start now (for a claim)."""
        if self.quarantined:
            return 0  # a job a crash cut off runs alone first
        lane = self.lanes[pool]
        return max(0, lane.free - len(lane.waiting))

    def add(self, pool: Pool, job: Waiting) -> None:
        """``job`` waits for a place; a suspect waits for the quarantine."""
        if job.record.interrupted:
            self._suspects.append((pool, job))
        else:
            self.lanes[pool].waiting.append(job)

    def pump(self, pool: Pool | None = None) -> None:
        """Start waiting jobs while there is room (every pool when ``pool`` is None);
        suspects first, each alone."""
        if self.stopped:
            return
        if self.quarantined:
            if self._suspect_running or any(lane.busy for lane in self.lanes.values()):
                return
            suspect_pool, job = self._suspects.popleft()
            self._suspect_running = True
            self.lanes[suspect_pool].running += 1
            self._start(suspect_pool, job, True)
            return
        for each in POOLS if pool is None else (pool,):
            lane = self.lanes[each]
            while lane.waiting and lane.free > 0:
                job = lane.waiting.popleft()
                lane.running += 1
                self._start(each, job, False)

    def start_now(self, pool: Pool, job: Waiting) -> None:
        """Start ``job`` at once, whatever waits (it was given its place by a claim)."""
        self.lanes[pool].running += 1
        self._start(pool, job, False)

    def ended(self, pool: Pool, suspect: bool) -> None:
        """A job that :meth:`pump` started has ended: start what waits for its place."""
        self.lanes[pool].running -= 1
        if suspect:
            self._suspect_running = False
        self.freed(pool, suspect)

    def freed(self, pool: Pool, suspect: bool = False) -> None:
        """A place of ``pool`` is free: start what waits for it (in every pool while the
        quarantine holds them all back)."""
        self.pump(None if suspect or self.quarantined else pool)

    def drop(self, job_id: str) -> Waiting | None:
        """Take a waiting job out (it was cancelled); None if it does not wait here."""
        for lane in self.lanes.values():
            for job in lane.waiting:
                if job.record.id == job_id:
                    lane.waiting.remove(job)
                    return job
        for entry in self._suspects:
            if entry[1].record.id == job_id:
                self._suspects.remove(entry)
                return entry[1]
        return None

    def holds(self, job_id: str) -> bool:
        """Whether ``job_id`` waits here."""
        return any(
            job.record.id == job_id for lane in self.lanes.values() for job in lane.waiting
        ) or any(job.record.id == job_id for _, job in self._suspects)

    def queued(self, pool: Pool) -> int:
        """Jobs of ``pool`` waiting here, suspects included."""
        return len(self.lanes[pool].waiting) + sum(p == pool for p, _ in self._suspects)

    def take_all(self) -> list[Waiting]:
        """Every waiting job, taken out (shutdown); no more start after this."""
        self.stopped = True
        jobs = [job for lane in self.lanes.values() for job in lane.waiting]
        jobs += [job for _, job in self._suspects]
        for lane in self.lanes.values():
            lane.waiting.clear()
        self._suspects.clear()
        return jobs
