"""The embedded store: SQLite in WAL mode, one file per gunicorn worker, on local disk.

Why a file per worker: two processes writing one file wait on each other's lock. Each
worker claims a shard (``jobs-N.db``) with an exclusive ``flock``; the worker that replaces
a dead one claims the same shard and runs its unfinished jobs. Every worker can read every
shard, so ``GET /v1/jobs/{id}`` works whichever worker the request lands on.

Why commits on the event loop: writes gathered during one loop tick go into one
transaction; with WAL and ``synchronous=NORMAL`` a commit appends to the WAL without fsync,
which is short CPU work. The fsyncs happen in checkpoints, which run on a thread. Within
that transaction the writes of one kind (new jobs, item results, job ends) go in as one
statement each (``executemany``), and every new job of the tick waits on one shared future.

Why large arguments and results live apart: SQLite rewrites a whole row when any column
changes. Over ``INLINE_MAX`` bytes a payload is a file (:mod:`service.jobs.sqlite.payloads`),
written once, and the job row holds an empty marker in its place; reading a job for the
API never reads its arguments.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import logging
import os
import pickle
import sqlite3
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from service.errors import StoreUnavailable
from service.ids import id_floor
from service.jobs.record import BatchProgress, ItemRef, JobEnd, JobRecord
from service.jobs.registry import Pool
from service.jobs.slots import claim_slot
from service.jobs.sqlite.payloads import PayloadFiles, PayloadMissing
from service.jobs.state import JobState
from service.jobs.store import INTERRUPTED, capped_result

log = logging.getLogger(__name__)

BUSY_TIMEOUT_MS = 5000
CHECKPOINT_INTERVAL_S = 0.5
PURGE_BATCH = 2000
#: Pickled arguments or results larger than this are kept in payload files, not the row.
INLINE_MAX = 8192
#: Stands in the job row for a payload file (a pickle is never empty).
APART = b""
KEYED_PURGE_EVERY = 12  # janitor rounds between sweeps of the item results (a full scan)

SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    owner TEXT NOT NULL,
    state TEXT NOT NULL,
    created_at REAL NOT NULL,
    started_at REAL,
    finished_at REAL,
    attempts INTEGER NOT NULL DEFAULT 0,
    error TEXT,
    -- 1 while the job waits to run again after a crash cut its last run off: it may be what
    -- crashed the process, so it runs alone (see the layer's quarantine).
    interrupted INTEGER NOT NULL DEFAULT 0,
    args BLOB NOT NULL,
    items BLOB,
    done INTEGER NOT NULL DEFAULT 0,
    failed INTEGER NOT NULL DEFAULT 0,
    result BLOB
) WITHOUT ROWID;
-- Results of batch items that have a key (a parcel's id), newest job first. A row is
-- written for every such item, so it is kept small: one text key (job name, owner and the
-- item's key: see item_key()) and two columns. ``value`` is the pickled result, or, when the
-- result is the job's own item unchanged (a parcel is stored as it was sent), the item's
-- index in ``jobs.items`` as an integer: the item is not stored twice. Only the primary
-- key: every index is one more B-tree written on each commit.
CREATE TABLE IF NOT EXISTS item_results (
    k TEXT PRIMARY KEY,
    job_id TEXT NOT NULL,
    value BLOB NOT NULL
) WITHOUT ROWID;
"""
#: Earlier files kept item results in ``keyed`` (name, owner, key, job_id, value): their
#: worker moves them over when it opens the file.
MIGRATE_KEYED = (
    "INSERT OR IGNORE INTO item_results (k, job_id, value)"
    " SELECT length(name) || ':' || name || length(owner) || ':' || owner || key, job_id, value"
    " FROM keyed",
    "DROP TABLE keyed",
)

INSERT_JOB = (
    "INSERT INTO jobs (id, name, owner, state, created_at, started_at, attempts, args, items)"
    " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)"
)
#: Item results go in as multi-row statements of these sizes (largest first): a row of
#: executemany costs a bind, a step and a reset of its own, which for these small rows is
#: more than the row itself (callgrind: 13.7k -> 8.9k instructions a row). A few fixed sizes
#: keep the statements in the connection's statement cache.
ITEM_STATEMENT_ROWS = (128, 32, 8, 2, 1)


