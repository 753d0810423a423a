"""The SQLite shard store on its own: claims, cross-shard reads and writes, recovery, TTL."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from service.errors import StoreUnavailable
from service.ids import new_id
from service.jobs.record import BatchProgress, JobRecord
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


async def test_each_open_store_claims_its_own_shard(tmp_path: Path) -> None:
    """Two stores on one directory get shards 0 and 1; a closed shard is claimed again."""
    a, b = store(tmp_path), store(tmp_path)
    await a.open()
    await b.open()
    assert (a.slot, b.slot) == (0, 1)
    await a.close()
    c = store(tmp_path)
    await c.open()
    assert c.slot == 0
    await b.close()
    await c.close()


async def test_jobs_are_read_and_cancelled_across_shards(tmp_path: Path) -> None:
    """A job stored by one shard is read and cancelled through another."""
    a, b = store(tmp_path), store(tmp_path)
    await a.open()
    await b.open()
    job = record()
    await a.add(job)
    got = await b.get(job.id)
    assert got is not None
    assert got.args == {"x": 1}
    assert got.state is JobState.QUEUED
    assert await b.cancel(job.id, 2000.0) is JobState.CANCELLED
    assert await a.start(job.id, 2001.0) is False  # the owner sees the cancel and skips it
    final = await a.get(job.id)
    assert final is not None
    assert final.state is JobState.CANCELLED
    assert await b.cancel(new_id(), 1.0) is None
    await a.close()
    await b.close()


async def test_reopen_requeues_what_a_dead_process_left_running(tmp_path: Path) -> None:
    """Jobs left running go back to queued on the next open, with their attempts kept."""
    a = store(tmp_path)
    await a.open()
    running, queued, done = record(), record(), record()
    for job in (running, queued, done):
        await a.add(job)
    await a.start(running.id, 1.0)
    await a.start(done.id, 1.0)
    await a.finish(done, JobState.SUCCEEDED, 2.0, result={"ok": True}, error=None)
    await a.close()
    b = store(tmp_path)
    await b.open()
    left = {r.id: r for r in await b.unfinished()}
    assert set(left) == {running.id, queued.id}
    assert left[running.id].state is JobState.QUEUED
    assert left[running.id].attempts == 1
    assert "interrupted" in (left[running.id].error or "")
    await b.close()


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


async def test_items_are_stored_per_owner_and_newest_wins(tmp_path: Path) -> None:
    """Item results are found by (job name, owner, key); a newer job's item wins."""
    a = store(tmp_path)
    await a.open()
    now = time.time()
    old = record("parcel", items=[1], id=new_id(lambda: now - 1))
    new = record("parcel", items=[1], id=new_id(lambda: now))
    for job in (old, new):
        await a.add(job)
    await a.progress(new, BatchProgress(1, 0, [("p1", {"v": "new"})]))
    await a.progress(old, BatchProgress(1, 0, [("p1", {"v": "old"})]))  # late, but older
    assert await a.get_item("parcel", "alice", "p1") == {"v": "new"}
    assert await a.get_item("parcel", "bob", "p1") is None
    doc = await a.get(new.id)
    assert doc is not None
    assert (doc.done, doc.failed) == (1, 0)
    await a.close()


async def test_finished_jobs_expire_after_the_ttl(tmp_path: Path) -> None:
    """purge deletes jobs finished longer ago than the TTL, and only those."""
    a = store(tmp_path, ttl=100)
    await a.open()
    old, recent, queued = (record(id=new_id(lambda t=t: t)) for t in (900.0, 1800.0, 850.0))
    for job in (old, recent, queued):
        await a.add(job)
    await a.finish(old, JobState.SUCCEEDED, 1000.0, result=1, error=None)
    await a.finish(recent, JobState.SUCCEEDED, 1950.0, result=1, error=None)
    assert await a.purge(2000.0) == 1
    assert await a.get(old.id) is None
    assert await a.get(recent.id) is not None
    assert await a.get(queued.id) is not None
    await a.close()


async def test_keyed_results_expire_with_the_ttl(tmp_path: Path) -> None:
    """A keyed item older than the TTL is not served, and the sweep deletes it."""
    a = store(tmp_path, ttl=100)
    await a.open()
    old = record("parcel", id=new_id(lambda: 1000.0), items=[1])
    await a.add(old)
    await a.progress(old, BatchProgress(1, 0, [("p1", {"v": 1})]))
    assert await a.get_item("parcel", "alice", "p1") is None
    await a.purge(5000.0)
    assert a._conn is not None
    assert a._conn.execute("SELECT count(*) FROM keyed").fetchone() == (0,)
    await a.close()


async def test_a_result_over_the_cap_fails_the_job(tmp_path: Path) -> None:
    """A result larger than JOBPOOL_RESULT_MAX is not stored; the job fails saying why."""
    a = store(tmp_path, result_max=1000)
    await a.open()
    job = record()
    await a.add(job)
    await a.start(job.id, 1.0)
    await a.finish(job, JobState.SUCCEEDED, 2.0, result=b"x" * 5000, error=None)
    got = await a.get(job.id)
    assert got is not None
    assert got.state is JobState.FAILED
    assert "JOBPOOL_RESULT_MAX" in (got.error or "")
    await a.close()


async def test_unusable_directory_is_a_clear_error(tmp_path: Path) -> None:
    """Opening a store where the directory cannot be made raises StoreUnavailable naming it."""
    blocker = tmp_path / "file"
    blocker.write_bytes(b"in the way")
    with pytest.raises(StoreUnavailable, match="cannot open the job store"):
        await store(blocker / "state").open()


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
