"""What only the Redis store does: a queue shared by hosts, leases, and Redis going away."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from service.config import StoreUrl
from service.errors import Overloaded, StoreUnavailable, TooManyJobs
from service.jobs.redis.store import RedisStore
from service.jobs.registry import POOLS
from service.jobs.state import JobState
from tests.redis_server import RedisServer
from tests.test_store import ROOM, lane_of, record

LEASE_S = 0.4


def make(url: str, tmp_path: Path, host: str = "a", **kw: Any) -> RedisStore:
    options: dict[str, Any] = {
        "lane_of": lane_of,
        "pools": POOLS,
        "result_ttl_s": 60,
        "result_max": 1 << 20,
        "lease_s": LEASE_S,
        "queue_max": 1000,
    }
    options.update(kw)
    return RedisStore(StoreUrl("redis", url), state_dir=tmp_path / host, **options)


async def opened(url: str, tmp_path: Path, host: str = "a", **kw: Any) -> RedisStore:
    store = make(url, tmp_path, host, **kw)
    await store.open()
    return store


def silence(store: RedisStore) -> None:
    """Stop renewing the store's leases, as a host that froze or died would."""
    assert store._renewer is not None
    store._renewer.cancel()


async def test_queued_jobs_are_claimed_oldest_first_by_room_per_pool(
    redis_url: str, tmp_path: Path
) -> None:
    """Any host claims queued jobs, oldest first, no more per pool than it has room for."""
    a, b = await opened(redis_url, tmp_path, "a"), await opened(redis_url, tmp_path, "b")
    io_jobs = [record() for _ in range(3)]
    cpu_jobs = [record("cpu.spin") for _ in range(2)]
    for job in (*io_jobs, *cpu_jobs):
        assert await a.add(job) is JobState.QUEUED
    first = await b.claim({"io": 2, "cpu": 1}, 5.0)
    assert [r.id for r in first] == [io_jobs[0].id, io_jobs[1].id, cpu_jobs[0].id]
    assert all((r.state, r.attempts, r.started_at) == (JobState.RUNNING, 1, 5.0) for r in first)
    rest = await a.claim(ROOM, 6.0)
    assert [r.id for r in rest] == [io_jobs[2].id, cpu_jobs[1].id]
    assert await b.claim(ROOM, 7.0) == []
    await a.close()
    await b.close()


async def test_a_new_job_does_not_overtake_older_queued_ones(
    redis_url: str, tmp_path: Path
) -> None:
    """Offered running while older jobs of its pool wait, a job is stored queued behind them."""
    a = await opened(redis_url, tmp_path)
    older = record()
    await a.add(older)
    now = time.time()
    newer = record(state=JobState.RUNNING, started_at=now, attempts=1)
    assert await a.add(newer) is JobState.QUEUED
    cpu = record("cpu.spin", state=JobState.RUNNING, started_at=now, attempts=1)
    assert await a.add(cpu) is JobState.RUNNING  # the cpu queue is empty
    assert [r.id for r in await a.claim(ROOM, now)] == [older.id, newer.id]
    await a.close()


async def test_a_full_fleet_queue_refuses_without_storing(redis_url: str, tmp_path: Path) -> None:
    """Past JOBPOOL_FLEET_QUEUE_MAX waiting jobs, add() raises Overloaded and stores nothing."""
    a = await opened(redis_url, tmp_path, queue_max=2)
    for _ in range(2):
        await a.add(record())
    refused = record()
    with pytest.raises(Overloaded, match="JOBPOOL_FLEET_QUEUE_MAX"):
        await a.add(refused)
    assert await a.get(refused.id) is None
    assert await a.add(record("cpu.spin")) is JobState.QUEUED  # each pool has its own bound
    await a.close()