def upsert_items_sql(rows: int) -> str:
    """Upsert ``rows`` item results (3 parameters each); rows apply in order, and a newer
    job's result replaces an older one's, never the reverse."""
    return (
        "INSERT INTO item_results (k, job_id, value) VALUES "
        + ", ".join(["(?, ?, ?)"] * rows)
        + " ON CONFLICT DO UPDATE SET job_id = excluded.job_id, value = excluded.value"
        " WHERE excluded.job_id >= item_results.job_id"
    )


UPSERT_ITEMS = {rows: upsert_items_sql(rows) for rows in ITEM_STATEMENT_ROWS}
END_JOB = (
    "UPDATE jobs SET state = ?, finished_at = ?, error = ?, result = ?,"
    " done = coalesce(?, done), failed = coalesce(?, failed)"
    " WHERE id = ? AND state IN ('running', 'queued')"
)

COLUMNS = (
    "id, name, owner, state, created_at, started_at, finished_at, attempts, error, "
    "interrupted, args, items, done, failed, result"
)
UNFINISHED_SQL = f"SELECT {COLUMNS} FROM jobs WHERE state IN ('queued', 'running') ORDER BY id"

Op = Callable[[sqlite3.Connection], Any]


def _dumps(value: Any) -> bytes:
    return pickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL)


def _row(
    row: tuple[Any, ...], files: PayloadFiles, *, args: bool = True, result: bytes | None = None
) -> JobRecord:
    """The record of a ``COLUMNS`` row; ``args=False`` leaves them unread, ``result`` is
    the result's payload when the caller read it already."""
    (id_, name, owner, state, created, started, finished, attempts, error, interrupted,
     args_blob, items, done, failed, result_blob) = row  # fmt: skip
    from_file = result_blob == APART, args and args_blob == APART
    if from_file[0]:
        result_blob = result if result is not None else files.get(id_, "result")
    if from_file[1]:
        args_blob = files.get(id_, "args")
    return JobRecord(
        id=id_,
        name=name,
        owner=owner,
        state=JobState(state),
        created_at=created,
        started_at=started,
        finished_at=finished,
        attempts=attempts,
        error=error,
        interrupted=bool(interrupted),
        args=_loads(args_blob, id_, "args", from_file[1]) if args else {},
        items=None if items is None else pickle.loads(items),
        done=done,
        failed=failed,
        result=None if result_blob is None else _loads(result_blob, id_, "result", from_file[0]),
    )


def _loads(blob: bytes, job_id: str, kind: str, from_file: bool) -> Any:
    """Unpickle; a payload file cut short (a power cut before it reached the disk) counts
    as missing, not as a broken store."""
    try:
        return pickle.loads(blob)
    except (pickle.UnpicklingError, EOFError, ValueError) as ex:
        if not from_file:
            raise
        raise PayloadMissing(f"job {job_id}: its {kind} file is damaged ({ex})") from None


