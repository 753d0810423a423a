"""The tables of a shard, every statement run against them, and the migration of older files.

Every statement is here, so that one read shows what each walks. Each index is one more
B-tree written on every commit (a page of WAL per index per commit: measured, each listing
index cost 6-15 us of CPU per job accepted), so there are two, for listing a client's jobs
(``GET /v1/jobs``), each chosen for what it costs a job: by client is written once per job
(neither column ever changes); by state is partial, holding only jobs that have not
succeeded, so a job that ends well leaves it again (and one stored already succeeded never
enters it). Listing the succeeded jobs, or a job name, walks the client's index: they are
nearly all of them, or a large share (a handful of job names).
"""

from __future__ import annotations

import sqlite3
from typing import Any, NamedTuple

from service.jobs.state import (
    CANCEL,
    DUE,
    FINAL,
    FINISH,
    REQUEUE,
    RETRY,
    START,
    JobState,
    can_stop,
)
from service.jobs.store import INTERRUPTED

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
    result BLOB,
    -- When a scheduled job may start (its delay, or its next retry).
    not_before REAL,
    -- Runs of the job that crashes cut off (bounded by JOBPOOL_MAX_ATTEMPTS).
    interruptions INTEGER NOT NULL DEFAULT 0,
    -- JSON: the attempts that failed and were retried.
    failed_attempts BLOB,
    -- A client asked the running job to stop, at this time; and how it was stopped.
    cancel_requested_at REAL,
    cancelled_how TEXT,
    -- JSON: what the task last said of how far it got.
    progress BLOB,
    -- The URL its end is POSTed to (Job-Callback), and the submit's W3C trace context.
    callback TEXT,
    traceparent TEXT
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS jobs_by_owner ON jobs (owner, id);
-- An index of an earlier version, dropped: it cost every submit more than it saved.
DROP INDEX IF EXISTS jobs_by_owner_name;
CREATE INDEX IF NOT EXISTS jobs_unsucceeded ON jobs (state, owner, id) WHERE state != 'succeeded';
-- Idempotency keys of the jobs this shard accepted (see keys.py): ``k`` is the owner and
-- the key, length-prefixed; a key names its job until ``expires_at``.
CREATE TABLE IF NOT EXISTS idempotency_keys (
    k TEXT PRIMARY KEY,
    job_id TEXT NOT NULL,
    fingerprint BLOB NOT NULL,
    expires_at REAL NOT NULL
) WITHOUT ROWID;
-- Running jobs of this shard that a client asked to stop: the worker that runs them looks
-- here (a small table, empty nearly always) rather than through every job.
CREATE TABLE IF NOT EXISTS stop_requests (
    job_id TEXT PRIMARY KEY,
    at REAL NOT NULL
) WITHOUT ROWID;
-- Results of batch items that have a key (a parcel's id), newest job first. A row is
-- written for every such item, so it is kept small: one text key (job name, owner and the
-- item's key: see item_key()) and two columns. ``value`` is the pickled result, or, when the
-- result is the job's own item unchanged (a parcel is stored as it was sent), the item's
-- index in ``jobs.items`` as an integer: the item is not stored twice.
CREATE TABLE IF NOT EXISTS item_results (
    k TEXT PRIMARY KEY,
    job_id TEXT NOT NULL,
    value BLOB NOT NULL
) WITHOUT ROWID;
"""


class JobRow(NamedTuple):
    """A row of ``jobs`` as the statements below read and copy it, a field per column."""

    id: str
    name: str
    owner: str
    state: str
    created_at: float
    started_at: float | None
    finished_at: float | None
    attempts: int
    error: str | None
    interrupted: int
    #: Pickled, or the APART marker: the payload is a file (see rows.py).
    args: bytes
    items: bytes | None
    done: int
    failed: int
    result: bytes | None
    not_before: float | None
    interruptions: int
    #: JSON, or None: none failed.
    failed_attempts: bytes | None
    cancel_requested_at: float | None
    cancelled_how: str | None
    #: JSON, or None: the task said nothing.
    progress: bytes | None
    callback: str | None
    traceparent: str | None


#: Columns added since the first version, each with its definition, for older files.
ADDED_COLUMNS = (
    ("not_before", "REAL"),
    ("interruptions", "INTEGER NOT NULL DEFAULT 0"),
    ("failed_attempts", "BLOB"),
    ("cancel_requested_at", "REAL"),
    ("cancelled_how", "TEXT"),
    ("progress", "BLOB"),
    ("callback", "TEXT"),
    ("traceparent", "TEXT"),
)

_FINAL = "(" + ", ".join(f"'{s.value}'" for s in sorted(FINAL)) + ")"

#: The outbox of completion callbacks. A job that names a callback gets its delivery here in
#: the very write that ends it (the trigger: whichever statement ends it, on whichever
#: connection), so a crash between the end and the POST still delivers. ``next_at`` is when
#: it is due: its next attempt, or the end of the lease of the attempt in flight (a worker
#: that died mid-POST leaves it due again). :func:`migrate` makes it last: the trigger reads
#: columns that migrate adds to older files.
OUTBOX = f"""
BEGIN IMMEDIATE;
CREATE TABLE IF NOT EXISTS deliveries (
    job_id TEXT PRIMARY KEY,
    owner TEXT NOT NULL,
    url TEXT NOT NULL,
    traceparent TEXT,
    -- pending, delivered, failed (given up: re-sent on request)
    state TEXT NOT NULL,
    -- When the job ended (or a re-send was asked for): the retries' horizon counts from here.
    first_at REAL NOT NULL,
    next_at REAL,
    attempts INTEGER NOT NULL DEFAULT 0,
    last_status INTEGER,
    last_error TEXT,
    delivered_at REAL
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS deliveries_due ON deliveries (next_at) WHERE state = 'pending';
CREATE TRIGGER IF NOT EXISTS outbox AFTER UPDATE OF state ON jobs
WHEN NEW.callback IS NOT NULL AND NEW.state IN {_FINAL}
    AND OLD.state NOT IN {_FINAL}
BEGIN
    INSERT OR IGNORE INTO deliveries (job_id, owner, url, traceparent, state, first_at, next_at)
    VALUES (NEW.id, NEW.owner, NEW.callback, NEW.traceparent, 'pending',
            coalesce(NEW.finished_at, 0), coalesce(NEW.finished_at, 0));
END;
-- A job stored already ended (an inline batch): its delivery in the same insert.
CREATE TRIGGER IF NOT EXISTS outbox_ended AFTER INSERT ON jobs
WHEN NEW.callback IS NOT NULL AND NEW.state IN {_FINAL}
BEGIN
    INSERT OR IGNORE INTO deliveries (job_id, owner, url, traceparent, state, first_at, next_at)
    VALUES (NEW.id, NEW.owner, NEW.callback, NEW.traceparent, 'pending',
            coalesce(NEW.finished_at, 0), coalesce(NEW.finished_at, 0));
END;
COMMIT;
"""

COLUMNS = ", ".join(JobRow._fields)
SELECT_JOB = f"SELECT {COLUMNS} FROM jobs WHERE id = ?"
SELECT_UNFINISHED = (
    f"SELECT {COLUMNS} FROM jobs WHERE state IN ('scheduled', 'queued', 'running') ORDER BY id"
)
#: A job moved whole from another shard (adoption); one already here is kept.
COPY_JOB = f"INSERT OR IGNORE INTO jobs ({COLUMNS}) VALUES ({', '.join('?' * len(JobRow._fields))})"
JOB_EXISTS = "SELECT 1 FROM jobs WHERE id = ?"
JOB_STATE = "SELECT state FROM jobs WHERE id = ?"
JOB_ITEMS = "SELECT items FROM jobs WHERE id = ?"

INSERT_JOB = (
    "INSERT INTO jobs (id, name, owner, state, created_at, started_at, attempts, args, items,"
    " not_before, finished_at, error, result, done, failed, callback, traceparent)"
    " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
)
# The moves of a job's state apply in the states service/jobs/state.py declares for them.
START_JOB = (
    "UPDATE jobs SET state = 'running', started_at = ?, attempts = attempts + 1"
    f" WHERE id = ? AND state IN {START.sql()}"
)
COUNT_ITEMS = "UPDATE jobs SET done = ?, failed = ? WHERE id = ?"
END_JOB = (
    "UPDATE jobs SET state = ?, finished_at = ?, error = ?, result = ?,"
    " done = coalesce(?, done), failed = coalesce(?, failed), cancelled_how = ?,"
    " progress = coalesce(?, progress), not_before = NULL"
    f" WHERE id = ? AND state IN {FINISH.sql()}"
)
DUE_JOB = f"UPDATE jobs SET state = 'queued' WHERE id = ? AND state IN {DUE.sql()}"
RETRY_JOB = (
    "UPDATE jobs SET state = 'scheduled', not_before = ?, error = ?, failed_attempts = ?"
    f" WHERE id = ? AND state IN {RETRY.sql()}"
)
PROGRESS_JOB = "UPDATE jobs SET progress = ? WHERE id = ? AND state = 'running'"
#: A running job asked to stop: marked in its row, and listed for the worker that runs it.
REQUEST_STOP = (
    "UPDATE jobs SET cancel_requested_at = ?"
    " WHERE id = ? AND state = 'running' AND cancel_requested_at IS NULL"
)
ADD_STOP_REQUEST = "INSERT OR IGNORE INTO stop_requests (job_id, at) VALUES (?, ?)"
#: Each request with its job's state (a job moved to another shard reads as ended here).
STOP_REQUESTS = (
    "SELECT s.job_id, coalesce(j.state, 'gone') FROM stop_requests s"
    " LEFT JOIN jobs j ON j.id = s.job_id"
)
DELETE_STOP_REQUEST = "DELETE FROM stop_requests WHERE job_id = ?"
REQUEUE_JOB = (
    "UPDATE jobs SET state = 'queued', error = ?, interrupted = 0"
    f" WHERE id = ? AND state IN {REQUEUE.sql()}"
)
CANCEL_JOB = (
    "UPDATE jobs SET state = 'cancelled', finished_at = ?, cancelled_how = 'dequeued',"
    f" not_before = NULL WHERE id = ? AND state IN {CANCEL.sql()}"
)
#: A requeue of every job whose process is gone (a crash found later).
INTERRUPT_JOBS = (
    "UPDATE jobs SET state = 'queued', error = ?, interrupted = 1,"
    f" interruptions = interruptions + 1 WHERE state IN {REQUEUE.sql()}"
)
#: A job whose arguments file is lost can never run.
FAIL_JOB = "UPDATE jobs SET state = 'failed', finished_at = ?, error = ? WHERE id = ?"
#: Ids are time-ordered: a job created before the cutoff sorts before ``?2``, so this walks
#: a range of the primary key. ``?1`` is the APART marker: which payloads are files.
EXPIRED_JOBS = (
    "SELECT id, args = ?1, result = ?1 FROM jobs WHERE id < ?2 AND finished_at < ?3 LIMIT ?4"
)
DELETE_JOB = "DELETE FROM jobs WHERE id = ?"

#: Whether any callback of this shard is due (a read: the take below is a write).
DELIVERY_DUE = "SELECT 1 FROM deliveries WHERE state = 'pending' AND next_at <= ? LIMIT 1"
#: Take up to ``?3`` due callbacks, oldest due first, each leased until ``?1``.
TAKE_DELIVERIES = (
    "UPDATE deliveries SET attempts = attempts + 1, next_at = ?1 WHERE job_id IN"
    " (SELECT job_id FROM deliveries WHERE state = 'pending' AND next_at <= ?2"
    " ORDER BY next_at LIMIT ?3)"
    " RETURNING job_id, owner, url, attempts, first_at, traceparent"
)
#: The outcome of attempt ``attempts`` (one of a lease that ran out and was taken again
#: changes nothing).
SETTLE_DELIVERY = (
    "UPDATE deliveries SET state = ?, next_at = ?, last_status = ?, last_error = ?,"
    " delivered_at = ? WHERE job_id = ? AND attempts = ? AND state = 'pending'"
)
#: Pending again from ``?1``, its horizon starting over (its attempts go on counting).
RESEND_DELIVERY = (
    "UPDATE deliveries SET state = 'pending', first_at = ?1, next_at = ?1, last_status = NULL,"
    " last_error = NULL, delivered_at = NULL WHERE job_id = ?2"
)
DELIVERY_OF = (
    "SELECT state, attempts, last_status, last_error, delivered_at FROM deliveries WHERE job_id = ?"
)
#: Deliveries of jobs created before the cutoff id (their jobs are purged too).
DELETE_EXPIRED_DELIVERIES = "DELETE FROM deliveries WHERE job_id < ?"
#: Pending deliveries of a shard nobody claims, moved to a live worker's.
PENDING_DELIVERIES = (
    "SELECT job_id, owner, url, traceparent, state, first_at, next_at, attempts, last_status,"
    " last_error, delivered_at FROM deliveries WHERE state = 'pending'"
)
COPY_DELIVERY = "INSERT OR IGNORE INTO deliveries VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
DELETE_DELIVERY = "DELETE FROM deliveries WHERE job_id = ?"

FIND_KEY = "SELECT job_id, fingerprint FROM idempotency_keys WHERE k = ? AND expires_at > ?"
#: An expired key of the same name is replaced.
PUT_KEY = (
    "INSERT OR REPLACE INTO idempotency_keys (k, job_id, fingerprint, expires_at)"
    " VALUES (?, ?, ?, ?)"
)
#: A full scan (no index on expires_at): the janitor runs it every few rounds only.
DELETE_EXPIRED_KEYS = "DELETE FROM idempotency_keys WHERE expires_at < ?"

ITEM_RESULT = "SELECT job_id, value FROM item_results WHERE k = ?"
#: The same in a file its worker has not migrated yet (see MIGRATE_KEYED).
KEYED_RESULT = "SELECT job_id, value FROM keyed WHERE name = ? AND owner = ? AND key = ?"
#: A full scan (no index on job_id): the janitor runs it every few rounds only.
DELETE_EXPIRED_ITEMS = "DELETE FROM item_results WHERE job_id < ?"
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


def item_key(name: str, owner: str, key: str) -> str:
    """The one text key of an item result: name and owner length-prefixed, so that no two
    (name, owner, key) share it whatever characters they hold."""
    return f"{len(name)}:{name}{len(owner)}:{owner}{key}"


def interrupt(conn: sqlite3.Connection) -> None:
    """Jobs left running by a process that is gone go back to the queue, marked."""
    conn.execute(INTERRUPT_JOBS, (INTERRUPTED,))


def cancel(conn: sqlite3.Connection, job_id: str, now: float) -> JobState | None:
    """Cancel the job if it has not started, or ask it to stop if it runs; its state after
    that (None: no such job)."""
    conn.execute(CANCEL_JOB, (now, job_id))
    row = conn.execute(JOB_STATE, (job_id,)).fetchone()
    if row is None:
        return None
    state = JobState(row[0])
    if can_stop(state) and conn.execute(REQUEST_STOP, (now, job_id)).rowcount:
        conn.execute(ADD_STOP_REQUEST, (job_id, now))
    return state


#: Earlier files kept item results in ``keyed`` (name, owner, key, job_id, value): their
#: worker moves them over when it opens the file.
MIGRATE_KEYED = (
    "INSERT OR IGNORE INTO item_results (k, job_id, value)"
    " SELECT length(name) || ':' || name || length(owner) || ':' || owner || key, job_id, value"
    " FROM keyed",
    "DROP TABLE keyed",
)


def migrate(conn: sqlite3.Connection) -> None:
    """Bring a file made by an earlier version to this schema."""
    statements: list[tuple[str, tuple[Any, ...]]] = []
    if conn.execute("SELECT 1 FROM sqlite_master WHERE name = 'keyed'").fetchone():
        statements += [(statement, ()) for statement in MIGRATE_KEYED]
    columns = {name for _, name, *_ in conn.execute("PRAGMA table_info(jobs)")}
    statements += [
        (f"ALTER TABLE jobs ADD COLUMN {name} {definition}", ())
        for name, definition in ADDED_COLUMNS
        if name not in columns
    ]
    if "interrupted" not in columns:
        # Earlier files said "cut off by a crash" with the error text alone.
        statements += [
            ("ALTER TABLE jobs ADD COLUMN interrupted INTEGER NOT NULL DEFAULT 0", ()),
            ("UPDATE jobs SET interrupted = 1 WHERE state = 'queued' AND error = ?",
             (INTERRUPTED,)),
        ]  # fmt: skip
    if statements:
        conn.execute("BEGIN IMMEDIATE")
        try:
            for statement, params in statements:
                conn.execute(statement, params)
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
    conn.executescript(OUTBOX)


def list_jobs_sql(
    *, owner: bool, states: int, succeeded: bool, name: bool, id_from: bool, id_below: bool
) -> str:
    """A page of jobs, newest first, for the filters given (``states`` of them, of which
    ``succeeded`` says whether one is succeeded); arguments and results are left out (a
    document needs neither). Every filter is a bound of one of the indexes, or a check on
    the few rows one of them yields."""
    where = []
    if owner:
        where.append("owner = ?")
    if states:
        where.append(f"state IN ({', '.join('?' * states)})")
        if not succeeded:  # SQLite uses the partial index only when it sees its condition
            where.append("state != 'succeeded'")
    if name:
        where.append("name = ?")
    if id_from:
        where.append("id >= ?")
    if id_below:
        where.append("id < ?")
    columns = ", ".join("NULL" if c in ("args", "result") else c for c in JobRow._fields)
    clause = f" WHERE {' AND '.join(where)}" if where else ""
    return f"SELECT {columns} FROM jobs{clause} ORDER BY id DESC LIMIT ?"
