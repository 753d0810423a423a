"""The :class:`~service.jobs.store.Store` on SQLite shards: one file per worker (``shards``),
written a tick at a time (``group_commit``), large payloads in files (``rows``, ``payloads``).
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import itertools
import logging
import os
import pickle
import sqlite3
import time
from collections.abc import Mapping, Sequence
from contextlib import AbstractAsyncContextManager
from pathlib import Path
from typing import Any

from service.errors import StoreUnavailable
from service.ids import id_floor
from service.jobs.document import CancelHow
from service.jobs.record import (
    BatchProgress,
    CallbackStatus,
    Delivery,
    DeliveryState,
    FailedAttempt,
    IdempotencyKey,
    JobEnd,
    JobQuery,
    JobRecord,
    Progress,
    encode_attempts,
    encode_progress,
)
from service.jobs.registry import Pool
from service.jobs.sqlite.checkpoints import Checkpointer
from service.jobs.sqlite.group_commit import GroupCommit
from service.jobs.sqlite.keys import KeyLocks
from service.jobs.sqlite.payloads import PayloadFiles, PayloadMissing
from service.jobs.sqlite.rows import APART, INLINE_MAX, dumps, item_rows, record_of, runnable
from service.jobs.sqlite.schema import (
    COUNT_ITEMS,
    DELETE_EXPIRED_DELIVERIES,
    DELETE_EXPIRED_ITEMS,
    DELETE_EXPIRED_KEYS,
    DELETE_JOB,
    DELETE_STOP_REQUEST,
    DELIVERY_DUE,
    DELIVERY_OF,
    DUE_JOB,
    EXPIRED_JOBS,
    FIND_KEY,
    ITEM_RESULT,
    JOB_ITEMS,
    KEYED_RESULT,
    PROGRESS_JOB,
    PUT_KEY,
    REQUEUE_JOB,
    RESEND_DELIVERY,
    RETRY_JOB,
    SELECT_JOB,
    SELECT_UNFINISHED,
    SETTLE_DELIVERY,
    START_JOB,
    STOP_REQUESTS,
    TAKE_DELIVERIES,
    JobRow,
    cancel,
    interrupt,
    item_key,
    list_jobs_sql,
)
from service.jobs.sqlite.shards import (
    Shards,
    adopt,
    adopt_deliveries,
    cancel_in,
    claim,
    open_own,
    resend_in,
    shard_path,
    shard_paths,
    sweep,
)
from service.jobs.state import JobState, is_final
from service.jobs.store import capped_result

log = logging.getLogger(__name__)

PURGE_BATCH = 2000
KEYED_PURGE_EVERY = 12  # janitor rounds between sweeps of the item results (a full scan)


class SqliteStore:
    """The :class:`~service.jobs.store.Store` on SQLite shards under ``directory``."""

    #: Each worker runs what it accepted (and what it adopts): nothing to claim.
    shares_queue = False

    def __init__(
        self,
        directory: Path,
        *,
        result_ttl_s: float,
        result_max: int,
        max_bytes: int = 0,
        payload_max_bytes: int = 0,
    ) -> None:
        self.directory = directory
        self.max_bytes = max_bytes
        self.result_ttl_s = result_ttl_s
        self.result_max = result_max
        self.files = PayloadFiles(directory / "payloads", max_bytes=payload_max_bytes)
        self._keys = KeyLocks(directory / "keys")
        #: Jobs of this worker with their arguments in a file, to drop when they end.
        self._args_apart: set[str] = set()
        self.slot = -1
        self._lock_fd: int | None = None
        #: This worker's shard: written through ``_commits``, read first by ``_shards``.
        self._conn: sqlite3.Connection | None = None
        self._commits: GroupCommit | None = None
        self._shards: Shards | None = None
        self._checkpointer: Checkpointer | None = None
        self._purges = 0

    # -- life cycle -------------------------------------------------------------------

    async def open(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
            self.files.open()
            self._keys.open()
            shard, fd = claim(self.directory)
            path = shard_path(self.directory, shard)
            conn = open_own(path, max_bytes=self.max_bytes)
        except (OSError, sqlite3.Error) as ex:
            raise StoreUnavailable(f"cannot open the job store in {self.directory}: {ex}") from ex
        self.slot, self._lock_fd, self._conn = shard, fd, conn
        self._commits = GroupCommit(conn, loop)
        self._shards = Shards(self.directory, path, conn)
        self._checkpointer = Checkpointer(path, self.files)
        self._checkpointer.start()
        log.info("job store shard %s claimed in %s", shard, self.directory)

    async def close(self) -> None:
        if self._commits is not None:
            self._commits.flush()
        if self._checkpointer is not None:
            await self._checkpointer.stop()
        if self._shards is not None:
            self._shards.close()
            self._shards = None
        if self._conn is not None:
            if self._commits is not None:
                self._commits.close()
            with contextlib.suppress(sqlite3.Error, OSError):
                self.files.sync()
                self._conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            self._conn.close()
            self._conn = None
        self._keys.close()
        if self._lock_fd is not None:
            os.close(self._lock_fd)  # releases the shard for the next worker
            self._lock_fd = None

    def _writes(self) -> GroupCommit:
        if self._commits is None:
            raise StoreUnavailable("the job store is closed")
        return self._commits

    def _reads(self) -> Shards:
        if self._shards is None:
            raise StoreUnavailable("the job store is closed")
        return self._shards

    # -- the Store interface ----------------------------------------------------------

    def hold_key(self, key: IdempotencyKey) -> AbstractAsyncContextManager[None]:
        return self._keys.hold(key)

    async def find_key(self, key: IdempotencyKey, now: float) -> tuple[str, bytes] | None:
        for _, conn in self._reads().search_order():
            found = conn.execute(FIND_KEY, (key.name, now)).fetchone()
            if found is not None:
                return str(found[0]), bytes(found[1])
        return None

    async def add(
        self,
        record: JobRecord,
        *,
        key: IdempotencyKey | None = None,
        items: BatchProgress | None = None,
    ) -> JobState:
        result = None
        if is_final(record.state):  # an inline batch, stored ended: its result with it
            end = JobEnd(record, record.state, record.result, record.error)
            _, _, _, result, *_ = await self._end_row(end, record.finished_at or 0.0)
        blob = None if record.items is None else dumps(record.items)
        args = dumps(record.args)
        if len(args) > INLINE_MAX:
            await self._put_file(record.id, "args", args)
            args = APART
            self._args_apart.add(record.id)
        writes = self._writes()
        committed = writes.insert_job((
            record.id, record.name, record.owner, record.state.value, record.created_at,
            record.started_at, record.attempts, args, blob, record.not_before,
            record.finished_at, record.error, result, record.done, record.failed,
            record.callback, record.traceparent,
        ))  # fmt: skip
        if items is not None and items.keyed:
            writes.upsert_items(item_rows(record, items))
        if key is not None:  # in the job's own transaction
            row = (key.name, record.id, key.fingerprint, key.expires_at)
            await writes.run(lambda conn: conn.execute(PUT_KEY, row))
        await committed
        return record.state

    async def claim(self, room: Mapping[Pool, int], now: float) -> list[JobRecord]:
        return []

    async def start(self, job_id: str, now: float) -> bool:
        def op(conn: sqlite3.Connection) -> bool:
            return conn.execute(START_JOB, (now, job_id)).rowcount == 1

        started: bool = await self._writes().run(op)
        return started

    async def progress(self, record: JobRecord, progress: BatchProgress) -> None:
        def op(conn: sqlite3.Connection) -> None:
            conn.execute(COUNT_ITEMS, (progress.done, progress.failed, record.id))

        writes = self._writes()
        done = writes.run(op)
        writes.upsert_items(item_rows(record, progress))
        await done

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
        await self.finish_many([JobEnd(record, state, result, error, progress, how, reported)], now)

    async def finish_many(self, ends: Sequence[JobEnd], now: float) -> None:
        rows = [await self._end_row(end, now) for end in ends]  # result files first
        items: list[Any] = []
        for end in ends:
            if end.progress is not None and end.progress.keyed:
                items += item_rows(end.record, end.progress)
        writes = self._writes()
        committed = writes.end_jobs(rows)
        if items:
            writes.upsert_items(items)
        await committed
        # A final job never runs again: its large arguments are dead weight.
        dead = [end.record.id for end in ends if end.record.id in self._args_apart]
        if dead:
            self._args_apart.difference_update(dead)
            await asyncio.to_thread(self.files.drop, dead, ["args"])

    async def _end_row(self, end: JobEnd, now: float) -> tuple[Any, ...]:
        """The END_JOB parameters of ``end``, its result written to a file if large."""
        blob, state, error = capped_result(end.result, end.state, end.error, limit=self.result_max)
        if blob is not None and len(blob) > INLINE_MAX:
            await self._put_file(end.record.id, "result", blob)
            blob = APART
        progress = end.progress
        done, failed = (None, None) if progress is None else (progress.done, progress.failed)
        how = end.how if state is JobState.CANCELLED else None
        reported = encode_progress(end.reported)
        return (state.value, now, error, blob, done, failed, how, reported, end.record.id)

    async def _put_file(self, job_id: str, kind: str, blob: bytes) -> None:
        try:
            await asyncio.to_thread(self.files.put, job_id, kind, blob)
        except OSError as ex:
            raise StoreUnavailable(f"the job store cannot write: {ex}") from ex

    async def due(self, job_id: str) -> bool:
        def op(conn: sqlite3.Connection) -> bool:
            return conn.execute(DUE_JOB, (job_id,)).rowcount == 1

        queued: bool = await self._writes().run(op)
        return queued

    async def retry(
        self, record: JobRecord, *, not_before: float, error: str, attempt: FailedAttempt
    ) -> bool:
        attempts = encode_attempts((*record.failed_attempts, attempt))

        def op(conn: sqlite3.Connection) -> bool:
            return conn.execute(RETRY_JOB, (not_before, error, attempts, record.id)).rowcount == 1

        scheduled: bool = await self._writes().run(op)
        return scheduled

    async def report(self, job_id: str, progress: Progress) -> None:
        blob = encode_progress(progress)
        await self._writes().run(lambda conn: conn.execute(PROGRESS_JOB, (blob, job_id)))

    async def stop_requests(self) -> list[str]:
        conn = self._conn
        if conn is None:
            raise StoreUnavailable("the job store is closed")
        found = conn.execute(STOP_REQUESTS).fetchall()  # nearly always none
        if not found:
            return []
        running = [job_id for job_id, state in found if state == JobState.RUNNING.value]
        ended = [(job_id,) for job_id, state in found if state != JobState.RUNNING.value]
        if ended:  # its job has ended (stopped, or done before it saw the request)
            await self._writes().run(lambda c: c.executemany(DELETE_STOP_REQUEST, ended))
        return running

    async def requeue(self, job_id: str, *, error: str | None) -> None:
        def op(conn: sqlite3.Connection) -> None:
            conn.execute(REQUEUE_JOB, (error, job_id))

        await self._writes().run(op)

    async def cancel(self, job_id: str, now: float) -> JobState | None:
        shards = self._reads()
        path = shards.locate(job_id)
        if path is None:
            return None
        if path == shards.own:

            def op(conn: sqlite3.Connection) -> JobState | None:
                return cancel(conn, job_id, now)

            state: JobState | None = await self._writes().run(op)
            return state
        # Another worker's shard: a short write under its lock, off the loop.
        return await asyncio.to_thread(cancel_in, path, job_id, now)

    async def get(self, job_id: str) -> JobRecord | None:
        for _, conn in self._reads().search_order():
            found = conn.execute(SELECT_JOB, (job_id,)).fetchone()
            if found is None:
                continue
            row = JobRow._make(found)
            try:
                result = None
                if row.result == APART:
                    result = await asyncio.to_thread(self.files.get, job_id, "result")
                return self._delivered(record_of(row, self.files, args=False, result=result))
            except PayloadMissing as ex:
                # Lost for good (a power cut before the checkpoint): say so, as a failure; a
                # 503 would ask the client to retry in vain.
                lost = record_of(row._replace(result=None), self.files, args=False)
                return lost.replace(state=JobState.FAILED, error=str(ex))
        return None

    async def arguments(self, job_id: str) -> dict[str, Any] | None:
        for _, conn in self._reads().search_order():
            found = conn.execute("SELECT args FROM jobs WHERE id = ?", (job_id,)).fetchone()
            if found is None:
                continue
            blob = found[0]
            if blob == APART:
                try:
                    blob = await asyncio.to_thread(self.files.get, job_id, "args")
                except PayloadMissing:
                    return None  # dropped when the job ended
            args: dict[str, Any] = pickle.loads(blob)
            return args
        return None

    async def list_jobs(self, query: JobQuery) -> list[JobRecord]:
        states = sorted(s.value for s in query.states)
        if len(states) > 1 and JobState.SUCCEEDED.value not in states:
            # One walk of the state index each: SQLite would rather walk every job of the
            # owner than merge several ranges of it.
            groups = [[state] for state in states]
        else:
            groups = [states]
        pages = [self._list_shards(query, group) for group in groups]
        rows = heapq.merge(*itertools.chain(*pages), key=lambda row: row.id, reverse=True)
        return [
            self._delivered(record_of(row, self.files, args=False))
            for row in itertools.islice(rows, query.limit)
        ]

    def _delivered(self, record: JobRecord) -> JobRecord:
        """``record`` with how its callback's delivery goes (it has none before its end)."""
        if record.callback is None:
            return record
        for _, conn in self._reads().search_order():  # its shard's, or an adopter's
            found = conn.execute(DELIVERY_OF, (record.id,)).fetchone()
            if found is not None:
                state, attempts, status, error, delivered_at = found
                return record.replace(
                    delivery=CallbackStatus(state, attempts, status, error, delivered_at)
                )
        return record

    def _list_shards(self, query: JobQuery, states: list[str]) -> list[list[JobRow]]:
        """Each shard's page for ``query`` in ``states`` (any: none), newest first."""
        sql = list_jobs_sql(
            owner=query.owner is not None,
            states=len(states),
            succeeded=JobState.SUCCEEDED.value in states,
            name=query.name is not None,
            id_from=query.id_from is not None,
            id_below=query.id_below is not None,
        )
        params: list[Any] = [
            p for p in (query.owner, *states, query.name, query.id_from, query.id_below)
            if p is not None
        ]  # fmt: skip
        params.append(query.limit)
        return [
            [JobRow._make(row) for row in conn.execute(sql, params)]
            for _, conn in self._reads().search_order()
        ]

    async def get_item(self, name: str, owner: str, key: str) -> Any | None:
        k = item_key(name, owner, key)
        best: tuple[str, Any, sqlite3.Connection] | None = None
        for _, conn in self._reads().search_order():
            try:
                found = conn.execute(ITEM_RESULT, (k,)).fetchone()
            except sqlite3.OperationalError:  # a file its worker has not migrated yet
                found = conn.execute(KEYED_RESULT, (name, owner, key)).fetchone()
            if found is None:
                continue
            job_id, value = found
            if best is None or job_id > best[0]:
                best = (job_id, value, conn)
        if best is None or best[0] < id_floor(time.time() - self.result_ttl_s):
            return None  # expired, whether or not the janitor has deleted it yet
        job_id, value, where = best
        if type(value) is int:
            return self._own_item(job_id, value, where)
        return pickle.loads(value)

    def _own_item(self, job_id: str, index: int, first: sqlite3.Connection) -> Any | None:
        """Item ``index`` of job ``job_id``: in the file of its result row, or (after the job
        moved to another shard) in any file."""
        for conn in (first, *(c for _, c in self._reads().search_order())):
            found = conn.execute(JOB_ITEMS, (job_id,)).fetchone()
            if found is not None and found[0] is not None:
                items = pickle.loads(found[0])
                return items[index] if 0 <= index < len(items) else None
        return None

    async def unfinished(self) -> list[JobRecord]:
        def op(conn: sqlite3.Connection) -> list[JobRecord]:
            interrupt(conn)
            rows = [JobRow._make(row) for row in conn.execute(SELECT_UNFINISHED)]
            self._args_apart.update(row.id for row in rows if row.args == APART)
            return runnable(conn, rows, self.files)

        records: list[JobRecord] = await self._writes().run(op)
        return records

    async def adopt_orphans(self) -> list[JobRecord]:
        own = self._reads().own
        adopted: list[JobRecord] = []
        for path in shard_paths(self.directory):
            if path != own:
                adopted.extend(await asyncio.to_thread(adopt, path, own, self.files))
                await asyncio.to_thread(adopt_deliveries, path, own)
        self._args_apart.update(r.id for r in adopted if self.files.path(r.id, "args").exists())
        return adopted

    async def purge(self, now: float) -> int:
        # Ids are time-ordered: whatever was created before the cutoff sorts before this id,
        # so both deletes walk a primary key range (jobs) or scan without an extra index.
        cutoff = now - self.result_ttl_s
        floor = id_floor(cutoff)
        writes = self._writes()

        def op(conn: sqlite3.Connection) -> list[tuple[str, bool, bool]]:
            rows = conn.execute(EXPIRED_JOBS, (APART, floor, cutoff, PURGE_BATCH)).fetchall()
            conn.executemany(DELETE_JOB, [(job_id,) for job_id, _, _ in rows])
            return rows

        rows: list[tuple[str, bool, bool]] = await writes.run(op)
        with_files = [
            job_id for job_id, args_apart, result_apart in rows if args_apart or result_apart
        ]
        if with_files:
            await asyncio.to_thread(self.files.drop, with_files)
        if self._purges % KEYED_PURGE_EVERY == 0:
            await writes.run(lambda conn: conn.execute(DELETE_EXPIRED_ITEMS, (floor,)).rowcount)
            await writes.run(lambda conn: conn.execute(DELETE_EXPIRED_KEYS, (now,)).rowcount)
            await writes.run(lambda conn: conn.execute(DELETE_EXPIRED_DELIVERIES, (floor,)))
            # Files no row points at: written for a submit whose commit failed.
            await asyncio.to_thread(sweep, self.files, shard_paths(self.directory), floor)
        self._purges += 1
        return len(rows)

    # -- the callbacks' outbox: this worker delivers its own shard's --------------------

    async def take_deliveries(self, n: int, now: float, lease_until: float) -> list[Delivery]:
        conn = self._conn
        if conn is None:
            raise StoreUnavailable("the job store is closed")
        if conn.execute(DELIVERY_DUE, (now,)).fetchone() is None:
            return []  # a read, nearly always: the take is a write

        def op(c: sqlite3.Connection) -> list[Delivery]:
            rows = c.execute(TAKE_DELIVERIES, (lease_until, now, n)).fetchall()
            return [Delivery(*row) for row in rows]

        taken: list[Delivery] = await self._writes().run(op)
        return taken

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
        at = now if state == "delivered" else None
        row = (state, next_at, status, error, at, delivery.job_id, delivery.attempt)

        def op(conn: sqlite3.Connection) -> bool:
            return conn.execute(SETTLE_DELIVERY, row).rowcount == 1

        settled: bool = await self._writes().run(op)
        return settled

    async def resend_delivery(self, job_id: str, now: float) -> bool:
        shards = self._reads()
        for path, conn in shards.search_order():
            if conn.execute(DELIVERY_OF, (job_id,)).fetchone() is None:
                continue
            if path == shards.own:

                def op(c: sqlite3.Connection) -> bool:
                    return c.execute(RESEND_DELIVERY, (now, job_id)).rowcount == 1

                again: bool = await self._writes().run(op)
                return again
            # Another worker's shard: a short write under its lock; that worker sends it.
            return await asyncio.to_thread(resend_in, path, job_id, now)
        return False

    async def ping(self) -> None:
        if self._conn is None:
            raise StoreUnavailable("the job store is closed")
        try:
            self._conn.execute("SELECT 1 FROM jobs LIMIT 1").fetchall()
        except sqlite3.Error as ex:
            raise StoreUnavailable(f"the job store cannot be read: {ex}") from ex