async def test_a_host_that_stops_renewing_loses_its_jobs_to_a_live_one(
    redis_url: str, tmp_path: Path
) -> None:
    """Running jobs whose lease runs out go back to the queue once, counted as attempts."""
    a, b = await opened(redis_url, tmp_path, "a"), await opened(redis_url, tmp_path, "b")
    job = record()
    await a.add(job)
    [mine] = await a.claim(ROOM, 1.0)
    await asyncio.sleep(LEASE_S * 3)
    assert await b.adopt_orphans() == []  # a renews: its job stays its own
    assert await b.claim(ROOM, 2.0) == []
    silence(a)
    await asyncio.sleep(LEASE_S * 1.5)
    await b.adopt_orphans()
    got = await b.get(job.id)
    assert got is not None
    assert (got.state, got.attempts, got.interrupted) == (JobState.QUEUED, 1, True)
    assert "interrupted" in (got.error or "")
    [again] = await b.claim(ROOM, 3.0)
    assert again.interrupted  # the claim hands it over marked: it runs alone
    assert (again.id, again.attempts) == (job.id, 2)
    await b.adopt_orphans()
    assert await b.claim(ROOM, 4.0) == []  # taken over exactly once
    await a.requeue(job.id, error="late")  # a no longer holds it: nothing changes
    now = await b.get(job.id)
    assert now is not None
    assert (now.state, now.attempts) == (JobState.RUNNING, 2)
    await a.finish(mine, JobState.SUCCEEDED, 5.0, result="from a", error=None)
    await b.finish(again, JobState.SUCCEEDED, 6.0, result="from b", error=None)
    final = await b.get(job.id)
    assert final is not None
    assert (final.state, final.result) == (JobState.SUCCEEDED, "from a")  # first end wins
    await a.close()
    await b.close()