def _connect(path: Path) -> sqlite3.Connection:
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
    return conn


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
        #: Jobs of this worker with their arguments in a file, to drop when they end.
        self._args_apart: set[str] = set()
        self.slot = -1
        self._lock_fd: int | None = None
        self._conn: sqlite3.Connection | None = None
        self._readers: dict[Path, sqlite3.Connection] = {}
        # What the next transaction writes, in this order: new jobs, other writes (each with
        # its own future, in the order they came), item results, job ends.
        self._adds: list[tuple[Any, ...]] = []
        self._pending: list[tuple[Op, asyncio.Future[Any]]] = []
        #: Item results of the next transaction, flat: k, job_id, value, k, job_id, ...
        self._keyed: list[Any] = []
        self._ends: list[tuple[Any, ...]] = []
        #: Resolved when the next transaction commits: every add and end of it waits on it.
        self._commit: asyncio.Future[None] | None = None
        self._flush_scheduled = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop_checkpoints = threading.Event()
        self._checkpointer: threading.Thread | None = None
        self._purges = 0

    # -- life cycle -------------------------------------------------------------------

    def _path(self, shard: int) -> Path:
        return self.directory / f"jobs-{shard}.db"

    async def open(self) -> None:
        self._loop = asyncio.get_running_loop()
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
            self.files.open()
            shard, fd = self._claim()
            conn = _connect(self._path(shard))
            conn.execute("PRAGMA journal_mode = WAL")
            conn.execute("PRAGMA synchronous = NORMAL")
            conn.execute("PRAGMA wal_autocheckpoint = 0")  # checkpoints run on a thread
            conn.executescript(SCHEMA)
            _migrate(conn)
            if self.max_bytes:
                # Past it a write fails as on a full disk: 503, never a 202 unstored.
                page = conn.execute("PRAGMA page_size").fetchone()[0]
                conn.execute(f"PRAGMA max_page_count = {max(1, self.max_bytes // page)}")
        except (OSError, sqlite3.Error) as ex:
            raise StoreUnavailable(f"cannot open the job store in {self.directory}: {ex}") from ex
        self.slot, self._lock_fd, self._conn = shard, fd, conn
        self._checkpointer = threading.Thread(
            target=self._checkpoint_loop, name="jobpool-checkpoint", daemon=True
        )
        self._checkpointer.start()
        log.info("job store shard %s claimed in %s", shard, self.directory)

    def _claim(self) -> tuple[int, int]:
        return claim_slot(self.directory, "jobs-{}.lock")

    async def close(self) -> None:
        if self._flush_scheduled:
            self._flush()
        self._stop_checkpoints.set()
        if self._checkpointer is not None:
            await asyncio.to_thread(self._checkpointer.join, 5)
        for conn in self._readers.values():
            conn.close()
        self._readers.clear()
        if self._conn is not None:
            with contextlib.suppress(sqlite3.Error, OSError):
                self.files.sync()
                self._conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            self._conn.close()
            self._conn = None
        if self._lock_fd is not None:
            os.close(self._lock_fd)  # releases the shard for the next worker
            self._lock_fd = None

    def _checkpoint_loop(self) -> None:
        conn = _connect(self._path(self.slot))
        try:
            while not self._stop_checkpoints.wait(CHECKPOINT_INTERVAL_S):
                try:
                    self.files.sync()  # before their rows reach the database file
                    conn.execute("PRAGMA wal_checkpoint(PASSIVE)")
                except (sqlite3.Error, OSError) as ex:
                    log.warning("checkpoint failed: %s", ex)
        finally:
            conn.close()

    # -- grouped writes ---------------------------------------------------------------

    def _schedule(self) -> None:
        if self._conn is None or self._loop is None:
            raise StoreUnavailable("the job store is closed")
        if not self._flush_scheduled:
            self._flush_scheduled = True
            self._loop.call_soon(self._flush)

    def _write(self, op: Op) -> asyncio.Future[Any]:
        """Run ``op`` in the next transaction; the future gets its return value."""
        self._schedule()
        assert self._loop is not None
        future = self._loop.create_future()
        self._pending.append((op, future))
        return future

    def _committed(self) -> asyncio.Future[None]:
        """The future of the next transaction's commit (shared by all its adds and ends)."""
        self._schedule()
        future = self._commit
        if future is None:
            assert self._loop is not None
            future = self._commit = self._loop.create_future()
        return future

    def _flush(self) -> None:
        self._flush_scheduled = False
        adds, ops, keyed, ends, commit = (
            self._adds, self._pending, self._keyed, self._ends, self._commit
        )  # fmt: skip
        self._adds, self._pending, self._keyed, self._ends, self._commit = [], [], [], [], None
        if not (adds or ops or keyed or ends):
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
                if keyed:
                    _upsert_items(conn, keyed)
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

    # -- the Store interface ----------------------------------------------------------

    async def add(self, record: JobRecord) -> JobState:
        items = None if record.items is None else _dumps(record.items)
        args = _dumps(record.args)
        if len(args) > INLINE_MAX:
            await self._put_file(record.id, "args", args)
            args = APART
            self._args_apart.add(record.id)
        committed = self._committed()
        self._adds.append((
            record.id, record.name, record.owner, record.state.value, record.created_at,
            record.started_at, record.attempts, args, items,
        ))  # fmt: skip
        await committed
        return record.state

    async def claim(self, room: Mapping[Pool, int], now: float) -> list[JobRecord]:
        return []

    async def start(self, job_id: str, now: float) -> bool:
        def op(conn: sqlite3.Connection) -> bool:
            return (
                conn.execute(
                    "UPDATE jobs SET state = 'running', started_at = ?, attempts = attempts + 1"
                    " WHERE id = ? AND state = 'queued'",
                    (now, job_id),
                ).rowcount
                == 1
            )

        started: bool = await self._write(op)
        return started

    async def progress(self, record: JobRecord, progress: BatchProgress) -> None:
        def op(conn: sqlite3.Connection) -> None:
            conn.execute(
                "UPDATE jobs SET done = ?, failed = ? WHERE id = ?",
                (progress.done, progress.failed, record.id),
            )

        done = self._write(op)
        # Item rows go in after the ops of the transaction, in the order they came, so a key
        # that a batch holds twice ends with its later write, as it would row by row.
        self._keyed.extend(_keyed_rows(record, progress))
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
    ) -> None:
        await self.finish_many([JobEnd(record, state, result, error, progress)], now)

    async def finish_many(self, ends: Sequence[JobEnd], now: float) -> None:
        rows = [await self._end_row(end, now) for end in ends]  # result files first
        committed = self._committed()
        for end, row in zip(ends, rows, strict=True):
            if end.progress is not None and end.progress.keyed:
                self._keyed.extend(_keyed_rows(end.record, end.progress))
            self._ends.append(row)
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
        return (state.value, now, error, blob, done, failed, end.record.id)

    async def _put_file(self, job_id: str, kind: str, blob: bytes) -> None:
        try:
            await asyncio.to_thread(self.files.put, job_id, kind, blob)
        except OSError as ex:
            raise StoreUnavailable(f"the job store cannot write: {ex}") from ex

    async def requeue(self, job_id: str, *, error: str | None) -> None:
        def op(conn: sqlite3.Connection) -> None:
            conn.execute(
                "UPDATE jobs SET state = 'queued', error = ?, interrupted = 0"
                " WHERE id = ? AND state = 'running'",
                (error, job_id),
            )

        await self._write(op)

    async def cancel(self, job_id: str, now: float) -> JobState | None:
        path = await self._locate(job_id)
        if path is None:
            return None
        if path == self._own_path():

            def op(conn: sqlite3.Connection) -> JobState | None:
                return _cancel(conn, job_id, now)

            state: JobState | None = await self._write(op)
            return state
        # Another worker's shard: a short write under its lock, off the loop.
        return await asyncio.to_thread(_cancel_in_file, path, job_id, now)

    async def get(self, job_id: str) -> JobRecord | None:
        for conn in self._search_order():
            row = conn.execute(f"SELECT {COLUMNS} FROM jobs WHERE id = ?", (job_id,)).fetchone()
            if row is not None:
                try:
                    result = None
                    if row[-1] == APART:
                        result = await asyncio.to_thread(self.files.get, job_id, "result")
                    return _row(row, self.files, args=False, result=result)
                except PayloadMissing as ex:
                    # Lost for good (a power cut before the checkpoint): say so, as a
                    # failure; a 503 would ask the client to retry in vain.
                    lost = _row((*row[:-1], None), self.files, args=False)
                    return lost.replace(state=JobState.FAILED, error=str(ex))
        return None

    async def get_item(self, name: str, owner: str, key: str) -> Any | None:
        k = item_key(name, owner, key)
        best: tuple[str, Any, sqlite3.Connection] | None = None
        for conn in self._search_order():
            try:
                row = conn.execute(
                    "SELECT job_id, value FROM item_results WHERE k = ?", (k,)
                ).fetchone()
            except sqlite3.OperationalError:  # a file its worker has not migrated yet
                row = conn.execute(
                    "SELECT job_id, value FROM keyed WHERE name = ? AND owner = ? AND key = ?",
                    (name, owner, key),
                ).fetchone()
            if row is not None and (best is None or row[0] > best[0]):
                best = (row[0], row[1], conn)
        if best is None or best[0] < id_floor(time.time() - self.result_ttl_s):
            return None  # expired, whether or not the janitor has deleted it yet
        job_id, value, where = best
        if type(value) is int:
            return self._own_item(job_id, value, where)
        return pickle.loads(value)

    def _own_item(self, job_id: str, index: int, first: sqlite3.Connection) -> Any | None:
        """Item ``index`` of job ``job_id``: in the file of its result row, or (after the job
        moved to another shard) in any file."""
        for conn in (first, *self._search_order()):
            row = conn.execute("SELECT items FROM jobs WHERE id = ?", (job_id,)).fetchone()
            if row is not None and row[0] is not None:
                items = pickle.loads(row[0])
                return items[index] if 0 <= index < len(items) else None
        return None

    async def unfinished(self) -> list[JobRecord]:
        def op(conn: sqlite3.Connection) -> list[JobRecord]:
            _interrupt(conn)
            rows = conn.execute(UNFINISHED_SQL).fetchall()
            self._args_apart.update(row[0] for row in rows if row[10] == APART)
            return _runnable(conn, rows, self.files)

        records: list[JobRecord] = await self._write(op)
        return records

    async def adopt_orphans(self) -> list[JobRecord]:
        own = self._own_path()
        adopted: list[JobRecord] = []
        for path in sorted(self.directory.glob("jobs-*.db")):
            if path != own:
                adopted.extend(await asyncio.to_thread(_adopt, path, own, self.files))
        self._args_apart.update(r.id for r in adopted if self.files.path(r.id, "args").exists())
        return adopted

    async def purge(self, now: float) -> int:
        # Ids are time-ordered: whatever was created before the cutoff sorts before this id,
        # so both deletes walk a primary key range (jobs) or scan without an extra index.
        cutoff = now - self.result_ttl_s
        floor = id_floor(cutoff)

        def op(conn: sqlite3.Connection) -> list[tuple[str, bool, bool]]:
            rows = conn.execute(
                "SELECT id, args = ?1, result = ?1 FROM jobs WHERE id < ?2 AND finished_at < ?3"
                " LIMIT ?4",
                (APART, floor, cutoff, PURGE_BATCH),
            ).fetchall()
            conn.executemany("DELETE FROM jobs WHERE id = ?", [(r[0],) for r in rows])
            return rows

        rows: list[tuple[str, bool, bool]] = await self._write(op)
        with_files = [r for r in rows if r[1] or r[2]]
        if with_files:
            await asyncio.to_thread(self.files.drop, [r[0] for r in with_files])
        if self._purges % KEYED_PURGE_EVERY == 0:
            await self._write(
                lambda conn: (
                    conn.execute("DELETE FROM item_results WHERE job_id < ?", (floor,)).rowcount
                )
            )
            # Files no row points at: written for a submit whose commit failed.
            shards = sorted(self.directory.glob("jobs-*.db"))
            await asyncio.to_thread(_sweep, self.files, shards, floor)
        self._purges += 1
        return len(rows)

    async def ping(self) -> None:
        if self._conn is None:
            raise StoreUnavailable("the job store is closed")
        try:
            self._conn.execute("SELECT 1 FROM jobs LIMIT 1").fetchall()
        except sqlite3.Error as ex:
            raise StoreUnavailable(f"the job store cannot be read: {ex}") from ex

    # -- reading across shards --------------------------------------------------------

    def _own_path(self) -> Path:
        return self._path(self.slot)

    def _search_order(self) -> list[sqlite3.Connection]:
        if self._conn is None:
            raise StoreUnavailable("the job store is closed")
        conns = [self._conn]
        own = self._own_path()
        for path in sorted(self.directory.glob("jobs-*.db")):
            if path == own:
                continue
            conn = self._readers.get(path)
            if conn is None:
                try:
                    conn = _connect(path)
                except sqlite3.Error:
                    continue
                self._readers[path] = conn
            conns.append(conn)
        return conns

    async def _locate(self, job_id: str) -> Path | None:
        own = self._own_path()
        for conn in self._search_order():
            if conn.execute("SELECT 1 FROM jobs WHERE id = ?", (job_id,)).fetchone():
                return own if conn is self._conn else self._reader_path(conn)
        return None

    def _reader_path(self, conn: sqlite3.Connection) -> Path:
        for path, reader in self._readers.items():
            if reader is conn:
                return path
        raise LookupError("unknown connection")


