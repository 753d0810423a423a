"""What only the SQLite store does: orphan shards, a write the file refuses, its files.

The behaviour both stores share is tested on both in test_store.py.
"""

from __future__ import annotations

import asyncio
import os
import pickle
import sqlite3
import time
from pathlib import Path

import pytest

from service.errors import StoreUnavailable
from service.ids import new_id
from service.jobs.record import BatchProgress, ItemRef
from service.jobs.sqlite.schema import SCHEMA, JobRow, item_key
from service.jobs.sqlite.store import SqliteStore
from service.jobs.state import JobState
from service.jobs.store import INTERRUPTED
from tests.test_store import record


def store(path: Path, ttl: float = 60, result_max: int = 1 << 20) -> SqliteStore:
    return SqliteStore(path, result_ttl_s=ttl, result_max=result_max)


async def test_orphan_shards_are_adopted_once(tmp_path: Path) -> None:
    """Unfinished jobs of a shard nobody holds move to a live shard, exactly once."""
    a, b = store(tmp_path), store(tmp_path)
    await a.open()
    await b.open()
    jobs = [record() for _ in range(3)]
    for job in jobs:
        await b.add(job)
    await b.start(jobs[0].id, 1.0)
    assert await a.adopt_orphans() == []  # b is alive: nothing to take
    await b.close()
    adopted = await a.adopt_orphans()
    assert sorted(r.id for r in adopted) == sorted(j.id for j in jobs)
    assert all(r.state is JobState.QUEUED for r in adopted)
    assert await a.adopt_orphans() == []
    assert {r.id for r in await a.unfinished()} == {j.id for j in jobs}
    await a.close()


async def test_a_failed_write_is_never_acknowledged(tmp_path: Path) -> None:
    """When the database refuses a write, add() raises StoreUnavailable instead of returning."""
    a = store(tmp_path)
    await a.open()
    assert a._conn is not None
    a._conn.execute("PRAGMA query_only = ON")  # the file refuses writes, as a full disk would
    with pytest.raises(StoreUnavailable, match="cannot write"):
        await a.add(record())
    a._conn.execute("PRAGMA query_only = OFF")
    await a.add(record())
    await a.close()


def payload_files(s: SqliteStore) -> list[str]:
    return sorted(p.name for p in s.files.directory.iterdir())


async def test_a_large_payload_is_written_once(tmp_path: Path) -> None:
    """Starting and ending a job with a 2 MB argument adds little to the WAL: the argument
    is a file, not copied again with every change of the job's state. Once the job is final
    its argument is dropped; its result goes when the job expires."""
    a = store(tmp_path, ttl=100)
    await a.open()
    job = record(id=new_id(lambda: 900.0), args={"data": os.urandom(2 << 20)})
    wal = tmp_path / "jobs-0.db-wal"
    schema = wal.stat().st_size  # the tables and indexes made at open
    await a.add(job)
    written = wal.stat().st_size
    assert written - schema < 64 << 10
    assert payload_files(a) == [f"{job.id}.args"]
    assert await a.start(job.id, 950.0)
    result = {"data": os.urandom(900_000)}
    await a.finish(job, JobState.SUCCEEDED, 1000.0, result=result, error=None)
    assert wal.stat().st_size - written < 64 << 10
    assert payload_files(a) == [f"{job.id}.result"]
    got = await a.get(job.id)
    assert got is not None
    assert got.result == result
    assert await a.purge(2000.0) == 1
    assert payload_files(a) == []
    await a.close()


async def test_lost_payload_files_fail_their_jobs_not_the_store(tmp_path: Path) -> None:
    """A file never committed with its row is swept once old; a row whose file is gone
    (a power cut before the checkpoint) is reported, and such a job fails, not the store."""
    a = store(tmp_path, ttl=100)
    await a.open()
    stray = new_id(lambda: 800.0)
    a.files.put(stray, "args", b"partial")
    job = record(id=new_id(lambda: 850.0), args={"data": os.urandom(100_000)})
    await a.add(job)
    await a.purge(2000.0)
    assert payload_files(a) == [f"{job.id}.args"]  # the stray one is gone, the queued kept
    await a.start(job.id, 1900.0)
    await a.finish(job, JobState.SUCCEEDED, 1950.0, result=os.urandom(50_000), error=None)
    a.files.path(job.id, "result").unlink()
    lost_result = await a.get(job.id)
    assert lost_result is not None
    assert (lost_result.state, lost_result.result) == (JobState.FAILED, None)
    assert "its result file is missing" in (lost_result.error or "")
    lost, cut, kept = (record(args={"data": os.urandom(100_000)}) for _ in range(3))
    for job in (lost, cut, kept):
        await a.add(job)
    a.files.path(lost.id, "args").unlink()
    with a.files.path(cut.id, "args").open("r+b") as f:
        f.truncate(1000)  # written, but not all of it reached the disk
    await a.close()
    b = store(tmp_path, ttl=100)
    await b.open()
    assert [r.id for r in await b.unfinished()] == [kept.id]
    for job, why in ((lost, "missing"), (cut, "damaged")):
        failed = await b.get(job.id)
        assert failed is not None
        assert failed.state is JobState.FAILED
        assert why in (failed.error or "")
    await b.close()


