"""The shard files of a host: one per worker, claimed, read by all, adopted when orphaned.

Why a file per worker: two processes writing one file wait on each other's lock. Each
worker claims a shard (``jobs-N.db``) with an exclusive ``flock`` on ``jobs-N.lock``; the
worker that replaces a dead one claims the same shard and runs its unfinished jobs, and a
shard nobody claims is adopted by a live worker. Every worker can read every shard, so
``GET /v1/jobs/{id}`` works whichever worker the request lands on.
"""

from __future__ import annotations

import fcntl
import logging
import os
import sqlite3
import time
from pathlib import Path

from service.jobs.record import JobRecord
from service.jobs.slots import claim_slot, is_held
from service.jobs.sqlite.payloads import PayloadFiles
from service.jobs.sqlite.rows import runnable
from service.jobs.sqlite.schema import (
    COPY_DELIVERY,
    COPY_JOB,
    DELETE_DELIVERY,
    DELETE_JOB,
    JOB_EXISTS,
    PENDING_DELIVERIES,
    RESEND_DELIVERY,
    SCHEMA,
    SELECT_UNFINISHED,
    JobRow,
    cancel,
    interrupt,
    migrate,
)
from service.jobs.state import JobState

log = logging.getLogger(__name__)

BUSY_TIMEOUT_MS = 5000
#: The names of shard N's database and of the lock its worker holds.
SHARD = "jobs-{}.db"
LOCK = "jobs-{}.lock"


def shard_path(directory: Path, shard: int) -> Path:
    return directory / SHARD.format(shard)


def shard_paths(directory: Path) -> list[Path]:
    """Every shard file in ``directory``, claimed or not, in order."""
    return sorted(directory.glob(SHARD.format("*")))


def claim(directory: Path) -> tuple[int, int]:
    """Lock the lowest free shard of ``directory``: (its number, the lock's fd)."""
    return claim_slot(directory, LOCK)


def is_claimed(directory: Path, shard: int) -> bool:
    """Whether a live worker holds shard ``shard`` of ``directory``; never blocks."""
    return is_held(directory / LOCK.format(shard))


def connect(path: Path) -> sqlite3.Connection:
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
    return conn


def open_own(path: Path, *, max_bytes: int) -> sqlite3.Connection:
    """The writing connection of a claimed shard, its schema brought up to date."""
    conn = connect(path)
    try:
        # A commit appends to the WAL without fsync (safe from a crash of the process, and
        # from a power cut once checkpointed): short work that can run on the event loop.
        conn.execute("PRAGMA journal_mode = WAL")
        conn.execute("PRAGMA synchronous = NORMAL")
        conn.execute("PRAGMA wal_autocheckpoint = 0")  # checkpoints run on a thread
        # One transaction: each statement alone would commit (and log) the schema again.
        conn.executescript(f"BEGIN IMMEDIATE; {SCHEMA} COMMIT;")
        migrate(conn)
        if max_bytes:
            # Past it a write fails as on a full disk: 503, never a 202 unstored.
            (page,) = conn.execute("PRAGMA page_size").fetchone()
            conn.execute(f"PRAGMA max_page_count = {max(1, max_bytes // page)}")
    except BaseException:
        conn.close()
        raise
    return conn


#: How old a directory's mtime must be before a listing made at it is trusted (ns).
STAMP_TRUSTED_NS = 1_000_000_000


class Shards:
    """The shards of a directory as one worker reads them: its own first, then the others
    (connections opened as their files appear, kept until :meth:`close`)."""

    def __init__(self, directory: Path, own: Path, conn: sqlite3.Connection) -> None:
        self.directory = directory
        self.own = own
        self._own_conn = conn
        self._readers: dict[Path, sqlite3.Connection] = {}
        self._listed: list[Path] = []
        self._listed_stamp = -1

    def _paths(self) -> list[Path]:
        """:func:`shard_paths`, listed again only when the directory changed. A listing on
        every read was ~8% of a worker's CPU on keyed submits (each looks for its key in
        every shard); a stat is one call. A change within a second of the stamp is not
        trusted (a file may come in the same tick of the mtime clock after the listing)."""
        stamp = os.stat(self.directory).st_mtime_ns
        if stamp != self._listed_stamp or time.time_ns() - stamp < STAMP_TRUSTED_NS:
            self._listed = shard_paths(self.directory)
            self._listed_stamp = stamp
        return self._listed

    def search_order(self) -> list[tuple[Path, sqlite3.Connection]]:
        """Every shard with a connection to read it, this worker's own first."""
        found = [(self.own, self._own_conn)]
        for path in self._paths():
            if path == self.own:
                continue
            conn = self._readers.get(path)
            if conn is None:
                try:
                    conn = connect(path)
                except sqlite3.Error:
                    continue
                self._readers[path] = conn
            found.append((path, conn))
        return found

    def locate(self, job_id: str) -> Path | None:
        """The shard that holds the job, if any does."""
        for path, conn in self.search_order():
            if conn.execute(JOB_EXISTS, (job_id,)).fetchone():
                return path
        return None

    def close(self) -> None:
        """Close the readers (the own connection is its opener's to close)."""
        for conn in self._readers.values():
            conn.close()
        self._readers.clear()


