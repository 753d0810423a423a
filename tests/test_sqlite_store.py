"""What only the SQLite store does: orphan shards, a write the file refuses.

The behaviour both stores share is tested on both in test_store.py.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from service.errors import StoreUnavailable
from service.ids import new_id
from service.jobs.record import JobRecord
from service.jobs.sqlite_store import SqliteStore
from service.jobs.state import JobState


def record(name: str = "test.echo", **kw: object) -> JobRecord:
    base: dict[str, object] = {
        "id": new_id(),
        "name": name,
        "owner": "alice",
        "state": JobState.QUEUED,
        "created_at": 1000.0,
        "args": {"x": 1},
    }
    base.update(kw)
    return JobRecord(**base)  # type: ignore[arg-type]


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
    await a.add(job)
    wal = tmp_path / "jobs-0.db-wal"
    written = wal.stat().st_size
    assert written < 64 << 10
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
    with pytest.raises(StoreUnavailable, match="missing"):
        await a.get(job.id)
    lost, kept = record(args={"data": os.urandom(100_000)}), record()
    await a.add(lost)
    await a.add(kept)
    a.files.path(lost.id, "args").unlink()
    await a.close()
    b = store(tmp_path, ttl=100)
    await b.open()
    assert [r.id for r in await b.unfinished()] == [kept.id]
    failed = await b.get(lost.id)
    assert failed is not None
    assert failed.state is JobState.FAILED
    assert "missing" in (failed.error or "")
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