def item_key(name: str, owner: str, key: str) -> str:
    """The one text key of an item result: name and owner length-prefixed, so that no two
    (name, owner, key) share it whatever characters they hold."""
    return f"{len(name)}:{name}{len(owner)}:{owner}{key}"


def _keyed_rows(record: JobRecord, progress: BatchProgress) -> list[Any]:
    """The item results of ``progress``, flat: k, job_id, value for each."""
    prefix, job_id = item_key(record.name, record.owner, ""), record.id
    flat: list[Any] = []
    for key, value in progress.keyed:
        flat += (prefix + key, job_id, value.index if type(value) is ItemRef else _dumps(value))
    return flat


def _upsert_items(conn: sqlite3.Connection, flat: list[Any]) -> None:
    at, left = 0, len(flat) // 3
    for rows in ITEM_STATEMENT_ROWS:
        while left >= rows:
            conn.execute(UPSERT_ITEMS[rows], flat[at : at + 3 * rows])
            at += 3 * rows
            left -= rows


def _migrate(conn: sqlite3.Connection) -> None:
    """Bring a file made by an earlier version to this schema."""
    statements: list[tuple[str, tuple[Any, ...]]] = []
    if conn.execute("SELECT 1 FROM sqlite_master WHERE name = 'keyed'").fetchone():
        statements += [(statement, ()) for statement in MIGRATE_KEYED]
    columns = {row[1] for row in conn.execute("PRAGMA table_info(jobs)")}
    if "interrupted" not in columns:
        # Earlier files said "cut off by a crash" with the error text alone.
        statements += [
            ("ALTER TABLE jobs ADD COLUMN interrupted INTEGER NOT NULL DEFAULT 0", ()),
            ("UPDATE jobs SET interrupted = 1 WHERE state = 'queued' AND error = ?",
             (INTERRUPTED,)),
        ]  # fmt: skip
    if not statements:
        return
    conn.execute("BEGIN IMMEDIATE")
    try:
        for statement, params in statements:
            conn.execute(statement, params)
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise


def _interrupt(conn: sqlite3.Connection) -> None:
    """Jobs left running by a process that is gone go back to the queue."""
    conn.execute(
        "UPDATE jobs SET state = 'queued', error = ?, interrupted = 1 WHERE state = 'running'",
        (INTERRUPTED,),
    )


def _cancel(conn: sqlite3.Connection, job_id: str, now: float) -> JobState | None:
    conn.execute(
        "UPDATE jobs SET state = 'cancelled', finished_at = ? WHERE id = ? AND state = 'queued'",
        (now, job_id),
    )
    row = conn.execute("SELECT state FROM jobs WHERE id = ?", (job_id,)).fetchone()
    return None if row is None else JobState(row[0])


def _cancel_in_file(path: Path, job_id: str, now: float) -> JobState | None:
    conn = _connect(path)
    try:
        conn.execute("BEGIN IMMEDIATE")
        state = _cancel(conn, job_id, now)
        conn.execute("COMMIT")
        return state
    finally:
        conn.close()


def _runnable(
    conn: sqlite3.Connection, rows: list[tuple[Any, ...]], files: PayloadFiles
) -> list[JobRecord]:
    """The records of unfinished rows; a job whose arguments file is gone fails here."""
    records = []
    for row in rows:
        try:
            records.append(_row(row, files))
        except PayloadMissing as ex:
            conn.execute(
                "UPDATE jobs SET state = 'failed', finished_at = ?, error = ? WHERE id = ?",
                (time.time(), str(ex), row[0]),
            )
    return records


