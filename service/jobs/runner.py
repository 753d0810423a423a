"""Running a job: its start written, its function on its pool within its timeout, its end
written. The runner owns what can go wrong while a job runs: a timeout, the death of the cpu
process that ran it, a failure to retry, a client's request to stop it, a shutdown that cuts
it short, a store that refuses its end.

A job function runs where its declaration says: a plain function of the io pool on a thread,
a coroutine function of the io pool on the event loop (it waits on sockets, never on the
CPU, and can be cancelled for real), a function of the cpu pool in a cpu process. Each run
has a :class:`~service.jobs.context.RunContext`: the task's way to see a stop request and to
report progress.

Stopping a running job (a client's cancel): a cpu job's process is terminated (and replaced
at the next run); a coroutine job is cancelled; a thread's job is asked through its context
and, if it has not stopped within ``stop_grace_s``, is given up: the job ends cancelled, its
result is thrown away, and its thread keeps its pool place until it returns.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from typing import Any

from service import tracing
from service.errors import StoreUnavailable
from service.jobs import events as ev
from service.jobs.batches import Batch, BatchRunner
from service.jobs.context import RunContext, enter, run_in, trace_of
from service.jobs.cpu_pool import CpuPool
from service.jobs.document import CancelHow
from service.jobs.failures import ProcessDied, TaskTimeout, describe
from service.jobs.hold import Hold
from service.jobs.io_pool import IoPool
from service.jobs.record import BatchProgress, FailedAttempt, JobEnd, JobRecord, Progress
from service.jobs.registry import JobSpec, Registry
from service.jobs.retry import DoNotRetry, RetryAfter
from service.jobs.state import JobState, after_interruption
from service.jobs.store import Store
from service.jobs.unwritten import UnwrittenEnds

log = logging.getLogger(__name__)

#: Why a run was cut short by a shutdown (it runs again at the next start).
SHUTDOWN = "interrupted by shutdown"
#: Least seconds between two progress writes of one job (its last one goes with its end).
PROGRESS_WRITE_S = 0.5
#: Longest an upstream's Retry-After may put off a retry.
RETRY_AFTER_MAX_S = 3600.0


class Run:
    """A single job running here."""

    __slots__ = ("call", "context", "how", "progress", "record", "spec", "writing", "written")

    def __init__(self, record: JobRecord, spec: JobSpec, context: RunContext) -> None:
        self.record = record
        self.spec = spec
        self.context = context
        self.call: asyncio.Future[Any] | None = None
        #: Set once a client asked it to stop: how it is being stopped.
        self.how: CancelHow | None = None
        #: The task's latest progress, and the latest written.
        self.progress: Progress | None = None
        self.written: Progress | None = None
        self.writing = False

    def unwritten(self) -> Progress | None:
        """The latest progress if the store does not have it yet (it goes with the end)."""
        return self.progress if self.progress is not self.written else None


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
        stop_grace_s: float = 10.0,
        retried: Callable[[JobRecord], None] = lambda record: None,
    ) -> None:
        self.registry = registry
        self.store = store
        self.io = io
        self.batches = batches
        self.events = events
        self.clock = clock
        self.unwritten = unwritten
        self.max_attempts = max_attempts
        self.stop_grace_s = stop_grace_s
        #: Called with a job scheduled for its next attempt (it waits for its time).
        self.retried = retried
        self.cpu: CpuPool | None = None
        #: Runs in flight, by job id (batches included, until their end is written).
        self.tasks: dict[str, asyncio.Task[None]] = {}
        #: Single jobs running here, by job id.
        self.runs: dict[str, Run] = {}

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
        if after_interruption(record.interruptions, self.max_attempts) is JobState.FAILED:
            reason = f"gave up after {self.max_attempts} attempts"
            if record.error:
                reason += f" (last: {record.error})"
            await self.finish(record, JobState.FAILED, error=reason)
            return
        if record.cancel_requested_at is not None:  # asked to stop before this run
            await self.finish(record, JobState.CANCELLED, how="stopped")
            self.events.cancelled(record.name, "stopped")
            return
        if record.items is not None:
            await self._execute_batch(spec, record, hold)
            return
        loop = asyncio.get_running_loop()

        def report(done: int, total: int | None, message: str | None) -> None:
            # From the task's thread, or the loop: the store is written from the loop.
            loop.call_soon_threadsafe(self._reported, record.id, done, total, message)

        final = len(record.failed_attempts) >= spec.retries
        context = RunContext(
            record.id, record.attempts, final=final, report=report, trace=trace_of(record)
        )
        run = Run(record, spec, context)
        self.runs[record.id] = run
        try:
            run.call = asyncio.ensure_future(self.call(spec, record.args, hold, run.context))
            result = await run.call
        except asyncio.CancelledError:
            if run.how is None:
                raise  # a shutdown, not a stop
            await self._stopped(run)
        except Exception as ex:
            if run.how is not None:  # stopped: whatever it raised on the way out
                await self._stopped(run)
            else:
                await self._failed(run, ex)
        else:
            await self.finish(record, JobState.SUCCEEDED, result=result, reported=run.unwritten())
        finally:
            self.runs.pop(record.id, None)

    async def call(
        self, spec: JobSpec, kwargs: dict[str, Any], hold: Hold, context: RunContext | None = None
    ) -> Any:
        """``spec.fn(**kwargs)`` where its declaration says, within its timeout."""
        context = context or RunContext()
        if spec.pool == "cpu":
            if self.cpu is None:
                raise RuntimeError("the job layer has not started")
            return await self.cpu.run(spec.fn, (), kwargs, spec.timeout_s, context)
        if spec.is_async:
            enter(context)  # this call is a task of its own: the context is its alone
            try:
                with tracing.run_span(context.trace):
                    return await asyncio.wait_for(spec.fn(**kwargs), spec.timeout_s)
            except TimeoutError:
                raise TaskTimeout(f"timed out after {spec.timeout_s:g} s") from None
        future = self.io.submit(run_in, context, spec.fn, **kwargs)
        hold.hand_over(future)  # a thread cannot be stopped: its place waits for it
        try:
            return await asyncio.wait_for(asyncio.shield(future), spec.timeout_s)
        except TimeoutError:
            raise TaskTimeout(f"timed out after {spec.timeout_s:g} s") from None

    # -- failures and retries ---------------------------------------------------------

    async def _failed(self, run: Run, ex: Exception) -> None:
        """A failed attempt: scheduled again if its policy allows, else the job fails."""
        record, spec = run.record, run.spec
        reason = str(ex) if isinstance(ex, TaskTimeout | ProcessDied) else describe(ex)
        delay = self._retry_delay(spec, record, ex)
        if delay is None:
            await self.finish(record, JobState.FAILED, error=reason, reported=run.unwritten())
            return
        now = self.clock()
        attempt = FailedAttempt(record.attempts, record.started_at or now, now, reason)
        if await self.store.retry(record, not_before=now + delay, error=reason, attempt=attempt):
            self.events.retried(record.name)
            log.info("job %s (%s) failed attempt %d, retried in %.1f s: %s", record.id,
                     record.name, record.attempts, delay, reason,
                     extra={"job_id": record.id})  # fmt: skip
            self.retried(
                record.replace(
                    state=JobState.SCHEDULED,
                    not_before=now + delay,
                    error=reason,
                    failed_attempts=(*record.failed_attempts, attempt),
                )
            )

    @staticmethod
    def _retry_delay(spec: JobSpec, record: JobRecord, ex: Exception) -> float | None:
        """Seconds before the next attempt, or None: no retry (its kind, or none left)."""
        if isinstance(ex, DoNotRetry) or getattr(ex, "retryable", True) is False:
            return None
        if len(record.failed_attempts) >= spec.retries:
            return None
        delay = spec.backoff.delay(len(record.failed_attempts) + 1)
        if isinstance(ex, RetryAfter):
            delay = max(delay, min(ex.seconds, RETRY_AFTER_MAX_S))
        return delay

    # -- stopping ---------------------------------------------------------------------

    def stop(self, job_id: str) -> bool:
        """Stop a job that runs here (a client cancelled it); False if it does not (yet)
        run here: it runs elsewhere, or is still being started."""
        if self.batches.stop(job_id):
            return True
        run = self.runs.get(job_id)
        if run is None or run.call is None:
            return False
        if run.how is not None:
            return True  # being stopped already
        spec = run.spec
        if spec.pool == "cpu":
            run.how = "terminated"  # cancelling the call stops its process
            run.call.cancel()
        elif spec.is_async:
            run.how = "stopped"
            run.call.cancel()
        else:
            run.how = "stopped"  # the task sees it at its next check and raises Cancelled
            run.context.cancel()
            asyncio.get_running_loop().call_later(self.stop_grace_s, self._give_up, run)
        return True

    def _give_up(self, run: Run) -> None:
        """A thread's job did not stop within the grace period: it ends cancelled now."""
        if run.call is not None and not run.call.done():
            run.how = "abandoned"
            run.call.cancel()  # the thread runs on; its result is thrown away

    async def _stopped(self, run: Run) -> None:
        record = run.record
        await self.finish(record, JobState.CANCELLED, how=run.how, reported=run.unwritten())
        self.events.cancelled(record.name, run.how or "stopped")
        log.info("job %s (%s) cancelled while it ran: %s", record.id, record.name, run.how,
                 extra={"job_id": record.id})  # fmt: skip

    # -- progress ---------------------------------------------------------------------

    def _reported(self, job_id: str, done: int, total: int | None, message: str | None) -> None:
        """A task's progress (on the loop): kept, and written at most every so often."""
        run = self.runs.get(job_id)
        if run is None:
            return
        run.progress = Progress(done, total, message)
        if not run.writing:
            run.writing = True
            asyncio.get_running_loop().call_later(PROGRESS_WRITE_S, self._write_progress, run)

    def _write_progress(self, run: Run) -> None:
        if run.record.id not in self.runs or run.progress is None:
            run.writing = False
            return
        progress = run.progress

        async def write() -> None:
            try:
                await self.store.report(run.record.id, progress)
                run.written = progress
            except StoreUnavailable:
                pass  # the end writes the latest
            finally:
                run.writing = False

        asyncio.get_running_loop().create_task(write())

    # -- batches ----------------------------------------------------------------------

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
        if batch.state is JobState.CANCELLED:
            self.events.cancelled(record.name, "stopped")
        elif batch.state is JobState.FAILED:
            log.info("job %s (%s) failed: %s", record.id, record.name, batch.error,
                     extra={"job_id": record.id})  # fmt: skip

    # -- ends -------------------------------------------------------------------------

    async def finish(
        self,
        record: JobRecord,
        state: JobState,
        *,
        result: Any = None,
        error: str | None = None,
        progress: BatchProgress | None = None,
        how: CancelHow | None = None,
        reported: Progress | None = None,
    ) -> None:
        """Write the end of ``record``; an end the store refuses is kept to write again."""
        now = self.clock()
        try:
            await self.store.finish(
                record, state, now, result=result, error=error, progress=progress, how=how,
                reported=reported,
            )  # fmt: skip
        except StoreUnavailable:
            self.unwritten.add([JobEnd(record, state, result, error, progress, how, reported)], now)
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
