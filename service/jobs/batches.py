"""Batch jobs on the io pool: items of many jobs run in shared chunks, jobs end in groups.

A batch job is one task per item: ``fn(item, **options)`` on an io thread, each item
succeeding or failing on its own. Handing work to a thread costs far more than a fast item
(tens of microseconds of futures, wake-ups and GIL hand-overs against a few for a parcel), so
the runner packs the items of the batches that start within one loop tick into chunks sized
from what an item of that job has cost so far: fast items go many to a chunk, across jobs, one
hand-off for the lot; slow items (waiting on storage, say) go one to a chunk, each on a thread
of its own, in parallel. A job whose item cost is not known yet is spread the same way.

The jobs whose last item ends within one tick end in one store write
(:meth:`Store.finish_many`), and a job's end is reported only once that write is done.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
from collections.abc import Callable
from typing import Any

from opentelemetry.trace import Span

from service import tracing
from service.errors import StoreUnavailable
from service.jobs.context import trace_of
from service.jobs.failures import describe
from service.jobs.hold import Hold
from service.jobs.io_pool import IoPool
from service.jobs.record import BatchProgress, ItemRef, JobEnd, JobRecord
from service.jobs.registry import JobSpec
from service.jobs.state import JobState
from service.jobs.store import Store
from service.jobs.unwritten import UnwrittenEnds

log = logging.getLogger(__name__)

#: A chunk is sized so that its items, at their average cost so far, take about this long.
CHUNK_BUDGET_S = 0.002
#: Items in one chunk at most, however fast they are.
CHUNK_MAX = 256
#: Weight of the newest chunk in the moving average of an item's cost.
COST_WEIGHT = 0.2

#: One part of a chunk: a batch, and the range of its items that the chunk runs.
Part = tuple["Batch", int, int]


#: The reason of an item not run because its batch was stopped (a client's cancel).
SKIPPED = "skipped: the batch was cancelled"


def run_chunk(
    fn: Callable[..., Any], parts: list[tuple[list[Any], int, int, dict[str, Any], Batch]]
) -> tuple[list[Any], dict[int, str], float]:
    """Run the items of one chunk on a thread, each on its own. Returns each item's value in
    order (None for one that failed), the reason of each failure by position (SKIPPED for an
    item of a batch stopped meanwhile), and the seconds the chunk took."""
    started = time.perf_counter()
    values: list[Any] = []
    failed: dict[int, str] = {}
    for items, start, stop, options, batch in parts:
        for index in range(start, stop):
            if batch.halted:  # set on the loop; read here between items
                failed[len(values)] = SKIPPED
                values.append(None)
                continue
            try:
                values.append(fn(items[index], **options))
            except Exception as ex:  # an item's failure is its own, never the chunk's
                failed[len(values)] = describe(ex)
                values.append(None)
    return values, failed, time.perf_counter() - started


def item_ref(index: int) -> ItemRef:
    """The (shared, immutable) ItemRef of item ``index``."""
    while len(_REFS) <= index:
        _REFS.extend(ItemRef(i) for i in range(len(_REFS), 2 * len(_REFS) + 16))
    return _REFS[index]


_REFS: list[ItemRef] = []


def chunk_size(cost_s: float | None) -> int:
    """Items per chunk for items that cost ``cost_s`` each (None: not known yet)."""
    if cost_s is None:
        return 1
    return max(1, min(CHUNK_MAX, int(CHUNK_BUDGET_S / max(cost_s, 1e-9))))


def pack(sizes: list[int], size: int) -> list[list[tuple[int, int, int]]]:
    """Cut batches of ``sizes`` items, in order, into chunks of at most ``size`` items.

    A chunk is a list of (batch number, start, stop); every item is in exactly one chunk.
    """
    chunks: list[list[tuple[int, int, int]]] = []
    current: list[tuple[int, int, int]] = []
    room = size
    for number, total in enumerate(sizes):
        start = 0
        while start < total:
            stop = min(total, start + room)
            current.append((number, start, stop))
            room -= stop - start
            start = stop
            if room == 0:
                chunks.append(current)
                current, room = [], size
    if current:
        chunks.append(current)
    return chunks


class Batch:
    """A batch job while it runs: its counts, and the item results not yet written."""

    __slots__ = (
        "closed",
        "done",
        "ended_at",
        "error",
        "failed",
        "failures",
        "halted",
        "hold",
        "keyed",
        "left",
        "on_end",
        "record",
        "skipped",
        "span",
        "spec",
        "state",
        "unconfirmed",
    )  # fmt: skip

    def __init__(
        self,
        spec: JobSpec,
        record: JobRecord,
        hold: Hold | None,
        on_end: Callable[[Batch], None],
    ) -> None:
        assert record.items is not None
        self.spec = spec
        self.record = record
        self.hold = hold
        self.on_end = on_end
        #: Its run's span while it runs, when its submit was traced (ended with the batch).
        self.span: Span | None = None
        self.left = len(record.items)
        self.done = 0
        self.failed = 0
        #: Items not run because a client stopped the batch (``halted``).
        self.skipped = 0
        self.halted = False
        self.failures: list[dict[str, Any]] = []
        #: (key, value) of items that succeeded since the last write.
        self.keyed: list[tuple[str, Any]] = []
        #: Item rows handed to progress writes not known to be committed yet. The end
        #: writes them again (an upsert: harmless twice), so a failed progress write never
        #: loses a row of a job that the end says succeeded.
        self.unconfirmed: list[list[tuple[str, Any]]] = []
        #: Set once its end is being written, or when shutdown gave up on it.
        self.closed = False
        #: Its final state, error and end time, once written (state None: it was not).
        self.state: JobState | None = None
        self.error: str | None = None
        self.ended_at = 0.0

    def count(
        self, start: int, stop: int, values: list[Any], failed: dict[int, str], at: int = 0
    ) -> None:
        """Count items ``start`` to ``stop`` as run: their ``values`` in order, the reasons
        of those that failed by position (from ``at``: a chunk runs several batches)."""
        items = self.record.items
        assert items is not None
        key_of = self.spec.item_key
        if not failed or not any(p in failed for p in range(at, at + stop - start)):
            self.done += stop - start
            if key_of is not None:  # a result that is its item is kept as a reference
                self.keyed += [
                    (key_of(item), item_ref(index) if value is item else value)
                    for index, item, value in zip(
                        range(start, stop), items[start:stop], values, strict=True
                    )
                ]
            return
        for index in range(start, stop):
            item, value = items[index], values[index - start]
            reason = failed.get(at + index - start)
            if reason is SKIPPED:
                self.skipped += 1
                continue
            key = key_of(item) if key_of is not None else None
            if reason is None:
                self.done += 1
                if key is not None:
                    self.keyed.append((key, item_ref(index) if value is item else value))
            else:
                self.failed += 1
                self.failures.append({"index": index, "key": key, "error": reason})

    def progress(self) -> BatchProgress:
        progress = BatchProgress(self.done, self.failed, self.keyed)
        self.unconfirmed.append(self.keyed)
        self.keyed = []
        return progress

    def confirmed(self, rows: list[tuple[str, Any]]) -> None:
        self.unconfirmed = [u for u in self.unconfirmed if u is not rows]

    def _final_progress(self) -> BatchProgress:
        keyed = [row for rows in self.unconfirmed for row in rows] + self.keyed
        self.unconfirmed, self.keyed = [], []
        return BatchProgress(self.done, self.failed, keyed)

    def end(self) -> JobEnd:
        if self.halted:
            result = outcome(self.done, self.failed, self.failures)[1]
            result["skipped"] = self.skipped
            return JobEnd(
                self.record, JobState.CANCELLED, result, None, self._final_progress(), "stopped"
            )
        state, result, error = outcome(self.done, self.failed, self.failures)
        return JobEnd(self.record, state, result, error, self._final_progress())


def outcome(
    done: int, failed: int, failures: list[dict[str, Any]]
) -> tuple[JobState, dict[str, Any], str | None]:
    """A batch's end from its counts: its state, its result, its error (the first failure)."""
    failures = sorted(failures, key=lambda f: int(f["index"]))
    result = {"total": done + failed, "done": done, "failed": failed, "failures": failures}
    if not failures:
        return JobState.SUCCEEDED, result, None
    return (
        JobState.FAILED,
        result,
        (f"{failed} of {done + failed} items failed; first: {failures[0]['error']}"),
    )


