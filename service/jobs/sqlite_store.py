"""The embedded store: SQLite in WAL mode, one file per gunicorn worker, on local disk.

Why a file per worker: two processes writing one file wait on each other's lock. Each
worker claims a shard (``jobs-N.db``) with an exclusive ``flock``; the worker that replaces
a dead one claims the same shard and runs its unfinished jobs. Every worker can read every
shard, so ``GET /v1/jobs/{id}`` works whichever worker the request lands on.

Why commits on the event loop: writes gathered during one loop tick go into one
transaction; with WAL and ``synchronous=NORMAL`` a commit appends to the WAL without fsync,
which is short CPU work. The fsyncs happen in checkpoints, which run on a thread.

Why large arguments and results live apart: SQLite rewrites a whole row when any column
changes. Over ``INLINE_MAX`` bytes a payload is a file (:mod:`service.jobs.payloads`),
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
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from service.errors import StoreUnavailable
from service.ids import id_floor
from service.jobs.payloads import PayloadFiles, PayloadMissing
from service.jobs.record import BatchProgress, JobRecord
from service.jobs.registry import Pool
from service.jobs.slots import claim_slot
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
KEYED_PURGE_EVERY = 12  # janitor rounds between sweeps of the keyed results (a full scan)

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
    args BLOB NOT NULL,
    items BLOB,
    done INTEGER NOT NULL DEFAULT 0,
    failed INTEGER NOT NULL DEFAULT 0,
    result BLOB
) WITHOUT ROWID;
-- Results of batch items that have a key (a parcel's id), newest first by job id. Only
-- the primary key: every index is one more B-tree written on each commit.
CREATE TABLE IF NOT EXISTS keyed (
    name TEXT NOT NULL,
    owner TEXT NOT NULL,
    key TEXT NOT NULL,
    job_id TEXT NOT NULL,
    value BLOB NOT NULL,
    PRIMARY KEY (name, owner, key)
) WITHOUT ROWID;
"""

COLUMNS = (
    "id, name, owner, state, created_at, started_at, finished_at, attempts, error, "
    "args, items, done, failed, result"
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
    (id_, name, owner, state, created, started, finished, attempts, error, args_blob, items,
     done, failed, result_blob) = row  # fmt: skip
    if result_blob == APART:
        result_blob = result if result is not None else files.get(id_, "result")
    if args and args_blob == APART:
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
        args=pickle.loads(args_blob) if args else {},
        items=None if items is None else pickle.loads(items),
        done=done,
        failed=failed,
        result=None if result_blob is None else pickle.loads(result_blob),
    )


def _connect(path: Path) -> sqlite3.Connection:
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
    return conn