async def test_renewal_notices_a_lease_that_was_taken_over(
    redis_url: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A worker whose lease was taken over stops renewing it and says so in its log."""
    a, b = await opened(redis_url, tmp_path, "a"), await opened(redis_url, tmp_path, "b")
    job = record()
    await a.add(job)
    await a.claim(ROOM, 1.0)
    silence(a)
    await asyncio.sleep(LEASE_S * 1.5)
    await b.adopt_orphans()
    assert [r.id for r in await b.claim(ROOM, 2.0)] == [job.id]
    a._renewer = asyncio.create_task(a._renew_loop())
    with caplog.at_level(logging.WARNING, logger="service.jobs.redis.store"):
        for _ in range(50):
            if job.id not in a._held:
                break
            await asyncio.sleep(LEASE_S / 4)
    assert job.id not in a._held
    assert "lease was taken over" in caplog.text
    assert job.id in b._held
    await a.close()
    await b.close()


async def test_a_replacement_worker_takes_back_its_slot_at_once(
    redis_url: str, tmp_path: Path
) -> None:
    """The next worker on the same host and slot requeues what its predecessor ran, at once."""
    a = await opened(redis_url, tmp_path, lease_s=3600)
    job = record()
    await a.add(job)
    await a.claim(ROOM, 1.0)
    consumer = a.consumer
    await a.close()  # killed: nothing handed back, and the lease is an hour
    b = await opened(redis_url, tmp_path, lease_s=3600)
    assert b.consumer == consumer
    assert await b.unfinished() == []
    [again] = await b.claim(ROOM, 2.0)
    assert (again.id, again.attempts) == (job.id, 2)
    await b.close()


async def test_an_entry_read_but_never_handled_is_put_back(redis_url: str, tmp_path: Path) -> None:
    """A queue entry someone read and never acknowledged goes back after the lease."""
    a = await opened(redis_url, tmp_path)
    job = record()
    await a.add(job)
    assert a._client is not None
    await a._client.xgroup_create("jobpool:queue:io", "jobpool", "0")
    await a._client.execute_command(
        "XREADGROUP", "GROUP", "jobpool", "ghost", "COUNT", 1, "STREAMS", "jobpool:queue:io", ">"
    )
    assert await a.claim(ROOM, 1.0) == []
    await asyncio.sleep(LEASE_S * 1.5)
    await a.adopt_orphans()
    assert [r.id for r in await a.claim(ROOM, 2.0)] == [job.id]
    await a.close()


async def test_idle_consumers_with_nothing_pending_are_forgotten(
    redis_url: str, tmp_path: Path
) -> None:
    """Workers of hosts long gone do not pile up in the consumer groups."""
    a = await opened(redis_url, tmp_path, lease_s=0.05)
    assert a._client is not None
    await a.adopt_orphans()  # makes the group
    await a._client.execute_command("XGROUP", "CREATECONSUMER", "jobpool:running", "jobpool", "x")
    await asyncio.sleep(0.6)
    await a.adopt_orphans()
    names = [c[b"name"] for c in await a._client.xinfo_consumers("jobpool:running", "jobpool")]
    assert b"x" not in names
    await a.close()


async def test_scripts_are_loaded_again_after_redis_forgets_them(
    redis_url: str, tmp_path: Path
) -> None:
    """After SCRIPT FLUSH (as after a restart) every call still works."""
    a = await opened(redis_url, tmp_path)
    assert a._client is not None
    await a._client.script_flush()
    job = record()
    assert await a.add(job) is JobState.QUEUED
    assert await a.cancel(job.id, 2.0) is JobState.CANCELLED
    await a.close()


async def test_redis_down_means_errors_not_hangs_and_back_means_service(
    redis_factory: Callable[[], RedisServer], tmp_path: Path
) -> None:
    """With Redis stopped every call raises StoreUnavailable; after a restart all works."""
    srv = redis_factory()
    a = await opened(srv.url, tmp_path)
    kept = record()
    await a.add(kept)
    srv.stop()
    for call in (a.add(record()), a.get(kept.id), a.ping(), a.claim(ROOM, 1.0)):
        with pytest.raises(StoreUnavailable, match="unreachable"):
            await call
    srv.start()
    await a.ping()
    got = await a.get(kept.id)  # written before the stop: kept (append-only file)
    assert got is not None
    assert got.state is JobState.QUEUED
    assert await a.add(record()) is JobState.QUEUED
    await a.close()


async def test_a_worker_starts_while_redis_is_down(
    redis_factory: Callable[[], RedisServer], tmp_path: Path
) -> None:
    """open() succeeds without Redis (readiness fails); the store works once Redis is up."""
    srv = redis_factory()
    srv.stop()
    a = await opened(srv.url, tmp_path)
    with pytest.raises(StoreUnavailable):
        await a.ping()
    assert await a.unfinished() == []  # postponed, not fatal
    srv.start()
    await a.ping()
    assert await a.add(record()) is JobState.QUEUED
    await a.close()


# -- jobs in flight per client, counted by the scripts that change job states ---------


async def test_the_cap_counts_queued_and_running_jobs_of_every_host(
    redis_url: str, tmp_path: Path
) -> None:
    """3 in flight anywhere, queued or running: the 4th is refused on any host, unstored."""
    a = await opened(redis_url, tmp_path, "a", client_max_inflight=3)
    b = await opened(redis_url, tmp_path, "b", client_max_inflight=3)
    now = time.time()
    await a.add(record(state=JobState.RUNNING, started_at=now, attempts=1))
    await a.add(record())
    await b.add(record())
    assert await a.inflight("alice") == 3
    for store in (a, b):
        refused = record()
        with pytest.raises(TooManyJobs, match="JOBPOOL_CLIENT_MAX_INFLIGHT"):
            await store.add(refused)
        assert await store.get(refused.id) is None
    assert await b.add(record(owner="bob")) is JobState.QUEUED
    assert (await b.inflight("alice"), await b.inflight("bob")) == (3, 1)
    await a.close()
    await b.close()


async def test_jobs_stop_counting_exactly_when_they_end(redis_url: str, tmp_path: Path) -> None:
    """Claims, requeues and retried adds leave the count; finish and cancel take one off once."""
    a = await opened(redis_url, tmp_path, client_max_inflight=10)
    jobs = [record() for _ in range(4)]
    for job in jobs:
        await a.add(job)
    assert await a.add(jobs[0]) is JobState.QUEUED  # a retried add stores and counts nothing
    claimed = await a.claim({"io": 2, "cpu": 0}, 1.0)
    await a.requeue(claimed[1].id, error=None)
    assert await a.inflight("alice") == 4
    await a.finish(claimed[0], JobState.SUCCEEDED, 2.0, result=1, error=None)
    await a.finish(claimed[0], JobState.FAILED, 3.0, error="a second end")  # changes nothing
    assert await a.cancel(jobs[3].id, 4.0) is JobState.CANCELLED
    assert await a.cancel(jobs[3].id, 5.0) is JobState.CANCELLED
    assert await a.inflight("alice") == 2
    for job in await a.claim(ROOM, 6.0):
        await a.finish(job, JobState.FAILED, 7.0, error="boom")
    assert await a.inflight("alice") == 0
    assert a._client is not None
    assert await a._client.hlen("jobpool:inflight") == 0  # no field left per past client
    assert await a.purge(time.time() + 3600) == 4  # purging final jobs changes nothing
    assert await a.inflight("alice") == 0
    await a.close()


async def test_jobs_of_a_dead_host_count_once_until_the_host_that_takes_them_ends_them(
    redis_url: str, tmp_path: Path
) -> None:
    """A host that stops renewing keeps its jobs counted; taken over, they count once; ended,
    they count no more."""
    a = await opened(redis_url, tmp_path, "a", client_max_inflight=2)
    b = await opened(redis_url, tmp_path, "b", client_max_inflight=2)
    now = time.time()
    jobs = [record(state=JobState.RUNNING, started_at=now, attempts=1) for _ in range(2)]
    for job in jobs:
        assert await a.add(job) is JobState.RUNNING
    silence(a)  # a dies with both
    with pytest.raises(TooManyJobs):
        await b.add(record())
    await asyncio.sleep(LEASE_S * 1.5)
    await b.adopt_orphans()
    taken = await b.claim(ROOM, now + 1)
    assert sorted(r.id for r in taken) == sorted(j.id for j in jobs)
    assert await b.inflight("alice") == 2
    with pytest.raises(TooManyJobs):
        await b.add(record())
    for job in taken:
        await b.finish(job, JobState.SUCCEEDED, now + 2, result=None, error=None)
    assert await b.inflight("alice") == 0
    assert await b.add(record()) is JobState.QUEUED
    await a.close()
    await b.close()


async def test_a_count_that_drifted_is_made_exact_again_by_a_recount(
    redis_url: str, tmp_path: Path
) -> None:
    """Counts a worker of an older version left wrong (no count on add, none taken off at the
    end) are replaced by the jobs the streams hold, once per interval in the fleet."""
    a = await opened(redis_url, tmp_path, client_max_inflight=3)
    assert a._client is not None
    now = time.time()
    await a.add(record(state=JobState.RUNNING, started_at=now, attempts=1))
    await a.add(record())
    await a.add(record(owner="bob"))
    await a.add(record("cpu.spin", owner="bob"))
    done = record()
    await a.add(done)
    await a.cancel(done.id, now)
    await a._client.hset("jobpool:inflight", mapping={"alice": 7, "carol": 2})  # drifted
    with pytest.raises(TooManyJobs):
        await a.add(record())
    assert await a.recount(every_s=3600) == 4
    assert await a._client.hgetall("jobpool:inflight") == {b"alice": b"2", b"bob": b"2"}
    assert await a.add(record()) is JobState.QUEUED
    await a._client.hdel("jobpool:inflight", "alice")
    assert await a.purge(now) == 0
    assert await a.inflight("alice") == 0  # recounted within the hour: not again yet
    await a._client.delete("jobpool:recounted")
    assert await a.purge(now) == 0
    assert await a.inflight("alice") == 3
    await a.close()
