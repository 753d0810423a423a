"""The job layer: admit, store, run and recover jobs. It knows nothing of HTTP.

One ``JobLayer`` per gunicorn worker. Endpoints call :meth:`JobLayer.submit` (or
:meth:`JobLayer.submit_batch`) with a job's name; the layer picks the pool the job was
declared with. A job is stored before it is acknowledged. When a thread or process is free
at that moment it is stored already running (one write, not two); otherwise it is stored
queued and waits its turn in its pool's lane, first come first served.

With a store whose queue is shared by a fleet (Redis), a queued job waits in the store
instead of a lane: any worker of any host may run it. Each worker takes work from the store
when it has room (:meth:`JobLayer._pull_loop`): when one of its jobs ends while the queue
held more, and every ``PULL_INTERVAL_S`` for work other hosts queued.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import time
from collections.abc import Callable
from typing import Any, Protocol

from service.errors import (
    Overloaded,
    ShuttingDown,
    StoreUnavailable,
    TooManyJobs,
    TooManyTasks,
)
from service.ids import new_id
from service.jobs import events as ev
from service.jobs.admission import Admission
from service.jobs.batches import Batch, BatchRunner
from service.jobs.batches import describe as describe  # the reason a job failed with
from service.jobs.cpu_pool import CpuPool, ProcessDied, TaskTimeout
from service.jobs.io_pool import IoPool
from service.jobs.record import BatchProgress, JobEnd, JobRecord
from service.jobs.registry import POOLS, JobSpec, Pool, Registry
from service.jobs.state import JobState, is_final
from service.jobs.store import Store
from service.jobs.unwritten import UnwrittenEnds

log = logging.getLogger(__name__)

SHUTDOWN_REQUEUE_S = 5.0
#: Shared queue: how often a worker with room looks for jobs other hosts queued (seconds).
PULL_INTERVAL_S = 0.2
#: How often a wait on a job that runs elsewhere reads it again (seconds).
WAIT_POLL_S = 0.1
#: After the store failed, the first pause before looking for work again (seconds).
PULL_RETRY_S = 1.0


class Quota(Protocol):
    """Jobs in flight per owner (a cap may refuse one); see :mod:`service.clients.limits`.

    On one host (:class:`service.clients.host.HostLimits`) a job counts on the worker that holds
    it: from its submit (or resume) until it ends there. With a fleet's shared store the
    store counts them itself, in the steps that change a job's state, queued ones
    included, and its ``add`` refuses a job over the cap (TooManyJobs); these hooks do
    nothing then (:class:`service.clients.fleet.FleetLimits`).
    """

    def acquire(self, owner: str) -> None:
        """Count a new job of ``owner``, or raise (a ServiceError) if it is over its cap."""

    def force(self, owner: str) -> None:
        """Count a job accepted earlier (resumed), whatever the cap."""

    def release(self, owner: str) -> None:
        """A counted job of ``owner`` has ended here."""


class NoQuota:
    """No cap on jobs in flight."""

    def acquire(self, owner: str) -> None:
        pass

    def force(self, owner: str) -> None:
        pass

    def release(self, owner: str) -> None:
        pass


class _Slots:
    """Admission slots a job holds; io slots go back only when their thread is done."""

    def __init__(self, admission: Admission, count: int) -> None:
        self.admission = admission
        self.count = count

    def hand_over(self, future: asyncio.Future[Any], n: int) -> None:
        n = min(n, self.count)
        self.count -= n
        future.add_done_callback(lambda _f: self.admission.release(n))

    def release(self) -> None:
        if self.count:
            self.admission.release(self.count)
            self.count = 0


class _Lane:
    """A pool's running jobs (at most ``limit``) and the jobs waiting for a place.

    Batch jobs run their items in chunks shared by many jobs (see batches.py): one chunk in
    flight takes one thread, so they take ``shared()`` places, and ``active()`` says whether
    any of them is still going on.
    """

    def __init__(
        self,
        limit: int,
        shared: Callable[[], int] = lambda: 0,
        active: Callable[[], bool] = lambda: False,
    ) -> None:
        self.limit = limit
        self.running = 0
        self.shared = shared
        self.active = active
        self.waiting: collections.deque[tuple[JobRecord, _Slots]] = collections.deque()

    @property
    def free(self) -> int:
        return self.limit - self.running - self.shared()

    @property
    def has_room(self) -> bool:
        return not self.waiting and self.free > 0

    @property
    def busy(self) -> bool:
        return self.running > 0 or self.active()


class JobLayer:
    """Submit jobs by name; they run on the pool their declaration names."""

    def __init__(
        self,
        *,
        registry: Registry,
        store: Store,
        io_pool: IoPool,
        cpu_pool_factory: Callable[[int], CpuPool],
        io_queue_max: int,
        cpu_queue_max: int,
        admission_wait_s: float,
        max_attempts: int,
        janitor_interval_s: float,
        clock: Callable[[], float] = time.time,
        id_factory: Callable[[], str] = new_id,
        quota: Quota | None = None,
        events: ev.JobEvents | None = None,
    ) -> None:
        self.registry = registry
        self.quota: Quota = quota or NoQuota()
        self.store = store
        self.io = io_pool
        self._cpu_pool_factory = cpu_pool_factory
        self._cpu: CpuPool | None = None
        self.max_attempts = max_attempts
        self.janitor_interval_s = janitor_interval_s
        self.clock = clock
        self.new_id = id_factory
        self.events = events or ev.JobEvents()
        self.admission: dict[Pool, Admission] = {
            "io": Admission("io", io_queue_max, wait_s=admission_wait_s),
            "cpu": Admission("cpu", cpu_queue_max, wait_s=admission_wait_s),
        }
        #: Job ends the store refused, written again by the janitor.
        self.unwritten = UnwrittenEnds()
        self.batches = BatchRunner(
            io_pool, store, clock, on_chunk_done=self._pump_io, unwritten=self.unwritten
        )
        self._lanes: dict[Pool, _Lane] = {
            "io": _Lane(
                io_pool.threads,
                shared=lambda: self.batches.chunks_in_flight,
                active=lambda: bool(self.batches.running),
            ),
            "cpu": _Lane(1),
        }
        # Jobs a crash cut off. One of them may be what crashed the process, so they run one
        # at a time with nothing else beside them: a poison job takes down only itself.
        self._suspects: collections.deque[tuple[Pool, tuple[JobRecord, _Slots]]] = (
            collections.deque()
        )
        self._suspect_running = False
        #: Jobs claimed from a shared queue that wait here: already started when they run.
        self._claimed: set[str] = set()
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._waiters: dict[str, list[asyncio.Future[None]]] = {}
        self._janitor: asyncio.Task[None] | None = None
        self._puller: asyncio.Task[None] | None = None
        self._pull_now = asyncio.Event()
        #: Per pool: whether the shared queue may hold more than this worker took last.
        self._more_queued: dict[Pool, bool] = dict.fromkeys(POOLS, True)
        #: Per pool: whether this worker queued a job while its last claim was in flight.
        self._queued_meanwhile: dict[Pool, bool] = dict.fromkeys(POOLS, False)
        self.draining = False

    # -- life cycle -------------------------------------------------------------------

    async def start(self) -> None:
        """Open the store and run what earlier processes accepted and did not finish."""
        await self.store.open()
        # The worker's slot on the host is known once the store is claimed; the cpu budget
        # of the host is shared out by slot.
        self._cpu = self._cpu_pool_factory(self.store.slot)
        self._lanes["cpu"] = _Lane(self._cpu.processes)
        self._resume(await self.store.unfinished())
        self._janitor = asyncio.create_task(self._janitor_loop(), name="jobpool-janitor")
        if self.store.shares_queue:
            self._puller = asyncio.create_task(self._pull_loop(), name="jobpool-puller")

    async def close(self, *, drain_s: float) -> None:
        """Stop taking jobs; let running ones finish within ``drain_s``; requeue the rest.

        Jobs still waiting in a lane are already queued in the store: the next start (of
        this worker's slot, or a janitor adopting it) runs them.
        """
        self.draining = True
        for helper in (self._janitor, self._puller):
            if helper is not None:
                helper.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await helper
        loop = asyncio.get_running_loop()
        deadline = loop.time() + drain_s
        tasks = list(self._tasks.values())
        late: set[asyncio.Task[None]] = set()
        if tasks:
            _, late = await asyncio.wait(tasks, timeout=drain_s)
        # Batches that started at once run without a task of their own (see batches.py).
        cut = [
            batch
            for batch in await self.batches.drain(max(0.0, deadline - loop.time()))
            if batch.record.id not in self._tasks
        ]
        for task in late:
            task.cancel()
        for batch in cut:
            with contextlib.suppress(StoreUnavailable):
                await self.store.requeue(batch.record.id, error="interrupted by shutdown")
            self.quota.release(batch.record.owner)
        if late or cut:
            log.warning("%d jobs still running at shutdown: requeued", len(late) + len(cut))
        if late:
            await asyncio.wait(late, timeout=SHUTDOWN_REQUEUE_S)
        # Claimed from a shared queue but never run (they waited behind a suspect): back
        # to the queue for another worker.
        for job_id in list(self._claimed):
            with contextlib.suppress(StoreUnavailable):
                await self.store.requeue(job_id, error="interrupted by shutdown")
        self._claimed.clear()
        await self.unwritten.write(self.store)
        if self.unwritten:
            log.warning("%d job ends could not be written: those jobs run again at the "
                        "next start", len(self.unwritten))  # fmt: skip
        self.io.close(wait=False)
        if self._cpu is not None:
            self._cpu.close(wait=False)
        await self.store.close()

    @property
    def cpu(self) -> CpuPool:
        if self._cpu is None:
            raise RuntimeError("the job layer has not started")
        return self._cpu

    def _resume(self, records: list[JobRecord]) -> None:
        for record in records:
            slots = len(record.items) if record.items is not None else 1
            pool = self._pool_of(record)
            self.admission[pool].force(slots)  # already accepted: never refused now
            self.quota.force(record.owner)
            entry = (record, _Slots(self.admission[pool], slots))
            if record.interrupted:
                self._suspects.append((pool, entry))
            else:
                self._lanes[pool].waiting.append(entry)
        for pool in self._lanes:
            self._pump(pool)
        if records:
            log.warning(
                "resuming %d unfinished jobs (%d cut off by a crash, run one at a time)",
                len(records), len(self._suspects),
            )  # fmt: skip

    async def _janitor_loop(self) -> None:
        while True:
            await asyncio.sleep(self.janitor_interval_s)
            try:
                await self.unwritten.write(self.store)
                await self.store.purge(self.clock())
                self._resume(await self.store.adopt_orphans())
            except StoreUnavailable as ex:
                log.error("janitor: %s", ex.detail)
            except Exception:
                log.exception("janitor failed")

    # -- submitting -------------------------------------------------------------------

    async def submit(self, name: str, args: dict[str, Any], *, owner: str) -> JobRecord:
        """Store the job ``name`` with keyword ``args`` and start it; raises Overloaded."""
        return await self._accept(self.registry.get(name), args, None, owner)

    async def submit_batch(
        self, name: str, items: list[Any], *, owner: str, options: dict[str, Any] | None = None
    ) -> JobRecord:
        """One job of ``len(items)`` tasks: ``fn(item, **options)`` for each item."""
        spec = self.registry.get(name)
        if spec.pool != "io":
            raise ValueError(f"job {name!r}: batches run on the io pool, not {spec.pool!r}")
        return await self._accept(spec, options or {}, items, owner)

    async def _accept(
        self, spec: JobSpec, args: dict[str, Any], items: list[Any] | None, owner: str
    ) -> JobRecord:
        if self.draining:
            self.events.rejected(spec.name, ev.SHUTTING_DOWN)
            raise ShuttingDown("this worker is shutting down; retry on another")
        count = 1 if items is None else len(items)
        admission = self.admission[spec.pool]
        try:
            self.quota.acquire(owner)
        except TooManyJobs:
            self.events.rejected(spec.name, ev.CLIENT_LIMIT)
            raise
        try:
            await admission.acquire(count)
        except BaseException as ex:
            self.quota.release(owner)
            if isinstance(ex, TooManyTasks):
                self.events.rejected(spec.name, ev.TOO_LARGE)
            elif isinstance(ex, Overloaded):
                self.events.rejected(spec.name, ev.OVERLOADED)
            raise
        slots = _Slots(admission, count)
        lane = self._lanes[spec.pool]
        now = self.clock()
        starts_now = lane.has_room and not self._quarantine
        if starts_now:
            lane.running += 1  # held while the row is written, so no one else takes it
        record = JobRecord(
            id=self.new_id(),
            name=spec.name,
            owner=owner,
            state=JobState.RUNNING if starts_now else JobState.QUEUED,
            created_at=now,
            started_at=now if starts_now else None,
            attempts=1 if starts_now else 0,
            args=args,
            items=items,
        )
        try:
            stored = await self.store.add(record)
        except BaseException as ex:
            if isinstance(ex, StoreUnavailable):
                shutting = isinstance(ex, ShuttingDown)
                self.events.rejected(
                    spec.name, ev.SHUTTING_DOWN if shutting else ev.STORE_UNAVAILABLE
                )
            elif isinstance(ex, TooManyJobs):  # a shared store counts the client's jobs
                self.events.rejected(spec.name, ev.CLIENT_LIMIT)
            elif isinstance(ex, Overloaded):  # a shared store's queue is full
                self.events.rejected(spec.name, ev.OVERLOADED)
            slots.release()
            self.quota.release(owner)
            if starts_now:
                lane.running -= 1
                self._pump(spec.pool)
            raise
        self.events.accepted(spec.name, spec.pool)
        if stored is JobState.RUNNING and items is not None:
            lane.running -= 1  # from here its chunks take the places (see _Lane)
            self.events.started(spec.name, 0.0)
            self.batches.start(spec, record, slots, self._batch_ended)
            return record
        if stored is JobState.RUNNING:
            self._spawn(spec.pool, record, slots, started=True)
            return record
        if starts_now:  # older jobs wait in the shared queue: this one goes behind them
            lane.running -= 1
            record = record.replace(state=JobState.QUEUED, started_at=None, attempts=0)
        if self.store.shares_queue:
            # It waits in the store (bounded there), where any worker with room takes it;
            # the store counts it in flight (the quota's hooks count held jobs only).
            slots.release()
            self.quota.release(owner)
            self._want_work(spec.pool)
        else:
            lane.waiting.append((record, slots))
            self._pump(spec.pool)
        return record

    # -- reading ----------------------------------------------------------------------

    async def get(self, job_id: str) -> JobRecord | None:
        return await self.store.get(job_id)

    async def wait(self, job_id: str, timeout_s: float) -> JobRecord | None:
        """The job once final, or as it is after ``timeout_s``.

        A job of this worker wakes its waiters when it ends; one that runs elsewhere (another
        worker, another host) is read again every ``WAIT_POLL_S``.
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        while True:
            if job_id in self._tasks or job_id in self.batches.running or self._is_waiting(job_id):
                future = loop.create_future()
                self._waiters.setdefault(job_id, []).append(future)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(future, max(0.0, deadline - loop.time()))
                return await self.store.get(job_id)
            record = await self.store.get(job_id)
            left = deadline - loop.time()
            if record is None or is_final(record.state) or left <= 0:
                return record
            await asyncio.sleep(min(WAIT_POLL_S, left))

    def _is_waiting(self, job_id: str) -> bool:
        return any(r.id == job_id for lane in self._lanes.values() for r, _ in lane.waiting)

    def pool_stats(self) -> list[ev.PoolStats]:
        """How full each pool of this worker is (the cpu pool once the layer started)."""
        stats = []
        for pool, lane in self._lanes.items():
            admission = self.admission[pool]
            if pool == "io":
                busy, slots = min(self.io.busy, self.io.threads), self.io.threads
            elif self._cpu is not None:
                busy, slots = self._cpu.busy, self._cpu.processes
            else:
                continue
            stats.append(
                ev.PoolStats(
                    pool=pool,
                    queued_jobs=len(lane.waiting) + sum(p == pool for p, _ in self._suspects),
                    running_jobs=lane.running + (len(self.batches.running) if pool == "io" else 0),
                    busy_slots=busy,
                    slots=slots,
                    admitted_tasks=admission.in_use,
                    admission_limit=admission.capacity,
                )
            )
        return stats

    async def cancel(self, job_id: str) -> JobState | None:
        before = await self.store.get(job_id)
        state = await self.store.cancel(job_id, self.clock())
        if before is not None and before.state is JobState.QUEUED and state is JobState.CANCELLED:
            self.events.finished(before.name, JobState.CANCELLED, None)
            self._drop_waiting(job_id)
        return state

    def _drop_waiting(self, job_id: str) -> None:
        """A job cancelled while it waits in this worker's queue gives back its pool places
        and its count against its client's cap now, not when its turn would have come. (One
        waiting in another worker's queue is skipped there when its turn comes.)"""
        for lane in self._lanes.values():
            for entry in lane.waiting:
                record, slots = entry
                if record.id == job_id:
                    lane.waiting.remove(entry)
                    slots.release()
                    self.quota.release(record.owner)
                    self._wake(job_id)
                    return

    # -- running ----------------------------------------------------------------------

    @property
    def _quarantine(self) -> bool:
        return bool(self._suspects) or self._suspect_running

    def _pump(self, pool: Pool) -> None:
        """Start waiting jobs while the pool has room (suspects first, alone)."""
        if self.draining:
            return
        if self._quarantine:
            if self._suspect_running or any(lane.busy for lane in self._lanes.values()):
                return
            suspect_pool, (record, slots) = self._suspects.popleft()
            self._suspect_running = True
            self._lanes[suspect_pool].running += 1
            started = record.id in self._claimed
            self._claimed.discard(record.id)
            self._spawn(suspect_pool, record, slots, started=started, suspect=True)
            return
        lane = self._lanes[pool]
        while lane.waiting and lane.free > 0:
            record, slots = lane.waiting.popleft()
            lane.running += 1
            started = record.id in self._claimed
            self._claimed.discard(record.id)
            self._spawn(pool, record, slots, started=started)

    def _spawn(
        self, pool: Pool, record: JobRecord, slots: _Slots, *, started: bool,
        suspect: bool = False,
    ) -> None:  # fmt: skip
        task = asyncio.create_task(self._run(record, slots, started=started))
        self._tasks[record.id] = task
        task.add_done_callback(lambda _t: self._ended(pool, record.id, record.owner, suspect))

    def _ended(self, pool: Pool, job_id: str, owner: str, suspect: bool) -> None:
        self.quota.release(owner)
        self._tasks.pop(job_id, None)
        self._wake(job_id)
        self._lanes[pool].running -= 1
        if suspect:
            self._suspect_running = False
        self._freed(pool, suspect)

    def _freed(self, pool: Pool, suspect: bool = False) -> None:
        for each in self._lanes if suspect or self._quarantine else (pool,):
            self._pump(each)
        if self.store.shares_queue and (self._more_queued[pool] or suspect):
            self._pull_now.set()

    def _wake(self, job_id: str) -> None:
        for future in self._waiters.pop(job_id, ()):
            if not future.done():
                future.set_result(None)

    def _batch_ended(self, batch: Batch) -> None:
        """A batch that started at once (no task of its own) has ended and is written."""
        self._batch_events(batch)
        slots = batch.slots
        assert isinstance(slots, _Slots)
        slots.release()
        self.quota.release(batch.record.owner)
        self._wake(batch.record.id)
        self._freed(batch.spec.pool)

    def _batch_events(self, batch: Batch) -> None:
        record = batch.record
        if batch.state is None:
            return  # its end could not be written: it runs again
        ran_s = None if record.started_at is None else max(0.0, batch.ended_at - record.started_at)
        self.events.finished(record.name, batch.state, ran_s)
        if batch.state is JobState.FAILED:
            log.info("job %s (%s) failed: %s", record.id, record.name, batch.error,
                     extra={"job_id": record.id})  # fmt: skip

    def _pump_io(self) -> None:
        """A chunk's thread is free again: start what waits for one."""
        if self._lanes["io"].waiting or self._quarantine:
            self._freed("io")

    # -- taking work from a shared queue ----------------------------------------------

    def _want_work(self, pool: Pool) -> None:
        """A job of ``pool`` was queued in the shared store: take it if there is room."""
        self._more_queued[pool] = True
        self._queued_meanwhile[pool] = True
        if self._room(pool):
            self._pull_now.set()

    def _room(self, pool: Pool) -> int:
        if self._quarantine:
            return 0  # a job a crash cut off runs alone first
        lane = self._lanes[pool]
        return max(0, lane.free - len(lane.waiting))

    async def _pull_loop(self) -> None:
        """Claim queued jobs from the shared store as far as the pools have room."""
        pause = PULL_INTERVAL_S
        while not self.draining:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._pull_now.wait(), pause)
            self._pull_now.clear()
            pause = PULL_INTERVAL_S
            room = {pool: n for pool in POOLS if (n := self._room(pool))}
            if not room or self.draining:
                continue
            for pool, n in room.items():  # held while the claim is in flight
                self._lanes[pool].running += n
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
                    self._lanes[pool].running -= n
            got: dict[Pool, int] = dict.fromkeys(room, 0)
            # A job whose last run ended with its process runs alone, as _resume has it:
            # the others of the same claim wait here until it is done.
            alone = any(record.interrupted for record in records)
            for record in records:
                pool = self._pool_of(record)
                got[pool] = got.get(pool, 0) + 1
                slots = len(record.items) if record.items is not None else 1
                self.admission[pool].force(slots)  # already accepted: never refused now
                self.quota.force(record.owner)  # held here now, released when it ends
                entry = (record, _Slots(self.admission[pool], slots))
                if alone:
                    self._claimed.add(record.id)
                    if record.interrupted:
                        self._suspects.append((pool, entry))
                    else:
                        self._lanes[pool].waiting.append(entry)
                    continue
                self._lanes[pool].running += 1
                self._spawn(pool, *entry, started=True)
            if alone:
                for each in self._lanes:
                    self._pump(each)
            for pool, n in room.items():
                # Took all it asked for, or queued a job itself meanwhile (a submit that
                # found the room held by this claim): there may be more.
                self._more_queued[pool] = got[pool] >= n or self._queued_meanwhile[pool]
                if self._more_queued[pool]:
                    self._pull_now.set()

    def _pool_of(self, record: JobRecord) -> Pool:
        return self.registry.get(record.name).pool if record.name in self.registry else "io"

    async def _run(self, record: JobRecord, slots: _Slots, *, started: bool) -> None:
        try:
            if started:  # stored running, at its accept or by a claim from a shared queue
                began = record.started_at or self.clock()
                self.events.started(record.name, max(0.0, began - record.created_at))
            else:
                now = self.clock()
                if not await self.store.start(record.id, now):
                    return  # cancelled while it waited (counted by cancel())
                self.events.started(record.name, max(0.0, now - record.created_at))
                record = record.replace(
                    state=JobState.RUNNING, started_at=now, attempts=record.attempts + 1
                )
            await self._execute(record, slots)
        except asyncio.CancelledError:
            # Shutdown cut the run short: it runs again at the next start.
            with contextlib.suppress(StoreUnavailable):
                await self.store.requeue(record.id, error="interrupted by shutdown")
            raise
        except StoreUnavailable as ex:
            log.error("job %s: %s", record.id, ex.detail)
        finally:
            slots.release()

    async def _execute(self, record: JobRecord, slots: _Slots) -> None:
        try:
            spec = self.registry.get(record.name)
        except LookupError as ex:
            await self._finish(record, JobState.FAILED, error=str(ex))
            return
        if record.attempts > self.max_attempts:
            reason = f"gave up after {self.max_attempts} attempts"
            if record.error:
                reason += f" (last: {record.error})"
            await self._finish(record, JobState.FAILED, error=reason)
            return
        if record.items is not None:
            await self._execute_batch(spec, record, slots)
            return
        try:
            result = await self._on_pool(spec, record.args, slots)
        except (TaskTimeout, ProcessDied) as ex:
            await self._finish(record, JobState.FAILED, error=str(ex))
        except Exception as ex:
            await self._finish(record, JobState.FAILED, error=describe(ex))
        else:
            await self._finish(record, JobState.SUCCEEDED, result=result)

    async def _on_pool(self, spec: JobSpec, kwargs: dict[str, Any], slots: _Slots) -> Any:
        """Run ``spec.fn(**kwargs)`` on its pool within its timeout."""
        if spec.pool == "cpu":
            return await self.cpu.run(spec.fn, (), kwargs, spec.timeout_s)
        future = self.io.submit(spec.fn, **kwargs)
        slots.hand_over(future, 1)  # a thread cannot be stopped: its slot waits for it
        try:
            return await asyncio.wait_for(asyncio.shield(future), spec.timeout_s)
        except TimeoutError:
            raise TaskTimeout(f"timed out after {spec.timeout_s:g} s") from None

    async def call(self, name: str, kwargs: dict[str, Any]) -> Any:
        """Run a job at once without storing it, for answers computed within one request
        (search fan-out). Admitted like any job: a full pool raises Overloaded."""
        if self.draining:
            raise ShuttingDown("this worker is shutting down; retry on another")
        spec = self.registry.get(name)
        admission = self.admission[spec.pool]
        await admission.acquire(1)
        slots = _Slots(admission, 1)
        try:
            return await self._on_pool(spec, kwargs, slots)
        finally:
            slots.release()

    async def _execute_batch(self, spec: JobSpec, record: JobRecord, slots: _Slots) -> None:
        """Run a batch that waited its turn (this task only waits for the runner's end)."""
        ended: asyncio.Future[None] = asyncio.get_running_loop().create_future()

        def on_end(batch: Batch) -> None:
            self._batch_events(batch)
            if not ended.done():
                ended.set_result(None)

        batch = self.batches.start(spec, record, slots, on_end)
        try:
            await ended
        except asyncio.CancelledError:
            self.batches.abandon(batch)
            raise

    async def _finish(
        self,
        record: JobRecord,
        state: JobState,
        *,
        result: Any = None,
        error: str | None = None,
        progress: BatchProgress | None = None,
    ) -> None:
        now = self.clock()
        try:
            await self.store.finish(
                record, state, now, result=result, error=error, progress=progress
            )
        except StoreUnavailable:
            self.unwritten.add([JobEnd(record, state, result, error, progress)], now)
            raise
        ran_s = None if record.started_at is None else max(0.0, now - record.started_at)
        self.events.finished(record.name, state, ran_s)
        if state is JobState.FAILED:
            log.info("job %s (%s) failed: %s", record.id, record.name, error,
                     extra={"job_id": record.id})  # fmt: skip
        elif log.isEnabledFor(logging.DEBUG):
            log.debug("job %s (%s) %s", record.id, record.name, state.value,
                      extra={"job_id": record.id})  # fmt: skip