def cancel_in(path: Path, job_id: str, now: float) -> JobState | None:
    """Cancel a job of another worker's shard: a short write under its lock (on a thread)."""
    conn = connect(path)
    try:
        conn.execute("BEGIN IMMEDIATE")
        state = cancel(conn, job_id, now)
        conn.execute("COMMIT")
        return state
    finally:
        conn.close()


def resend_in(path: Path, job_id: str, now: float) -> bool:
    """Make a callback of another worker's shard pending again (on a thread)."""
    conn = connect(path)
    try:
        return bool(conn.execute(RESEND_DELIVERY, (now, job_id)).rowcount)
    finally:
        conn.close()


def adopt_deliveries(path: Path, own: Path) -> int:
    """Move the pending callbacks of an unclaimed shard into ours (on a thread); how many.
    Their jobs stay where they are: every worker reads every shard."""
    try:
        fd = os.open(path.with_suffix(".lock"), os.O_RDWR | os.O_CREAT, 0o600)
    except OSError:
        return 0
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return 0  # a live worker holds it, and sends them
        orphan = connect(path)
        try:
            migrate(orphan)
            rows = orphan.execute(PENDING_DELIVERIES).fetchall()
            if not rows:
                return 0
            mine = connect(own)
            try:
                # Ours first, then theirs: a crash in between sends one twice, never none.
                mine.execute("BEGIN IMMEDIATE")
                mine.executemany(COPY_DELIVERY, rows)
                mine.execute("COMMIT")
            finally:
                mine.close()
            orphan.execute("BEGIN IMMEDIATE")
            orphan.executemany(DELETE_DELIVERY, [(row[0],) for row in rows])
            orphan.execute("COMMIT")
            log.warning("adopted %d pending callbacks from %s", len(rows), path.name)
            return len(rows)
        finally:
            orphan.close()
    finally:
        os.close(fd)


def adopt(path: Path, own: Path, files: PayloadFiles) -> list[JobRecord]:
    """Move the unfinished jobs of an unclaimed shard into ours (runs on a thread)."""
    try:
        fd = os.open(path.with_suffix(".lock"), os.O_RDWR | os.O_CREAT, 0o600)
    except OSError:
        return []
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return []  # a live worker holds it
        orphan = connect(path)
        try:
            migrate(orphan)  # it is ours now: a file of an earlier version is brought up
            if not orphan.execute(SELECT_UNFINISHED).fetchone():
                return []
            orphan.execute("BEGIN IMMEDIATE")
            interrupt(orphan)
            rows = [JobRow._make(row) for row in orphan.execute(SELECT_UNFINISHED)]
            orphan.execute("COMMIT")
            mine = connect(own)
            try:
                # Ours first, then theirs: a crash in between runs a job twice (at least
                # once), never zero times.
                mine.execute("BEGIN IMMEDIATE")
                mine.executemany(COPY_JOB, rows)
                records = runnable(mine, rows, files)
                mine.execute("COMMIT")
            finally:
                mine.close()
            orphan.execute("BEGIN IMMEDIATE")
            orphan.executemany(DELETE_JOB, [(row.id,) for row in rows])
            orphan.execute("COMMIT")
            log.warning("adopted %d unfinished jobs from %s", len(rows), path.name)
            return records
        finally:
            orphan.close()
    finally:
        os.close(fd)


def sweep(files: PayloadFiles, paths: list[Path], floor: str) -> int:
    """Delete payload files older than ``floor`` that no shard's job row points at (written
    for a submit whose commit failed); runs on a thread."""
    conns = [connect(path) for path in paths]

    def has_row(job_id: str) -> bool:
        try:
            return any(c.execute(JOB_EXISTS, (job_id,)).fetchone() for c in conns)
        except sqlite3.Error:
            return True  # cannot tell: keep the file

    try:
        return files.sweep(floor, has_row)
    finally:
        for conn in conns:
            conn.close()
