"""How a job and its item results are stored in a shard's rows, and read back as records.

Why large arguments and results live apart: SQLite rewrites a whole row when any column
changes. Over ``INLINE_MAX`` bytes a payload is a file (:mod:`.payloads`), written once,
and the row holds the ``APART`` marker in its place; reading a job for the API never reads
its arguments.
"""

from __future__ import annotations

import pickle
import sqlite3
import time
from typing import Any

from service.jobs.record import (
    BatchProgress,
    ItemRef,
    JobRecord,
    decode_attempts,
    decode_progress,
)
from service.jobs.sqlite.payloads import PayloadFiles, PayloadMissing
from service.jobs.sqlite.schema import FAIL_JOB, JobRow, item_key
from service.jobs.state import JobState

#: Pickled arguments or results larger than this are kept in payload files, not the row.
INLINE_MAX = 8192
#: Stands in the job row for a payload file (a pickle is never empty).
APART = b""


def dumps(value: Any) -> bytes:
    return pickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL)


def record_of(
    row: JobRow, files: PayloadFiles, *, args: bool = True, result: bytes | None = None
) -> JobRecord:
    """The record a row holds; ``args=False`` leaves them unread, ``result`` is the
    result's payload when the caller read it from its file already."""
    job_id, args_blob, result_blob = row.id, row.args, row.result
    args_apart = args and args_blob == APART
    result_apart = result_blob == APART
    if result_apart:
        result_blob = result if result is not None else files.get(job_id, "result")
    if args_apart:
        args_blob = files.get(job_id, "args")
    return JobRecord(
        id=job_id,
        name=row.name,
        owner=row.owner,
        state=JobState(row.state),
        created_at=row.created_at,
        started_at=row.started_at,
        finished_at=row.finished_at,
        attempts=row.attempts,
        error=row.error,
        interrupted=bool(row.interrupted),
        args=_loads(args_blob, job_id, "args", args_apart) if args else {},
        items=None if row.items is None else pickle.loads(row.items),
        done=row.done,
        failed=row.failed,
        result=None if result_blob is None else _loads(result_blob, job_id, "result", result_apart),
        not_before=row.not_before,
        interruptions=row.interruptions,
        failed_attempts=decode_attempts(row.failed_attempts),
        cancel_requested_at=row.cancel_requested_at,
        cancelled_how=row.cancelled_how,  # type: ignore[arg-type]  # only values we wrote
        progress=decode_progress(row.progress),
        callback=row.callback,
        traceparent=row.traceparent,
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


def runnable(conn: sqlite3.Connection, rows: list[JobRow], files: PayloadFiles) -> list[JobRecord]:
    """The records of unfinished rows; a job whose arguments file is gone fails here."""
    records = []
    for row in rows:
        try:
            records.append(record_of(row, files))
        except PayloadMissing as ex:
            conn.execute(FAIL_JOB, (time.time(), str(ex), row.id))
    return records


def item_rows(record: JobRecord, progress: BatchProgress) -> list[Any]:
    """The item results of ``progress`` as upsert parameters, flat: k, job_id, value for
    each; an :class:`ItemRef` is stored as the item's index, not a second copy."""
    prefix, job_id = item_key(record.name, record.owner, ""), record.id
    flat: list[Any] = []
    for key, value in progress.keyed:
        flat += (prefix + key, job_id, value.index if type(value) is ItemRef else dumps(value))
    return flat