class SqliteStore:
    """The :class:`~service.jobs.store.Store` on SQLite shards under ``directory``."""

    #: Each worker runs what it accepted (and what it adopts): nothing to claim.
    shares_queue = False

    def __init__(
        self, directory: Path, *, result_ttl_s: float, result_max: int, max_bytes: int = 0
    ) -> None:
        self.directory = directory
        self.max_bytes = max_bytes
        self.result_ttl_s = result_ttl_s
        self.result_max = result_max
        self.files = PayloadFiles(directory / "payloads")
        self.slot = -1
        self._lock_fd: int | None = None
        self._conn: sqlite3.Connection | None = None
        self._readers: dict[Path, sqlite3.Connection] = {}
        self._pending: list[tuple[Op, asyncio.Future[Any]]] = []
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
        if self._pending:
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

    def _write(self, op: Op) -> asyncio.Future[Any]:
        if self._conn is None or self._loop is None:
            raise StoreUnavailable("the job store is closed")
        future = self._loop.create_future()
        self._pending.append((op, future))
        if not self._flush_scheduled:
            self._flush_scheduled = True
            self._loop.call_soon(self._flush)
        return future

    def _flush(self) -> None:
        self._flush_scheduled = False
        ops, self._pending = self._pending, []
        if not ops:
            return
        conn = self._conn
        results: list[Any] = []
        try:
            if conn is None:
                raise sqlite3.OperationalError("the job store is closed")
            conn.execute("BEGIN IMMEDIATE")
            try:
                results = [op(conn) for op, _ in ops]
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
                raise
        except sqlite3.Error as ex:
            log.error("job store write failed: %s", ex)
            error = StoreUnavailable(f"the job store cannot write: {ex}")
            for _, future in ops:
                if not future.done():
                    future.set_exception(error)
            return
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
        params = (
            record.id, record.name, record.owner, record.state.value, record.created_at,
            record.started_at, record.attempts, args, items,
        )  # fmt: skip

        def op(conn: sqlite3.Connection) -> None:
            conn.execute(
                "INSERT INTO jobs (id, name, owner, state, created_at, started_at, attempts,"
                " args, items) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                params,
            )

        await self._write(op)
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
        write_items = _progress_writer(record, progress)

        def op(conn: sqlite3.Connection) -> None:
            write_items(conn)
            conn.execute(
                "UPDATE jobs SET done = ?, failed = ? WHERE id = ?",
                (progress.done, progress.failed, record.id),
            )

        await self._write(op)

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
        blob, state, error = capped_result(result, state, error, limit=self.result_max)
        apart = blob is not None and len(blob) > INLINE_MAX
        if apart:
            assert blob is not None
            await self._put_file(record.id, "result", blob)
            blob = APART
        write_items = _progress_writer(record, progress) if progress else None
        done, failed = (progress.done, progress.failed) if progress else (None, None)

        def op(conn: sqlite3.Connection) -> bool | None:
            if write_items is not None:
                write_items(conn)
            ended = conn.execute(
                "UPDATE jobs SET state = ?, finished_at = ?, error = ?, result = ?,"
                " done = coalesce(?, done), failed = coalesce(?, failed)"
                " WHERE id = ? AND state IN ('running', 'queued') RETURNING args = ?",
                (state.value, now, error, blob, done, failed, record.id, APART),
            ).fetchone()
            return None if ended is None else bool(ended[0])

        args_apart: bool | None = await self._write(op)
        if args_apart is None:
            drop = ["result"] if apart else []  # the job was final already: not ours to end
        else:
            drop = ["args"] if args_apart else []  # a final job never runs again
        if drop:
            await asyncio.to_thread(self.files.drop, [record.id], drop)

    async def _put_file(self, job_id: str, kind: str, blob: bytes) -> None:
        try:
            await asyncio.to_thread(self.files.put, job_id, kind, blob)
        except OSError as ex:
            raise StoreUnavailable(f"the job store cannot write: {ex}") from ex

    async def requeue(self, job_id: str, *, error: str | None) -> None:
        def op(conn: sqlite3.Connection) -> None:
            conn.execute(
                "UPDATE jobs SET state = 'queued', error = ? WHERE id = ? AND state = 'running'",
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
                result = None
                if row[-1] == APART:
                    try:
                        result = await asyncio.to_thread(self.files.get, job_id, "result")
                    except PayloadMissing as ex:
                        raise StoreUnavailable(str(ex)) from ex
                return _row(row, self.files, args=False, result=result)
        return None

    async def get_item(self, name: str, owner: str, key: str) -> Any | None:
        best: tuple[str, bytes] | None = None
        for conn in self._search_order():
            row = conn.execute(
                "SELECT job_id, value FROM keyed WHERE name = ? AND owner = ? AND key = ?",
                (name, owner, key),
            ).fetchone()
            if row is not None and (best is None or row[0] > best[0]):
                best = row
        if best is None or best[0] < id_floor(time.time() - self.result_ttl_s):
            return None  # expired, whether or not the janitor has deleted it yet
        return pickle.loads(best[1])

    async def unfinished(self) -> list[JobRecord]:
        def op(conn: sqlite3.Connection) -> list[JobRecord]:
            _interrupt(conn)
            return _runnable(conn, conn.execute(UNFINISHED_SQL).fetchall(), self.files)

        records: list[JobRecord] = await self._write(op)
        return records

    async def adopt_orphans(self) -> list[JobRecord]:
        own = self._own_path()
        adopted: list[JobRecord] = []
        for path in sorted(self.directory.glob("jobs-*.db")):
            if path != own:
                adopted.extend(await asyncio.to_thread(_adopt, path, own, self.files))
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
                lambda conn: conn.execute("DELETE FROM keyed WHERE job_id < ?", (floor,)).rowcount
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


def _progress_writer(
    record: JobRecord, progress: BatchProgress | None
) -> Callable[[sqlite3.Connection], None]:
    rows = [
        (record.name, record.owner, key, record.id, _dumps(value))
        for key, value in (progress.keyed if progress else ())
    ]

    def write(conn: sqlite3.Connection) -> None:
        if rows:
            conn.executemany(
                "INSERT INTO keyed (name, owner, key, job_id, value) VALUES (?, ?, ?, ?, ?)"
                " ON CONFLICT DO UPDATE SET job_id = excluded.job_id, value = excluded.value"
                " WHERE excluded.job_id >= keyed.job_id",
                rows,
            )

    return write


def _interrupt(conn: sqlite3.Connection) -> None:
    """Jobs left running by a process that is gone go back to the queue."""
    conn.execute(
        "UPDATE jobs SET state = 'queued', error = ? WHERE state = 'running'",
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
                    f"INSERT OR IGNORE INTO jobs ({COLUMNS}) VALUES ({', '.join('?' * 14)})",
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