def run_inline(
    spec: JobSpec, items: list[Any], options: dict[str, Any]
) -> tuple[BatchProgress, list[dict[str, Any]]]:
    """Run a batch's items here and now (its job declares them cheap: ``inline_when``),
    each on its own as on a thread: their counts and keyed results, and their failures
    (for :func:`outcome`)."""
    fn, key_of = spec.fn, spec.item_key
    keyed: list[tuple[str, Any]] = []
    failures: list[dict[str, Any]] = []
    for index, item in enumerate(items):
        try:
            value = fn(item, **options)
        except Exception as ex:  # an item's failure is its own
            key = key_of(item) if key_of is not None else None
            failures.append({"index": index, "key": key, "error": describe(ex)})
            continue
        if key_of is not None:  # a result that is its item is kept as a reference
            keyed.append((key_of(item), item_ref(index) if value is item else value))
    return BatchProgress(len(items) - len(failures), len(failures), keyed), failures


class _Chunk:
    __slots__ = ("late", "parts", "spec", "timer")

    def __init__(self, spec: JobSpec, parts: list[Part]) -> None:
        self.spec = spec
        self.parts = parts
        self.late = False
        self.timer: asyncio.TimerHandle | None = None


class BatchRunner:
    """Runs batch jobs' items on the io pool in chunks and ends the jobs in groups."""

    def __init__(
        self,
        io: IoPool,
        store: Store,
        clock: Callable[[], float],
        *,
        on_chunk_done: Callable[[], None] = lambda: None,
        unwritten: UnwrittenEnds | None = None,
    ) -> None:
        self.io = io
        self.store = store
        self.clock = clock
        self.unwritten = UnwrittenEnds() if unwritten is None else unwritten
        self.on_chunk_done = on_chunk_done
        #: Chunks handed to the io pool whose thread has not reported back yet.
        self.chunks_in_flight = 0
        #: Running batches by job id, until their end is written.
        self.running: dict[str, Batch] = {}
        #: Moving average of one item's cost (seconds on its thread), per job name.
        self.cost: dict[str, float] = {}
        self._starting: list[Batch] = []
        self._dispatch_scheduled = False
        self._writes: set[asyncio.Task[None]] = set()
        self._idle: asyncio.Future[None] | None = None

    def start(
        self, spec: JobSpec, record: JobRecord, hold: Hold, on_end: Callable[[Batch], None]
    ) -> Batch:
        """Run the items of ``record`` (stored as running); ``on_end(batch)`` once its end
        is written (or could not be: it is then still running in the store, to be re-run)."""
        batch = Batch(spec, record, hold, on_end)
        batch.span = tracing.start_run(trace_of(record))
        self.running[record.id] = batch
        self._starting.append(batch)
        if not self._dispatch_scheduled:
            self._dispatch_scheduled = True
            asyncio.get_running_loop().call_soon(self._dispatch)
        return batch

    def _dispatch(self) -> None:
        self._dispatch_scheduled = False
        starting, self._starting = self._starting, []
        by_job: dict[str, list[Batch]] = {}
        for batch in starting:
            if not batch.closed:
                by_job.setdefault(batch.spec.name, []).append(batch)
        loop = asyncio.get_running_loop()
        for name, batches in by_job.items():
            spec = batches[0].spec
            sizes = [batch.left for batch in batches]
            for numbered in pack(sizes, chunk_size(self.cost.get(name))):
                parts: list[Part] = [(batches[n], start, stop) for n, start, stop in numbered]
                chunk = _Chunk(spec, parts)
                payload = []
                for batch, start, stop in parts:
                    # The chunk's places go back when its thread is done (see _done).
                    assert batch.hold is not None
                    batch.hold.take(stop - start)
                    payload.append((batch.record.items, start, stop, batch.record.args, batch))
                count = sum(stop - start for _, start, stop in parts)
                chunk.timer = loop.call_later(spec.timeout_s * count, self._chunk_late, chunk)
                self.chunks_in_flight += 1
                self.io.post(run_chunk, spec.fn, payload, done=functools.partial(self._done, chunk))

    def _done(self, chunk: _Chunk, outcome: Any) -> None:
        """A chunk's thread is done (on the loop): count its items, end the jobs it finished."""
        if chunk.timer is not None:
            chunk.timer.cancel()
        self.chunks_in_flight -= 1
        for batch, start, stop in chunk.parts:
            assert batch.hold is not None
            batch.hold.give_back(stop - start)
        if isinstance(outcome, BaseException):  # run_chunk itself failed: say so per item
            count = sum(stop - start for _, start, stop in chunk.parts)
            values: list[Any] = [None] * count
            failed = dict.fromkeys(range(count), describe(outcome))
        else:
            values, failed, seconds = outcome
            name = chunk.spec.name
            cost = seconds / max(1, len(values))
            known = self.cost.get(name)
            self.cost[name] = cost if known is None else known + COST_WEIGHT * (cost - known)
        self.on_chunk_done()
        if chunk.late:
            return  # its items were already failed as timed out
        ended: list[Batch] = []
        position = 0
        for batch, start, stop in chunk.parts:
            n = stop - start
            at, position = position, position + n
            if batch.closed:
                continue
            batch.count(start, stop, values[at:position], failed, at)
            self._counted(batch, n, ended)
        self._end(ended)

    def _chunk_late(self, chunk: _Chunk) -> None:
        """A chunk ran past its items' timeouts: they fail; its thread cannot be stopped."""
        chunk.late = True
        error = f"timed out after {chunk.spec.timeout_s:g} s"
        ended: list[Batch] = []
        for batch, start, stop in chunk.parts:
            if batch.closed:
                continue
            items = batch.record.items
            assert items is not None
            key_of = batch.spec.item_key
            for index in range(start, stop):
                key = key_of(items[index]) if key_of is not None else None
                batch.failures.append({"index": index, "key": key, "error": error})
            batch.failed += stop - start
            self._counted(batch, stop - start, ended)
        self._end(ended)

    def _counted(self, batch: Batch, n: int, ended: list[Batch]) -> None:
        batch.left -= n
        if batch.left == 0:
            batch.closed = True
            ended.append(batch)
        elif batch.keyed:
            # More chunks to come: what is done so far is readable now.
            self._background(self._write_progress(batch, batch.progress()))

    async def _write_progress(self, batch: Batch, progress: BatchProgress) -> None:
        try:
            await self.store.progress(batch.record, progress)
        except StoreUnavailable as ex:
            log.error("job %s: %s", batch.record.id, ex.detail)  # its end writes them
        else:
            batch.confirmed(progress.keyed)

    def _end(self, batches: list[Batch]) -> None:
        if batches:
            self._background(self._write_ends(batches))

    async def _write_ends(self, batches: list[Batch]) -> None:
        ends, now = [batch.end() for batch in batches], self.clock()
        try:
            await self.store.finish_many(ends, now)
        except StoreUnavailable as ex:
            # Still running in the store: the janitor writes their ends again.
            log.error("%d jobs could not be ended: %s", len(batches), ex.detail)
            self.unwritten.add(ends, now)
        else:
            for batch, end in zip(batches, ends, strict=True):
                batch.state, batch.error, batch.ended_at = end.state, end.error, now
        for batch in batches:
            self._forget(batch)
            batch.on_end(batch)

    def _background(self, coro: Any) -> None:
        task: asyncio.Task[None] = asyncio.get_running_loop().create_task(coro)
        self._writes.add(task)
        task.add_done_callback(self._writes.discard)

    def _forget(self, batch: Batch) -> None:
        self.running.pop(batch.record.id, None)
        if batch.span is not None:
            batch.span.end()
            batch.span = None
        if not self.running and self._idle is not None and not self._idle.done():
            self._idle.set_result(None)

    def stop(self, job_id: str) -> bool:
        """Stop a running batch (a client's cancel): items not yet run are skipped, and it
        ends cancelled; False if no such batch runs here."""
        batch = self.running.get(job_id)
        if batch is None:
            return False
        batch.halted = True
        return True

    def abandon(self, batch: Batch) -> None:
        """Stop tracking ``batch`` (its run was cut off): later results of it are dropped."""
        batch.closed = True
        self._forget(batch)

    async def drain(self, timeout_s: float) -> list[Batch]:
        """Wait up to ``timeout_s`` for the running batches to end; abandon and return the
        ones still running then."""
        if self.running:
            self._idle = asyncio.get_running_loop().create_future()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(self._idle), timeout_s)
        late = [b for b in self.running.values() if not b.closed]
        for batch in list(self.running.values()):
            self.abandon(batch)
        if self._writes:
            await asyncio.wait(list(self._writes), timeout=timeout_s)
        return late