async def test_an_adopted_job_keeps_its_large_arguments(tmp_path: Path) -> None:
    """A job moved from an orphan shard keeps its payload file."""
    a, b = store(tmp_path), store(tmp_path)
    await a.open()
    await b.open()
    job = record(args={"data": os.urandom(100_000)})
    await b.add(job)
    await b.close()
    (adopted,) = await a.adopt_orphans()
    assert adopted.args == job.args
    assert [r.args for r in await a.unfinished()] == [job.args]
    await a.close()


async def test_an_item_kept_as_itself_reads_after_its_job_moved(tmp_path: Path) -> None:
    """An ItemRef stores the item's index, no second copy; the key still reads the job's
    item after the unfinished job moved to another shard."""
    items = [{"id": "p0", "data": "zero"}, {"id": "p1", "data": "one"}]
    a, b = store(tmp_path), store(tmp_path)
    await a.open()
    await b.open()
    job = record("parcel", items=items, state=JobState.RUNNING)
    await a.add(job)
    await a.progress(job, BatchProgress(1, 0, [("p1", ItemRef(1))]))
    assert a._conn is not None
    assert a._conn.execute("SELECT value FROM item_results").fetchall() == [(1,)]
    assert await b.get_item("parcel", "alice", "p1") == items[1]
    await a.close()  # the job is still running: b adopts it, and the item still reads
    assert [r.id for r in await b.adopt_orphans()] == [job.id]
    assert await b.get_item("parcel", "alice", "p1") == items[1]
    await b.finish(job, JobState.SUCCEEDED, 9.0, error=None,
                   progress=BatchProgress(2, 0, [("p0", ItemRef(0))]))  # fmt: skip
    assert await b.get_item("parcel", "alice", "p0") == items[0]
    await b.close()


async def test_a_file_from_before_item_results_is_migrated(tmp_path: Path) -> None:
    """A shard whose item results are in the old keyed table opens with them moved over,
    and reads through another store before that (its worker has not opened it yet)."""
    path = tmp_path / "jobs-1.db"
    old = sqlite3.connect(path)
    old.executescript(
        SCHEMA.split("CREATE TABLE IF NOT EXISTS item_results")[0]
        + "CREATE TABLE keyed (name TEXT NOT NULL, owner TEXT NOT NULL, key TEXT NOT NULL,"
        " job_id TEXT NOT NULL, value BLOB NOT NULL, PRIMARY KEY (name, owner, key))"
        " WITHOUT ROWID;"
    )
    job = record("parcel", items=["x"])
    old.execute(
        "INSERT INTO keyed (name, owner, key, job_id, value) VALUES (?, ?, ?, ?, ?)",
        ("parcel", "alice", "old", job.id, pickle.dumps({"v": "old"})),
    )
    old.commit()
    old.close()
    a = store(tmp_path)
    await a.open()  # shard 0; shard 1 is the old file
    assert await a.get_item("parcel", "alice", "old") == {"v": "old"}
    b = store(tmp_path)
    await b.open()  # claims the old file: its results move to the new table
    assert b.slot == 1
    assert b._conn is not None
    assert b._conn.execute("SELECT name FROM sqlite_master WHERE name = 'keyed'").fetchall() == []
    assert await a.get_item("parcel", "alice", "old") == {"v": "old"}
    assert await b.get_item("parcel", "alice", "old") == {"v": "old"}
    assert await b.get_item("parcel", "bob", "old") is None
    await b.add(job)
    await b.progress(job, BatchProgress(1, 0, [("new", ItemRef(0))]))
    assert await a.get_item("parcel", "alice", "new") == "x"
    await a.close()
    await b.close()


