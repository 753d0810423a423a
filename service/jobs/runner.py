"""Running a job: its start written, its function on its pool within its timeout, its end
written. The runner owns what can go wrong while a job runs: a timeout, the death of the cpu
process that ran it, a shutdown that cuts it short, a store that refuses its end.

A job function runs where its declaration says: a plain function of the io pool on a thread,
a coroutine function of the io pool on the event loop (it waits on sockets, never on the
CPU, and can be cancelled for real), a function of the cpu pool in a cpu process.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from typing import Any

from service.errors import StoreUnavailable
from service.jobs import events as ev
from service.jobs.batches import Batch, BatchRunner
from service.jobs.cpu_pool import CpuPool
from service.jobs.failures import ProcessDied, TaskTimeout, describe
from service.jobs.hold import Hold
from service.jobs.io_pool import IoPool
from service.jobs.record import BatchProgress, JobEnd, JobRecord
from service.jobs.registry import JobSpec, Registry
from service.jobs.state import JobState, after_interruption
from service.jobs.store import Store
from service.jobs.unwritten import UnwrittenEnds

log = logging.getLogger(__name__)

#: Why a run was cut short by a shutdown (it runs again at the next start).
SHUTDOWN = "interrupted by shutdown"


class Runner:
    """Runs jobs that have their place; each run is a task until its end is written."""

    def __init__(
        self,
        *,
        registry: Registry,
        store: Store,
        io: IoPool,
        batches: BatchRunner,
        events: ev.JobEvents,
        clock: Callable[[], float],
        unwritten: UnwrittenEnds,
        max_attempts: int,
    ) -> None:
        self.registry = registry
        self.store = store
        self.io = io
        self.batches = batches
        self.events = events
        self.clock = clock
        self.unwritten = unwritten
        self.max_attempts = max_attempts
        self.cpu: CpuPool | None = None
        #: Runs in flight, by job id.
        self.tasks: dict[str, asyncio.Task[None]] = {}

    def spawn(
        self, record: JobRecord, hold: Hold, *, started: bool, on_end: Callable[[], None]
    ) -> None:
        """Run ``record`` in a task of its own; ``on_end()`` once it is over, however."""
        task = asyncio.create_task(self._run(record, hold, started=started))
        self.tasks[record.id] = task

        def ended(_task: asyncio.Task[None]) -> None:
            self.tasks.pop(record.id, None)
            hold.release()
            on_end()

        task.add_done_callback(ended)

    async def _run(self, record: JobRecord, hold: Hold, *, started: bool) -> None:
        try:
            if started:  # stored running, at its accept or by a claim from a shared queue
                began = record.started_at or self.clock()
                self.events.started(record.name, max(0.0, began - record.created_at))
            else:
                now = self.clock()
                if not await self.store.start(record.id, now):
                    return  # cancelled while it waited (counted by the cancel)
                self.events.started(record.name, max(0.0, now - record.created_at))
                record = record.replace(
                    state=JobState.RUNNING, started_at=now, attempts=record.attempts + 1
                )
            await self._execute(record, hold)
        except asyncio.CancelledError:
            # Shutdown cut the run short: it runs again at the next start.
            with contextlib.suppress(StoreUnavailable):
                await self.store.requeue(record.id, error=SHUTDOWN)
            raise
        except StoreUnavailable as ex:
            log.error("job %s: %s", record.id, ex.detail)

    async def _execute(self, record: JobRecord, hold: Hold) -> None:
        try:
            spec = self.registry.get(record.name)
        except LookupError as ex:
            await self.finish(record, JobState.FAILED, error=str(ex))
            return
        # This start is run number `attempts`: each earlier one was cut off.
        if after_interruption(record.attempts - 1, self.max_attempts) is JobState.FAILED:
            reason = f"gave up after {self.max_attempts} attempts"
            if record.error:
                reason += f" (last: {record.error})"
            await self.finish(record, JobState.FAILED, error=reason)
            return
        if record.items is not None:
            await self._execute_batch(spec, record, hold)
            return
        try:
            result = await self.call(spec, record.args, hold)
        except (TaskTimeout, ProcessDied) as ex:
            await self.finish(record, JobState.FAILED, error=str(ex))
        except Exception as ex:
            await self.finish(record, JobState.FAILED, error=describe(ex))
        else:
            await self.finish(record, JobState.SUCCEEDED, result=result)

    async def call(self, spec: JobSpec, kwargs: dict[str, Any], hold: Hold) -> Any:
        """``spec.fn(**kwargs)`` where its declaration says, within its timeout."""
        if spec.pool == "cpu":
            if self.cpu is None:
                raise RuntimeError("the job layer has not started")
            return await self.cpu.run(spec.fn, (), kwargs, spec.timeout_s)
        if spec.is_async:
            try:
                return await asyncio.wait_for(spec.fn(**kwargs), spec.timeout_s)
            except TimeoutError:
                raise TaskTimeout(f"timed out after {spec.timeout_s:g} s") from None
        future = self.io.submit(spec.fn, **kwargs)
        hold.hand_over(future)  # a thread cannot be stopped: its place waits for it
        try:
            return await asyncio.wait_for(asyncio.shield(future), spec.timeout_s)
        except TimeoutError:
            raise TaskTimeout(f"timed out after {spec.timeout_s:g} s") from None

    async def _execute_batch(self, spec: JobSpec, record: JobRecord, hold: Hold) -> None:
        """Run a batch that waited its turn (this task only waits for the batch's end)."""
        ended: asyncio.Future[None] = asyncio.get_running_loop().create_future()

        def on_end(batch: Batch) -> None:
            self.batch_ended(batch)
            if not ended.done():
                ended.set_result(None)

        batch = self.batches.start(spec, record, hold, on_end)
        try:
            await ended
        except asyncio.CancelledError:
            self.batches.abandon(batch)
            raise

    def batch_ended(self, batch: Batch) -> None:
        """Report a batch whose end was written (or could not be: it then runs again)."""
        record = batch.record
        if batch.state is None:
            return  # its end could not be written: it runs again
        ran_s = None if record.started_at is None else max(0.0, batch.ended_at - record.started_at)
        self.events.finished(record.name, batch.state, ran_s)
        if batch.state is JobState.FAILED:
            log.info("job %s (%s) failed: %s", record.id, record.name, batch.error,
                     extra={"job_id": record.id})  # fmt: skip

    async def finish(
        self,
        record: JobRecord,
        state: JobState,
        *,
        result: Any = None,
        error: str | None = None,
        progress: BatchProgress | None = None,
    ) -> None:
        """Write the end of ``record``; an end the store refuses is kept to write again."""
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

    async def drain(self, timeout_s: float) -> set[asyncio.Task[None]]:
        """Wait up to ``timeout_s`` for the runs in flight; return those still running."""
        tasks = list(self.tasks.values())
        if not tasks:
            return set()
        _, late = await asyncio.wait(tasks, timeout=timeout_s)
        return late
