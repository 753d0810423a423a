"""The job layer: submit jobs by name, read them, wait for them, cancel them. It knows
nothing of HTTP.

One ``JobLayer`` per gunicorn worker, a thin facade over its rooms:

- :mod:`~service.jobs.hold`: admission and the client's count, taken as one hold per job;
- :mod:`~service.jobs.lanes`: where this worker's jobs wait for a place, and the quarantine
  of jobs a crash cut off;
- :mod:`~service.jobs.queues`: where a stored job waits when it cannot start at once — in
  this worker's lane (SQLite), or in a queue the fleet shares (Redis) — chosen once;
- :mod:`~service.jobs.runner` and :mod:`~service.jobs.batches`: running jobs and batches;
- :mod:`~service.jobs.janitor`: what a worker does now and then;
- :mod:`~service.jobs.deliveries`: the completion callbacks of the store's outbox;
- :mod:`~service.jobs.fanout`: calls answered within one request, stored nowhere (search);
- the store (:mod:`~service.jobs.store`) and the pools.

A job is stored before it is acknowledged. When a place is free at that moment it is stored
already running (one write, not two); otherwise it is stored queued and waits its turn. A
batch whose items are cheap (its declaration's ``inline_when``) runs on the loop as it is
accepted and is stored already ended; one that may start only later is stored scheduled.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
from collections.abc import Callable, Sequence
from typing import Any

from service import tracing
from service.background import cancel_and_wait
from service.errors import (
    Conflict,
    Invalid,
    KeyReused,
    Overloaded,
    ShuttingDown,
    StoreUnavailable,
    TooManyJobs,
    TooManyTasks,
)
from service.ids import new_id
from service.jobs import events as ev
from service.jobs.batches import Batch, BatchRunner, outcome, run_inline
from service.jobs.cpu_pool import CpuPool
from service.jobs.deliveries import CallbackPolicy, Deliveries
from service.jobs.fanout import Outcome, fan_out
from service.jobs.hold import Admissions, Quota
from service.jobs.io_pool import IoPool
from service.jobs.janitor import janitor
from service.jobs.lanes import Lane, Lanes, Waiting
from service.jobs.queues import LocalQueue, Queue, SharedQueue
from service.jobs.record import IdempotencyKey, JobQuery, JobRecord
from service.jobs.registry import JobSpec, Pool, Registry
from service.jobs.runner import SHUTDOWN, Runner
from service.jobs.state import JobState, is_final
from service.jobs.store import KeyTaken, Store
from service.jobs.unwritten import UnwrittenEnds

log = logging.getLogger(__name__)

#: Seconds runs cut short at shutdown get to write that they go back to the queue.
SHUTDOWN_REQUEUE_S = 5.0
#: How often a wait on a job that runs elsewhere reads it again (seconds).
WAIT_POLL_S = 0.1
#: How often a worker running jobs looks for requests to stop them (seconds).
STOP_POLL_S = 0.25


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
        stop_grace_s: float = 10.0,
        clock: Callable[[], float] = time.time,
        id_factory: Callable[[], str] = new_id,
        quota: Quota | None = None,
        events: ev.JobEvents | None = None,
        slot_claimed: Callable[[int], None] = lambda slot: None,
        callbacks: CallbackPolicy | None = None,
    ) -> None:
        self.registry = registry
        self._slot_claimed = slot_claimed
        self.store = store
        self.io = io_pool
        self.clock = clock
        self.new_id = id_factory
        self.events = events or ev.JobEvents()
        self.janitor_interval_s = janitor_interval_s
        self._cpu_pool_factory = cpu_pool_factory
        self._cpu: CpuPool | None = None
        self.admissions = Admissions(
            io_queue_max=io_queue_max,
            cpu_queue_max=cpu_queue_max,
            wait_s=admission_wait_s,
            quota=quota,
            events=self.events,
        )
        #: Job ends the store refused, written again by the janitor.
        self.unwritten = UnwrittenEnds()
        self.batches = BatchRunner(
            io_pool, store, clock, on_chunk_done=self._chunk_done, unwritten=self.unwritten
        )
        self.runner = Runner(
            registry=registry,
            store=store,
            io=io_pool,
            batches=self.batches,
            events=self.events,
            clock=clock,
            unwritten=self.unwritten,
            max_attempts=max_attempts,
            stop_grace_s=stop_grace_s,
        )
        self.lanes = Lanes(
            {
                "io": Lane(
                    io_pool.threads,
                    shared=lambda: self.batches.chunks_in_flight,
                    active=lambda: bool(self.batches.running),
                ),
                "cpu": Lane(1),  # sized once the cpu pool exists (start)
            },
            self._start,
        )
        self.queue: Queue = (
            SharedQueue(
                store=store,
                lanes=self.lanes,
                admissions=self.admissions,
                pool_of=self._pool_of,
                clock=clock,
            )
            if store.shares_queue
            else LocalQueue(store=store, lanes=self.lanes, admissions=self.admissions, clock=clock)
        )
        self.runner.retried = self._retried
        #: Sends the completion callbacks of the store's outbox (None: none can be asked for).
        self.deliveries = (
            None if callbacks is None else Deliveries(store, io_pool, callbacks, clock=clock)
        )
        self._waiters: dict[str, list[asyncio.Future[None]]] = {}
        self._janitor: asyncio.Task[None] | None = None
        self._stops: asyncio.Task[None] | None = None
        self.draining = False

    # -- life cycle -------------------------------------------------------------------

    async def start(self) -> None:
        """Open the store and run what earlier processes accepted and did not finish."""
        await self.store.open()
        # The worker's slot on the host is known once the store is claimed; the cpu budget
        # of the host is shared out by slot.
        self._slot_claimed(self.store.slot)
        self._cpu = self.runner.cpu = self._cpu_pool_factory(self.store.slot)
        self.lanes.lanes["cpu"] = Lane(self._cpu.processes)
        self._resume(await self.store.unfinished())
        self._janitor = asyncio.create_task(
            janitor(
                self.store,
                self.unwritten,
                interval_s=self.janitor_interval_s,
                clock=self.clock,
                adopt=self._resume,
            ),
            name="jobpool-janitor",
        )
        self._stops = asyncio.create_task(self._stop_loop(), name="jobpool-stops")
        await self.queue.start()
        if self.deliveries is not None:
            await self.deliveries.start()

    async def close(self, *, drain_s: float) -> None:
        """Stop taking jobs; let running ones finish within ``drain_s``; requeue the rest.

        Jobs still waiting in a lane are already queued in the store: the next start (of
        this worker's slot, or a janitor adopting it) runs them.
        """
        self.draining = True
        self.lanes.stopped = True
        for helper in (self._janitor, self._stops):
            await cancel_and_wait(helper)
        await self.queue.stop()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + drain_s
        late = await self.runner.drain(drain_s)
        # Batches that started at once run without a task of their own (see batches.py).
        cut = [
            batch
            for batch in await self.batches.drain(max(0.0, deadline - loop.time()))
            if batch.record.id not in self.runner.tasks
        ]
        for task in late:
            task.cancel()
        for batch in cut:
            with contextlib.suppress(StoreUnavailable):
                await self.store.requeue(batch.record.id, error=SHUTDOWN)
            if batch.hold is not None:
                batch.hold.release()
        if late or cut:
            log.warning("%d jobs still running at shutdown: requeued", len(late) + len(cut))
        if late:
            await asyncio.wait(late, timeout=SHUTDOWN_REQUEUE_S)
        for job in self.lanes.take_all():
            if job.started:  # claimed from a shared queue, never run: back for another worker
                with contextlib.suppress(StoreUnavailable):
                    await self.store.requeue(job.record.id, error=SHUTDOWN)
            job.hold.release()
        await self.unwritten.write(self.store)
        if self.deliveries is not None:  # after the drain: the ends it wrote are sent too
            await self.deliveries.stop()
        if self.unwritten:
            log.warning("%d job ends could not be written: those jobs run again at the "
                        "next start", len(self.unwritten))  # fmt: skip
        self.io.close(wait=False)
        if self._cpu is not None:
            self._cpu.close(wait=False)
        await self.store.close()

    def _resume(self, records: list[JobRecord]) -> None:
        """Jobs accepted earlier (by this slot before a restart, or adopted) wait here."""
        for record in records:
            pool = self._pool_of(record)
            if record.state is JobState.SCHEDULED:
                self.queue.schedule(pool, record)
                continue
            places = len(record.items) if record.items is not None else 1
            self.lanes.add(
                pool, Waiting(record, self.admissions.readmit(pool, record.owner, places))
            )
        self.lanes.pump()
        if records:
            cut = sum(r.interrupted for r in records)
            log.warning("resuming %d unfinished jobs (%d cut off by a crash, run one at a time)",
                        len(records), cut)  # fmt: skip

    # -- submitting -------------------------------------------------------------------

    async def submit(
        self,
        name: str,
        args: dict[str, Any],
        *,
        owner: str,
        not_before: float | None = None,
        key: IdempotencyKey | None = None,
        callback: str | None = None,
    ) -> JobRecord:
        """Store the job ``name`` with keyword ``args`` and start it (or, with
        ``not_before`` in the future, schedule it); raises Overloaded. With ``key``, a
        submit of the same key and request gets the job an earlier one made (``replayed``).
        With ``callback``, the job's document is POSTed there once it ends."""
        spec = self.registry.get(name)
        return await self._keyed(spec, args, None, owner, not_before, key, callback)

    async def submit_batch(
        self,
        name: str,
        items: list[Any],
        *,
        owner: str,
        options: dict[str, Any] | None = None,
        not_before: float | None = None,
        key: IdempotencyKey | None = None,
        callback: str | None = None,
    ) -> JobRecord:
        """One job of ``len(items)`` tasks: ``fn(item, **options)`` for each item."""
        spec = self.registry.get(name)
        if spec.pool != "io" or spec.is_async:
            raise ValueError(f"job {name!r}: batches run on io threads, not {spec.pool!r}")
        return await self._keyed(spec, options or {}, items, owner, not_before, key, callback)

    async def _keyed(
        self,
        spec: JobSpec,
        args: dict[str, Any],
        items: list[Any] | None,
        owner: str,
        not_before: float | None,
        key: IdempotencyKey | None,
        callback: str | None = None,
    ) -> JobRecord:
        """A submit; with an idempotency key, once per key (and request) however often."""
        if callback is not None:
            if self.deliveries is None:
                raise Invalid("this service sends no callbacks")
            self.deliveries.check(owner)
        if key is None:
            return await self._accept(spec, args, items, owner, not_before, None, callback)
        async with self.store.hold_key(key):
            found = await self.store.find_key(key, self.clock())
            if found is not None:
                return await self._replay(key, *found)
            try:
                return await self._accept(spec, args, items, owner, not_before, key, callback)
            except KeyTaken as ex:  # a shared store: another host stored it first
                return await self._replay(key, ex.job_id, ex.fingerprint)

    async def _replay(self, key: IdempotencyKey, job_id: str, fingerprint: bytes) -> JobRecord:
        """The job an earlier submit of ``key`` made, for a submit of the same request."""
        if fingerprint != key.fingerprint:
            raise KeyReused(
                "this Idempotency-Key was used with another request; use a new key for a "
                "new request"
            )
        record = await self.store.get(job_id)
        if record is None:  # its job outlived by its key: purged, as its results expired
            raise KeyReused("the job of this Idempotency-Key has expired; use a new key")
        return record.replace(replayed=True)

    async def _accept(
        self,
        spec: JobSpec,
        args: dict[str, Any],
        items: list[Any] | None,
        owner: str,
        not_before: float | None,
        key: IdempotencyKey | None,
        callback: str | None = None,
    ) -> JobRecord:
        if self.draining:
            self.events.rejected(spec.name, ev.SHUTTING_DOWN)
            raise ShuttingDown("this worker is shutting down; retry on another")
        if not_before is not None and not_before > self.clock():
            return await self._accept_later(spec, args, items, owner, not_before, key, callback)
        if items is not None and spec.inline_when is not None and spec.inline_when(args):
            return await self._accept_done(spec, args, items, owner, key, callback)
        pool = spec.pool
        hold = await self.admissions.admit(
            spec.name, pool, owner, 1 if items is None else len(items)
        )
        lane = self.lanes[pool]
        starts_now = self.lanes.can_start_now(pool)
        if starts_now:
            lane.running += 1  # held while the row is written, so no one else takes it
        now = self.clock()
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
            callback=callback,
            traceparent=tracing.current_traceparent(),
        )
        try:
            stored = await self.store.add(record, key=key)
        except BaseException as ex:
            self._refused(spec.name, ex)
            hold.release()
            if starts_now:
                lane.running -= 1
                self.lanes.pump(pool)
            raise
        self.events.accepted(spec.name, pool)
        if stored is JobState.RUNNING and items is not None:
            lane.running -= 1  # from here its chunks take the places (see Lane.shared)
            self.events.started(spec.name, 0.0)
            self.batches.start(spec, record, hold, self._batch_ended)
        elif stored is JobState.RUNNING:
            on_end = functools.partial(self._ended, pool, record.id, False)
            self.runner.spawn(record, hold, started=True, on_end=on_end)
        else:
            if starts_now:  # older jobs wait in the shared queue: this one goes behind them
                lane.running -= 1
                record = record.replace(state=JobState.QUEUED, started_at=None, attempts=0)
            self.queue.enqueue(pool, record, hold)
        return record

    async def _accept_done(
        self,
        spec: JobSpec,
        args: dict[str, Any],
        items: list[Any],
        owner: str,
        key: IdempotencyKey | None,
        callback: str | None = None,
    ) -> JobRecord:
        """A batch whose items are cheap: they run now, on the loop, and the job is stored
        already ended, with its item results, in one write. It never waits for a place nor
        counts in flight (it is never in flight), and costs no thread hand-off. Its batch
        is held to the pool's bound all the same (it is one shape of request, whether its
        items run inline or, with other options, on the pool)."""
        try:
            self.admissions.pools[spec.pool].check_fits(len(items))
        except TooManyTasks:
            self.events.rejected(spec.name, ev.TOO_LARGE)
            raise
        with tracing.run_here(spec.name):  # it runs within its request
            progress, failures = run_inline(spec, items, args)
        state, result, error = outcome(progress.done, progress.failed, failures)
        now = self.clock()
        record = JobRecord(
            id=self.new_id(),
            name=spec.name,
            owner=owner,
            state=state,
            created_at=now,
            started_at=now,
            finished_at=now,
            attempts=1,
            args=args,
            items=items,
            error=error,
            result=result,
            done=progress.done,
            failed=progress.failed,
            callback=callback,
            traceparent=tracing.current_traceparent(),
        )
        try:
            await self.store.add(record, key=key, items=progress)
        except BaseException as ex:
            self._refused(spec.name, ex)
            raise
        self.events.accepted(spec.name, spec.pool)
        self.events.started(spec.name, 0.0)
        self.events.finished(spec.name, record.state, 0.0)
        return record

    async def _accept_later(
        self,
        spec: JobSpec,
        args: dict[str, Any],
        items: list[Any] | None,
        owner: str,
        not_before: float,
        key: IdempotencyKey | None,
        callback: str | None = None,
    ) -> JobRecord:
        """A job that may start only at ``not_before``: stored scheduled. It takes no place
        in a pool and does not count in flight until then (it is admitted, past the
        bounds, when its time comes, as a job resumed after a restart is)."""
        record = JobRecord(
            id=self.new_id(),
            name=spec.name,
            owner=owner,
            state=JobState.SCHEDULED,
            created_at=self.clock(),
            args=args,
            items=items,
            not_before=not_before,
            callback=callback,
            traceparent=tracing.current_traceparent(),
        )
        try:
            await self.store.add(record, key=key)
        except BaseException as ex:
            self._refused(spec.name, ex)
            raise
        self.events.accepted(spec.name, spec.pool)
        self.events.scheduled(spec.name)
        self.queue.schedule(spec.pool, record)
        return record

    async def rerun(self, job_id: str) -> JobRecord | None:
        """A new job with the name, arguments (and a batch's items) of the finished job
        ``job_id``, for the same owner (None: no such job). Raises :class:`Conflict` when it
        has not finished, or its arguments are no longer kept."""
        before = await self.store.get(job_id)
        if before is None:
            return None
        if not is_final(before.state):
            raise Conflict(f"job {job_id} is {before.state.value}; only a finished job runs again")
        args = await self.store.arguments(job_id)
        if args is None or before.name not in self.registry:
            raise Conflict(f"job {job_id}: its arguments are no longer kept; submit it again")
        if before.items is not None:
            return await self.submit_batch(before.name, before.items, owner=before.owner,
                                           options=args)  # fmt: skip
        return await self.submit(before.name, args, owner=before.owner)

    def _retried(self, record: JobRecord) -> None:
        """A failed attempt will run again: the job waits for its time."""
        self.queue.schedule(self._pool_of(record), record)

    def _refused(self, name: str, ex: BaseException) -> None:
        """Count a submit the store refused, by why."""
        if isinstance(ex, ShuttingDown):
            self.events.rejected(name, ev.SHUTTING_DOWN)
        elif isinstance(ex, StoreUnavailable):
            self.events.rejected(name, ev.STORE_UNAVAILABLE)
        elif isinstance(ex, TooManyJobs):  # a shared store counts the client's jobs
            self.events.rejected(name, ev.CLIENT_LIMIT)
        elif isinstance(ex, Overloaded):  # a shared store's queue is full
            self.events.rejected(name, ev.OVERLOADED)

    # -- running ----------------------------------------------------------------------

    def _start(self, pool: Pool, job: Waiting, suspect: bool) -> None:
        """The lanes gave ``job`` its place: run it."""
        on_end = functools.partial(self._ended, pool, job.record.id, suspect)
        self.runner.spawn(job.record, job.hold, started=job.started, on_end=on_end)

    def _ended(self, pool: Pool, job_id: str, suspect: bool) -> None:
        self._wake(job_id)
        self.lanes.ended(pool, suspect)
        self.queue.freed(pool, suspect)

    def _batch_ended(self, batch: Batch) -> None:
        """A batch that started at once (no task of its own) has ended and is written."""
        self.runner.batch_ended(batch)
        if batch.hold is not None:
            batch.hold.release()
        self._wake(batch.record.id)
        self.lanes.freed(batch.spec.pool)
        self.queue.freed(batch.spec.pool)

    def _chunk_done(self) -> None:
        """A chunk's thread is free again: start what waits for one."""
        if self.lanes["io"].waiting or self.lanes.quarantined:
            self.lanes.freed("io")
            self.queue.freed("io")

    def _pool_of(self, record: JobRecord) -> Pool:
        return self.registry.get(record.name).pool if record.name in self.registry else "io"

    # -- reading, waiting, cancelling -------------------------------------------------

    async def get(self, job_id: str) -> JobRecord | None:
        return await self.store.get(job_id)

    async def list_jobs(self, query: JobQuery) -> list[JobRecord]:
        """The jobs ``query`` asks for, newest first (their arguments and results left out)."""
        return await self.store.list_jobs(query)

    async def item(self, name: str, owner: str, key: str) -> Any | None:
        """The newest result of an item with ``key`` of ``owner``'s batches of ``name``."""
        return await self.store.get_item(name, owner, key)

    async def wait(self, job_id: str, timeout_s: float) -> JobRecord | None:
        """The job once final, or as it is after ``timeout_s``.

        A job of this worker wakes its waiters when it ends; one that runs elsewhere (another
        worker, another host) is read again every ``WAIT_POLL_S``.
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        while True:
            if self._holds(job_id):
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

    def _holds(self, job_id: str) -> bool:
        """Whether this worker runs ``job_id`` or has it waiting."""
        return (
            job_id in self.runner.tasks
            or job_id in self.batches.running
            or self.lanes.holds(job_id)
        )  # a scheduled job is polled: its wait may outlast its timer here

    def _wake(self, job_id: str) -> None:
        for future in self._waiters.pop(job_id, ()):
            if not future.done():
                future.set_result(None)

    async def cancel(self, job_id: str, stop_wait_s: float = 0.0) -> JobRecord | None:
        """Cancel a job: one that has not started ends at once; a running one is asked to
        stop (see the runner), and this waits up to ``stop_wait_s`` for it to end. Returns
        the job after (None: no such job)."""
        before = await self.store.get(job_id)
        state = await self.store.cancel(job_id, self.clock())
        if state is None or before is None:
            return None
        if before.state in (JobState.SCHEDULED, JobState.QUEUED) and state is JobState.CANCELLED:
            self.events.finished(before.name, JobState.CANCELLED, None)
            self.events.cancelled(before.name, "dequeued")
            self.queue.unschedule(job_id)
            # Waiting here, it gives back its places and its client's count now, not when
            # its turn would have come (one waiting in another worker is skipped there).
            job = self.lanes.drop(job_id)
            if job is not None:
                job.hold.release()
            self._wake(job_id)
        elif state is JobState.RUNNING:
            self.runner.stop(job_id)  # here at once; elsewhere its worker's poll finds it
            if stop_wait_s > 0:
                return await self.wait(job_id, stop_wait_s)
        return await self.store.get(job_id)

    async def resend_callback(self, job_id: str) -> bool:
        """Send an ended job's callback again (its horizon starts over); False when it has
        no delivery to send (no callback, or the job has not ended)."""
        return await self.store.resend_delivery(job_id, self.clock())

    async def _stop_loop(self) -> None:
        """Stop the running jobs clients cancelled through other workers (or hosts)."""
        while True:
            await asyncio.sleep(STOP_POLL_S)
            if not (self.runner.tasks or self.batches.running):
                continue
            try:
                for job_id in await self.store.stop_requests():
                    self.runner.stop(job_id)
            except StoreUnavailable as ex:
                log.error("stop requests: %s", ex.detail)
            except Exception:
                log.exception("stop requests failed")

    # -- answers within one request ---------------------------------------------------

    async def fan_out(
        self, name: str, calls: Sequence[dict[str, Any]], deadline_s: float
    ) -> list[Outcome]:
        """Run the job ``name`` once per ``calls`` at once, stored nowhere; each outcome
        within ``deadline_s`` (see :mod:`service.jobs.fanout`)."""
        if self.draining:
            raise ShuttingDown("this worker is shutting down; retry on another")
        return await fan_out(
            self.runner, self.admissions, self.registry.get(name), calls, deadline_s
        )

    # -- health -----------------------------------------------------------------------

    async def ping(self) -> None:
        """Raise if the store cannot be used (readiness)."""
        await self.store.ping()

    def pool_stats(self) -> list[ev.PoolStats]:
        """How full each pool of this worker is (the cpu pool once the layer started)."""
        stats = []
        for pool, lane in self.lanes.lanes.items():
            admission = self.admissions.pools[pool]
            if pool == "io":
                busy, slots = min(self.io.busy, self.io.threads), self.io.threads
            elif self._cpu is not None:
                busy, slots = self._cpu.busy, self._cpu.processes
            else:
                continue
            stats.append(
                ev.PoolStats(
                    pool=pool,
                    queued_jobs=self.lanes.queued(pool),
                    running_jobs=lane.running + (len(self.batches.running) if pool == "io" else 0),
                    busy_slots=busy,
                    slots=slots,
                    admitted_tasks=admission.in_use,
                    admission_limit=admission.capacity,
                    scheduled_jobs=self.queue.scheduled(pool),
                )
            )
        return stats