async def test_a_job_a_crash_cut_off_in_an_earlier_file_stays_marked(tmp_path: Path) -> None:
    """A shard from before the interrupted column keeps a crash-cut job marked as such,
    whether its own worker opens it or another adopts it."""
    old_schema = SCHEMA.replace(
        SCHEMA[SCHEMA.index("    -- 1 while") : SCHEMA.index("    args BLOB")], ""
    )
    assert "interrupted" not in old_schema
    jobs = {}
    for shard in (0, 1):
        conn = sqlite3.connect(tmp_path / f"jobs-{shard}.db")
        conn.executescript(old_schema)
        cut, plain = record(), record()
        for job, error in ((cut, INTERRUPTED), (plain, "interrupted by shutdown")):
            conn.execute(
                "INSERT INTO jobs (id, name, owner, state, created_at, attempts, error, args)"
                " VALUES (?, ?, ?, 'queued', ?, 1, ?, ?)",
                (job.id, job.name, job.owner, job.created_at, error, pickle.dumps({})),
            )
        conn.commit()
        conn.close()
        jobs[shard] = (cut.id, plain.id)
    a = store(tmp_path)
    await a.open()  # shard 0, migrated at open
    assert a.slot == 0
    mine = {r.id: r.interrupted for r in await a.unfinished()}
    assert mine == {jobs[0][0]: True, jobs[0][1]: False}
    adopted = {r.id: r.interrupted for r in await a.adopt_orphans()}  # shard 1, unclaimed
    assert adopted == {jobs[1][0]: True, jobs[1][1]: False}
    await a.close()


def test_the_job_row_names_every_column_of_the_jobs_table() -> None:
    """JobRow has a field for each column of ``jobs`` (an adopted job is copied whole)."""
    conn = sqlite3.connect(":memory:")
    conn.executescript(SCHEMA)
    columns = [name for _, name, *_ in conn.execute("PRAGMA table_info(jobs)")]
    conn.close()
    assert sorted(JobRow._fields) == sorted(columns)


def test_item_keys_are_distinct_whatever_the_names_hold() -> None:
    """(name, owner, key) to one text key is one to one, separators in the parts or not."""
    parts = ["", "a", "1:a", "a1:", "9:anonymous", ":", "\x00"]
    keys = {(n, o, k): item_key(n, o, k) for n in parts for o in parts for k in parts}
    assert len(set(keys.values())) == len(keys)


async def test_a_failed_write_fails_every_write_of_its_transaction(tmp_path: Path) -> None:
    """Adds and ends grouped in one transaction all raise when it cannot commit."""
    a = store(tmp_path)
    await a.open()
    running = record()
    await a.add(running)
    assert a._conn is not None
    a._conn.execute("PRAGMA query_only = ON")
    outcomes = await asyncio.gather(
        a.add(record()),
        a.add(record()),
        a.finish(running, JobState.SUCCEEDED, 2.0, result=1, error=None),
        return_exceptions=True,
    )
    assert all(isinstance(o, StoreUnavailable) for o in outcomes), outcomes
    a._conn.execute("PRAGMA query_only = OFF")
    got = await a.get(running.id)
    assert got is not None
    assert got.state is JobState.QUEUED
    await a.close()


async def test_item_results_of_any_count_are_written_whole_and_in_order(tmp_path: Path) -> None:
    """A transaction's item results go in as multi-row statements: every count of them is
    written, and for a key written twice the later write of the newer job stands."""
    a = store(tmp_path)
    await a.open()
    now = time.time()
    old = record("parcel", items=[0], id=new_id(lambda: now - 1))
    new = record("parcel", items=[0], id=new_id(lambda: now))
    for job in (old, new):
        await a.add(job)
    for count in (1, 2, 3, 7, 41, 128, 300):
        keyed = [(f"{count}-{i}", i) for i in range(count)] + [(f"{count}-0", "again")]
        await asyncio.gather(
            a.progress(new, BatchProgress(count, 0, keyed)),
            a.progress(old, BatchProgress(count, 0, [(f"{count}-1", "older")])),
        )
        assert await a.get_item("parcel", "alice", f"{count}-0") == "again"
        for i in range(1, count):
            assert await a.get_item("parcel", "alice", f"{count}-{i}") == i
    await a.close()


async def test_payload_cap_refuses_new_arguments_never_an_accepted_result(
    tmp_path: Path,
) -> None:
    """Past JOBPOOL_PAYLOAD_MAX_BYTES a job with large arguments is refused before anything
    is stored; the result of a job already accepted is still written."""
    a = SqliteStore(tmp_path, result_ttl_s=60, result_max=1 << 20, payload_max_bytes=250_000)
    await a.open()
    first = record(args={"data": os.urandom(200_000)})
    await a.add(first)
    refused = record(args={"data": os.urandom(100_000)})
    with pytest.raises(StoreUnavailable, match="JOBPOOL_PAYLOAD_MAX_BYTES"):
        await a.add(refused)
    assert await a.get(refused.id) is None
    await a.add(record(args={"x": 1}))  # small arguments stay in the row: no cap
    assert await a.start(first.id, 2.0)
    output = os.urandom(300_000)
    await a.finish(first, JobState.SUCCEEDED, 3.0, result=output, error=None)
    got = await a.get(first.id)
    assert got is not None
    assert got.result == output
    await a.close()
