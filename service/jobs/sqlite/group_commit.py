"""The writes of one event-loop tick, committed in one transaction on the loop.

Why on the loop: with WAL and ``synchronous=NORMAL`` (see :func:`.shards.open_own`) a commit
appends to the WAL without fsync, which is short CPU work; the fsyncs happen in checkpoints,
on a thread (:mod:`.checkpoints`). Within the transaction the writes of one kind go in as
few statements as can be: new jobs and job ends with one ``executemany`` each, item results
as multi-row statements; every new job and end of the tick waits on one shared future.
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
from collections.abc import Callable
from typing import Any

from service.errors import StoreUnavailable
from service.jobs.sqlite.schema import END_JOB, INSERT_JOB, ITEM_STATEMENT_ROWS, UPSERT_ITEMS

log = logging.getLogger(__name__)

#: A write that is more than a row of parameters: run in the transaction, on its connection.
Op = Callable[[sqlite3.Connection], Any]


class GroupCommit:
    """The next transaction of one connection: what it writes, and who waits on it."""

    def __init__(self, conn: sqlite3.Connection, loop: asyncio.AbstractEventLoop) -> None:
        self._conn: sqlite3.Connection | None = conn
        self._loop = loop
        # What the transaction writes, in this order: new jobs, ops (each with its own
        # future, in the order they came), item results, job ends.
        self._adds: list[tuple[Any, ...]] = []
        self._ops: list[tuple[Op, asyncio.Future[Any]]] = []
        #: Item results, flat: k, job_id, value, k, job_id, ...
        self._items: list[Any] = []
        self._ends: list[tuple[Any, ...]] = []
        #: Resolved when the transaction commits: every add and end of it waits on it.
        self._commit: asyncio.Future[None] | None = None
        self._scheduled = False

    def insert_job(self, row: tuple[Any, ...]) -> asyncio.Future[None]:
        """Insert a job (``INSERT_JOB`` parameters); the future resolves at the commit."""
        committed = self._committed()
        self._adds.append(row)
        return committed

    def end_jobs(self, rows: list[tuple[Any, ...]]) -> asyncio.Future[None]:
        """End jobs (``END_JOB`` parameters each); the future resolves at the commit."""
        committed = self._committed()
        self._ends += rows
        return committed

    def upsert_items(self, flat: list[Any]) -> None:
        """Upsert item results (:func:`.rows.item_rows`) in the order they came, after the
        ops: a key that a batch holds twice ends with its later write, as row by row."""
        self._schedule()
        self._items.extend(flat)

    def run(self, op: Op) -> asyncio.Future[Any]:
        """Run ``op`` in the transaction; the future gets its return value."""
        self._schedule()
        future = self._loop.create_future()
        self._ops.append((op, future))
        return future

    def close(self) -> None:
        """Refuse writes from now on; one still scheduled fails as the store is closed."""
        self._conn = None

    def _schedule(self) -> None:
        if self._conn is None:
            raise StoreUnavailable("the job store is closed")
        if not self._scheduled:
            self._scheduled = True
            self._loop.call_soon(self.flush)

    def _committed(self) -> asyncio.Future[None]:
        """The future of the transaction's commit, shared by all its adds and ends."""
        self._schedule()
        future = self._commit
        if future is None:
            future = self._commit = self._loop.create_future()
        return future

    def flush(self) -> None:
        """Commit what was written so far (the loop calls it once a tick, and close)."""
        self._scheduled = False
        adds, ops, items, ends, commit = (
            self._adds, self._ops, self._items, self._ends, self._commit
        )  # fmt: skip
        self._adds, self._ops, self._items, self._ends, self._commit = [], [], [], [], None
        if not (adds or ops or items or ends):
            if commit is not None and not commit.done():
                commit.set_result(None)
            return
        conn = self._conn
        results: list[Any] = []
        try:
            if conn is None:
                raise sqlite3.OperationalError("the job store is closed")
            conn.execute("BEGIN IMMEDIATE")
            try:
                if adds:
                    conn.executemany(INSERT_JOB, adds)
                results = [op(conn) for op, _ in ops]
                if items:
                    _upsert_items(conn, items)
                if ends:
                    conn.executemany(END_JOB, ends)
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
                raise
        except sqlite3.Error as ex:
            log.error("job store write failed: %s", ex)
            error = StoreUnavailable(f"the job store cannot write: {ex}")
            if commit is not None and not commit.done():
                commit.set_exception(error)
                commit.exception()  # retrieved: a tick with no waiter left logs nothing
            for _, future in ops:
                if not future.done():
                    future.set_exception(error)
            return
        if commit is not None and not commit.done():
            commit.set_result(None)
        for (_, future), result in zip(ops, results, strict=True):
            if not future.done():
                future.set_result(result)


def _upsert_items(conn: sqlite3.Connection, flat: list[Any]) -> None:
    at, left = 0, len(flat) // 3
    for rows in ITEM_STATEMENT_ROWS:
        while left >= rows:
            conn.execute(UPSERT_ITEMS[rows], flat[at : at + 3 * rows])
            at += 3 * rows
            left -= rows