def _sweep(files: PayloadFiles, shards: list[Path], floor: str) -> int:
    """Delete payload files older than ``floor`` that no shard's job row points at."""
    conns = [_connect(path) for path in shards]

    def has_row(job_id: str) -> bool:
        try:
            return any(
                c.execute("SELECT 1 FROM jobs WHERE id = ?", (job_id,)).fetchone() for c in conns
            )
        except sqlite3.Error:
            return True  # cannot tell: keep the file

    try:
        return files.sweep(floor, has_row)
    finally:
        for conn in conns:
            conn.close()


def _adopt(path: Path, own: Path, files: PayloadFiles) -> list[JobRecord]:
    """Move the unfinished jobs of an unclaimed shard into ours (runs on a thread)."""
    lock_path = path.with_suffix(".lock")
    try:
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o600)
    except OSError:
        return []
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return []  # a live worker holds it
        orphan = _connect(path)
        try:
            _migrate(orphan)  # it is ours now: a file of an earlier version is brought up
            if not orphan.execute(UNFINISHED_SQL).fetchone():
                return []
            orphan.execute("BEGIN IMMEDIATE")
            _interrupt(orphan)
            rows = orphan.execute(UNFINISHED_SQL).fetchall()
            orphan.execute("COMMIT")
            ids = [(r[0],) for r in rows]
            mine = _connect(own)
            try:
                # Ours first, then theirs: a crash in between runs a job twice (at least
                # once), never zero times.
                mine.execute("BEGIN IMMEDIATE")
                mine.executemany(
                    f"INSERT OR IGNORE INTO jobs ({COLUMNS}) VALUES ({', '.join('?' * 15)})",
                    rows,
                )
                records = _runnable(mine, rows, files)
                mine.execute("COMMIT")
            finally:
                mine.close()
            orphan.execute("BEGIN IMMEDIATE")
            orphan.executemany("DELETE FROM jobs WHERE id = ?", ids)
            orphan.execute("COMMIT")
            log.warning("adopted %d unfinished jobs from %s", len(rows), path.name)
            return records
        finally:
            orphan.close()
    finally:
        os.close(fd)
