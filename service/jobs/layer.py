"""The job layer: admit, store, run and recover jobs. It knows nothing of HTTP.

One ``JobLayer`` per gunicorn worker. Endpoints call :meth:`JobLayer.submit` (or
:meth:`JobLayer.submit_batch`) with a job's name; the layer picks the pool the job was
declared with. A job is stored before it is acknowledged, marked running only when a thread
or process is free for it, and its outcome is stored when it ends.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from typing import Any

from service.errors import ShuttingDown, StoreUnavailable
from service.ids import new_id
from service.jobs.admission import Admission
from service.jobs.cpu_pool import CpuPool, ProcessDied, TaskTimeout
from service.jobs.io_pool import IoPool
from service.jobs.record import ItemOutcome, JobRecord
from service.jobs.registry import JobSpec, Pool, Registry
from service.jobs.state import JobState
from service.jobs.store import Store

log = logging.getLogger(__name__)


def run_items(
    fn: Callable[..., Any], chunk: list[tuple[int, Any]], options: dict[str, Any]
) -> list[tuple[int, bool, Any]]:
    """Run one chunk of a batch on a thread; each item succeeds or fails on its own."""
    out: list[tuple[int, bool, Any]] = []
    for index, item in chunk:
        try:
            out.append((index, True, fn(item, **options)))
        except Exception as ex:  # an item's failure is its own, never the chunk's
            out.append((index, False, describe(ex)))
    return out


def describe(ex: BaseException) -> str:
    """The reason stored with a failed job or item."""
    text = str(ex)
    return f"{type(ex).__name__}: {text}" if text else type(ex).__name__


def split(items: list[Any], parts: int) -> list[list[tuple[int, Any]]]:
    """Cut ``items`` into ``parts`` contiguous chunks of (index, item), sizes within one."""
    size, extra = divmod(len(items), parts)
    chunks, start = [], 0
    for p in range(parts):
        end = start + size + (1 if p < extra else 0)
        chunks.append(list(enumerate(items[start:end], start)))
        start = end
    return [c for c in chunks if c]


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
    ) -> None:
        self.registry = registry
        self.store = store
        self.io = io_pool
        self._cpu_pool_factory = cpu_pool_factory
        self._cpu: CpuPool | None = None
        self.max_attempts = max_attempts
        self.janitor_interval_s = janitor_interval_s
        self.clock = clock
        self.new_id = id_factory
        self.admission: dict[Pool, Admission] = {
            "io": Admission("io", io_queue_max, wait_s=admission_wait_s),
            "cpu": Admission("cpu", cpu_queue_max, wait_s=admission_wait_s),
        }
        # Jobs running at once: a job is "running" only once a thread or process is its.
        self._running_limit: dict[Pool, asyncio.Semaphore] = {
            "io": asyncio.Semaphore(io_pool.threads),
        }
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._finished: dict[str, asyncio.Event] = {}
        self._janitor: asyncio.Task[None] | None = None
        self.draining = False

    # -- life cycle -------------------------------------------------------------------

    async def start(self) -> None:
        """Open the store and run what earlier processes accepted and did not finish."""
        await self.store.open()
        # The worker's slot on the host is known once the store is claimed; the cpu budget
        # of the host is shared out by slot.
        self._cpu = self._cpu_pool_factory(self.store.slot)
        self._running_limit["cpu"] = asyncio.Semaphore(self._cpu.processes)
        self._resume(await self.store.unfinished())
        self._janitor = asyncio.create_task(self._janitor_loop(), name="jobpool-janitor")

    async def close(self, *, drain_s: float) -> None:
        """Stop taking jobs; let running ones finish within ``drain_s``; requeue the rest."""
        self.draining = True
        if self._janitor is not None:
            self._janitor.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._janitor
        tasks = list(self._tasks.values())
        if tasks:
            _, late = await asyncio.wait(tasks, timeout=drain_s)
            for task in late:
                task.cancel()
            if late:
                log.warning("%d jobs still running at shutdown: requeued", len(late))
                await asyncio.wait(late, timeout=5)
        self.io.close(wait=False)
        if self._cpu is not None:
            self._cpu.close(wait=False)
        await self.store.close()

    def _resume(self, records: list[JobRecord]) -> None:
        for record in records:
            slots = len(record.items) if record.items is not None else 1
            pool = self._spec_pool(record.name)
            self.admission[pool].force(slots)  # already accepted: never refused now
            self._launch(record, _Slots(self.admission[pool], slots))
        if records:
            log.warning("resuming %d unfinished jobs", len(records))

    def _spec_pool(self, name: str) -> Pool:
        return self.registry.get(name).pool if name in self.registry else "io"

    async def _janitor_loop(self) -> None:
        while True:
            await asyncio.sleep(self.janitor_interval_s)
            try:
                await self.store.purge(self.clock())
                self._resume(await self.store.adopt_orphans())
            except StoreUnavailable as ex:
                log.error("janitor: %s", ex.detail)
            except Exception:
                log.exception("janitor failed")

    @property
    def cpu(self) -> CpuPool:
        if self._cpu is None:
            raise RuntimeError("the job layer has not started")
        return self._cpu

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
            raise ShuttingDown("this worker is shutting down; retry on another")
        slots = 1 if items is None else len(items)
        admission = self.admission[spec.pool]
        await admission.acquire(slots)
        record = JobRecord(
            id=self.new_id(),
            name=spec.name,
            owner=owner,
            state=JobState.QUEUED,
            created_at=self.clock(),
            args=args,
            items=items,
        )
        try:
            await self.store.add(record)
        except BaseException:
            admission.release(slots)
            raise
        self._launch(record, _Slots(admission, slots))
        return record

    # -- reading ----------------------------------------------------------------------

    async def get(self, job_id: str) -> JobRecord | None:
        return await self.store.get(job_id)

    async def wait(self, job_id: str, timeout_s: float) -> JobRecord | None:
        """The job once final, or as it is after ``timeout_s``."""
        event = self._finished.get(job_id)
        if event is not None and timeout_s > 0:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(event.wait(), timeout_s)
        return await self.store.get(job_id)

    async def cancel(self, job_id: str) -> JobState | None:
        return await self.store.cancel(job_id, self.clock())

    # -- running ----------------------------------------------------------------------

    def _launch(self, record: JobRecord, slots: _Slots) -> None:
        self._finished[record.id] = asyncio.Event()
        task = asyncio.create_task(self._run(record, slots))
        self._tasks[record.id] = task
        task.add_done_callback(lambda _t: self._ended(record.id))

    def _ended(self, job_id: str) -> None:
        self._tasks.pop(job_id, None)
        event = self._finished.pop(job_id, None)
        if event is not None:
            event.set()

    async def _run(self, record: JobRecord, slots: _Slots) -> None:
        try:
            spec = self.registry.get(record.name)
        except LookupError as ex:
            slots.release()
            await self._finish(record.id, JobState.FAILED, error=str(ex))
            return
        try:
            async with self._running_limit[spec.pool]:
                if self.draining:
                    return  # stays queued in the store for the next start
                started = await self.store.start(record.id, self.clock())
                if started is None:
                    return  # cancelled while it waited
                await self._execute(spec, started, slots)
        except asyncio.CancelledError:
            # Shutdown cut the run short: it runs again at the next start.
            with contextlib.suppress(StoreUnavailable):
                await self.store.requeue(record.id, error="interrupted by shutdown")
            raise
        except StoreUnavailable as ex:
            log.error("job %s: %s", record.id, ex.detail)
        finally:
            slots.release()

    async def _execute(self, spec: JobSpec, record: JobRecord, slots: _Slots) -> None:
        if record.attempts > self.max_attempts:
            reason = f"gave up after {self.max_attempts} attempts"
            if record.error:
                reason += f" (last: {record.error})"
            await self._finish(record.id, JobState.FAILED, error=reason)
            return
        if record.items is not None:
            await self._execute_batch(spec, record, slots)
            return
        try:
            if spec.pool == "cpu":
                result = await self.cpu.run(spec.fn, (), record.args, spec.timeout_s)
            else:
                future = self.io.submit(spec.fn, **record.args)
                slots.hand_over(future, 1)
                try:
                    result = await asyncio.wait_for(asyncio.shield(future), spec.timeout_s)
                except TimeoutError:
                    raise TaskTimeout(f"timed out after {spec.timeout_s:g} s") from None
        except (TaskTimeout, ProcessDied) as ex:
            await self._finish(record.id, JobState.FAILED, error=str(ex))
        except Exception as ex:
            await self._finish(record.id, JobState.FAILED, error=describe(ex))
        else:
            await self._finish(record.id, JobState.SUCCEEDED, result=result)

    async def _execute_batch(self, spec: JobSpec, record: JobRecord, slots: _Slots) -> None:
        assert record.items is not None
        items = record.items
        # Spread over idle threads when there are any; under load run together, which
        # costs one hand-off per batch instead of one per item.
        parts = max(1, min(len(items), self.io.idle))
        chunks = split(items, parts)
        futures: dict[asyncio.Future[Any], list[tuple[int, Any]]] = {}
        for chunk in chunks:
            future = self.io.submit(run_items, spec.fn, chunk, record.args)
            slots.hand_over(future, len(chunk))
            futures[future] = chunk
        outcomes: list[ItemOutcome] = []
        deadline = asyncio.get_running_loop().time() + spec.timeout_s * max(map(len, chunks))
        pending = set(futures)
        while pending:
            timeout = deadline - asyncio.get_running_loop().time()
            done, pending = await asyncio.wait(
                pending, timeout=max(0.0, timeout), return_when=asyncio.FIRST_COMPLETED
            )
            if not done:
                break
            for future in done:
                for index, ok, value in future.result():
                    key = spec.item_key(items[index]) if spec.item_key else None
                    outcomes.append(ItemOutcome(index, key, ok, value))
        for future in pending:
            for index, _item in futures[future]:
                error = f"timed out after {spec.timeout_s:g} s"
                outcomes.append(ItemOutcome(index, None, False, error))
        outcomes.sort(key=lambda o: o.index)
        await self.store.progress(record.id, outcomes)
        failed = [o for o in outcomes if not o.ok]
        summary = [{"key": o.key, "ok": o.ok, "error": None if o.ok else o.value} for o in outcomes]
        if failed:
            error = f"{len(failed)} of {len(items)} items failed; first: {failed[0].value}"
            await self._finish(record.id, JobState.FAILED, result={"items": summary}, error=error)
        else:
            await self._finish(record.id, JobState.SUCCEEDED, result={"items": summary})

    async def _finish(
        self, job_id: str, state: JobState, *, result: Any = None, error: str | None = None
    ) -> None:
        await self.store.finish(job_id, state, self.clock(), result=result, error=error)
