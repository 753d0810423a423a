"""Fleet mode in-process: two apps ("hosts", each its own state dir) sharing one Redis."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path
from typing import Any

import redis.asyncio
from falcon import testing

from service.app import create_app
from service.config import Settings, StoreUrl
from service.jobs.redis.store import RedisStore
from service.jobs.registry import POOLS
from service.jobs.state import JobState
from service.keys import env_entries
from tests.clients import ALICE, API_KEYS, BOB, bearer
from tests.conftest import SEED_BATCH
from tests.extension import extend
from tests.test_inprocess import final
from tests.test_store import ROOM, record


@asynccontextmanager
async def hosts(
    tmp_path: Path, url: str, *names: str, **overrides: Any
) -> AsyncIterator[list[testing.ASGIConductor]]:
    """One in-process app per name, each with its own state directory, one Redis for all."""
    async with AsyncExitStack() as stack:
        apps = []
        for name in names:
            base: dict[str, Any] = {
                "state_dir": tmp_path / name,
                "store_url": StoreUrl("redis", url),
                "cpu_workers": 1,
                "io_threads": 2,
                "janitor_interval_s": 1,
                "lease_s": 2,
                "api_keys": env_entries(API_KEYS),
            }
            base.update(overrides)
            app = create_app(Settings.from_env({}, **base), extend=extend)
            conductor = testing.ASGIConductor(app, headers=bearer(ALICE))
            apps.append(await stack.enter_async_context(conductor))
        yield apps


async def ghost_worker(redis_url: str, tmp_path: Path) -> RedisStore:
    """A worker whose host is dead: its store takes jobs but never renews their leases."""
    ghost = RedisStore(
        StoreUrl("redis", redis_url), state_dir=tmp_path / "ghost",
        lane_of=lambda _name: "io", pools=POOLS, result_ttl_s=60, result_max=1 << 20,
        lease_s=0.2, queue_max=100,
    )  # fmt: skip
    await ghost.open()
    assert ghost._renewer is not None
    ghost._renewer.cancel()
    return ghost


async def submit(c: testing.ASGIConductor, seconds: float, **kw: Any) -> dict[str, Any]:
    r = await c.simulate_post("/test/jobs/test.sleep", json={"seconds": seconds, **kw})
    assert r.status_code == 202, r.text
    body: dict[str, Any] = r.json
    return body


async def test_the_seed_batch_runs_on_redis(redis_url: str, tmp_path: Path) -> None:
    """The seed batch is accepted, runs, and each parcel reads back, with the Redis store."""
    async with hosts(tmp_path, redis_url, "a") as (a,):
        r = await a.simulate_post("/v1/parcels", json=SEED_BATCH)
        assert r.status_code == 202
        assert r.json["state"] == "succeeded"  # run inline: stored ended, one write
        doc = await final(a, r.json["job"])
        assert doc["state"] == "succeeded"
        assert doc["items"] == {"total": 9, "done": 9, "failed": 0}
        for item in SEED_BATCH["Data"]:
            assert (await a.simulate_get(f"/v1/parcels/{item['id']}")).json == item
        ready = await a.simulate_get("/readyz")
        assert ready.json == {"ok": ["store", "accepting"], "failing": {}}


async def test_a_job_is_read_waited_on_and_cancelled_through_another_host(
    redis_url: str, tmp_path: Path
) -> None:
    """Host b reads, waits on and cancels jobs host a accepted."""
    async with hosts(tmp_path, redis_url, "a", "b") as (a, b):
        busy = [await submit(a, 1.0) for _ in range(4)]  # a's 2 threads, then b's 2
        queued = await submit(a, 0, tag="never")
        assert queued["state"] == "queued"
        doc = (await b.simulate_get(f"/v1/jobs/{queued['job']}")).json
        assert doc["state"] == "queued"
        cancelled = await b.simulate_delete(f"/v1/jobs/{queued['job']}")
        assert cancelled.status_code == 200
        assert cancelled.json["state"] == "cancelled"
        assert (await a.simulate_get(f"/v1/jobs/{queued['job']}")).json["state"] == "cancelled"
        waited = await b.simulate_get(f"/v1/jobs/{busy[0]['job']}", headers={"Prefer": "wait=10"})
        assert waited.headers["preference-applied"] == "wait=10"
        assert waited.json["state"] == "succeeded"
        for job in busy:
            assert (await final(b, job["job"]))["state"] == "succeeded"
        assert (await final(a, queued["job"]))["started_at"] is None  # it never ran


async def test_a_busy_host_does_not_sit_on_its_queue(redis_url: str, tmp_path: Path) -> None:
    """Jobs queued at a busy host run on an idle one; a waiting submit still gets its result."""
    async with hosts(tmp_path, redis_url, "a", "b") as (a, _b):
        blockers = [await submit(a, 1.5) for _ in range(2)]  # a is full
        r = await a.simulate_post(
            "/test/jobs/test.sleep", json={"seconds": 0.1, "tag": "moved"},
            headers={"Prefer": "wait=10"},
        )  # fmt: skip
        assert r.status_code == 200  # a polled the store while b ran it
        assert r.json == {"slept": 0.1, "tag": "moved"}
        moved = (await a.simulate_get(f"/v1/jobs/{r.headers['x-job-id']}")).json
        assert moved["attempts"] == 1
        for blocker in blockers:
            doc = (await a.simulate_get(f"/v1/jobs/{blocker['job']}")).json
            assert doc["state"] == "running"  # a never had room for it


async def test_a_full_fleet_queue_answers_503(redis_url: str, tmp_path: Path) -> None:
    """Past JOBPOOL_FLEET_QUEUE_MAX waiting jobs a submit is refused with 503 + Retry-After."""
    async with hosts(tmp_path, redis_url, "a", io_threads=1, fleet_queue_max=2) as (a,):
        await submit(a, 1.0)
        await submit(a, 1.0)
        await submit(a, 1.0)
        r = await a.simulate_post("/test/jobs/test.sleep", json={"seconds": 0})
        assert r.status_code == 503
        assert r.headers["retry-after"] == "1"
        assert "JOBPOOL_FLEET_QUEUE_MAX" in r.json["detail"]
        metrics = (await a.simulate_get("/metrics")).text
        refused = 'jobpool_jobs_rejected_total{job="test.sleep",reason="overloaded"} 1.0'
        assert refused in metrics


async def test_a_job_runs_at_most_max_attempts_times_in_all(redis_url: str, tmp_path: Path) -> None:
    """A job whose hosts keep dying is failed, not run again, once it has used its attempts."""
    ghost = await ghost_worker(redis_url, tmp_path)  # as if its host died each time
    job = record("test.sleep", args={"seconds": 0})
    await ghost.add(job)
    for _ in range(2):  # two runs, each cut off
        assert [r.id for r in await ghost.claim(ROOM, 1.0)] == [job.id]
        await asyncio.sleep(0.3)
        await ghost.adopt_orphans()
    async with hosts(tmp_path, redis_url, "a", max_attempts=2):
        for _ in range(100):
            got = await ghost.get(job.id)
            assert got is not None
            if got.state is JobState.FAILED:
                break
            await asyncio.sleep(0.05)
        assert got.state is JobState.FAILED
        assert got.attempts == 3
        assert got.error is not None
        assert got.error.startswith("gave up after 2 attempts")
        assert "interrupted" in got.error
    await ghost.close()


async def test_a_job_a_crash_cut_off_runs_alone_on_the_host_that_takes_it(
    redis_url: str, tmp_path: Path
) -> None:
    """A claimed job whose last run died with its process runs with nothing beside it."""
    ghost = await ghost_worker(redis_url, tmp_path)
    suspect = record("test.span", args={"seconds": 0.3})
    await ghost.add(suspect)
    await ghost.claim(ROOM, 1.0)
    await asyncio.sleep(0.3)
    await ghost.adopt_orphans()  # back in the queue, marked interrupted
    others = [record("test.span", args={"seconds": 0.1}) for _ in range(2)]
    for job in others:
        await ghost.add(job)
    async with hosts(tmp_path, redis_url, "a", io_threads=4):
        for _ in range(200):
            docs = [await ghost.get(j.id) for j in (suspect, *others)]
            if all(d is not None and d.state is JobState.SUCCEEDED for d in docs):
                break
            await asyncio.sleep(0.05)
    s, *rest = docs
    assert s is not None
    assert s.attempts == 2
    for d in rest:
        assert d is not None
        assert d.state is JobState.SUCCEEDED
        assert d.result["began"] >= s.result["ended"]  # nothing ran beside it
    await ghost.close()


async def inflight(url: str, owner: str) -> int:
    """Jobs of ``owner`` the fleet's Redis counts in flight."""
    client = redis.asyncio.Redis.from_url(url)
    try:
        count = await client.hget("jobpool:inflight", owner)
    finally:
        await client.aclose()
    return 0 if count is None else int(count)


async def test_a_clients_jobs_count_in_flight_fleet_wide_queued_ones_too(
    redis_url: str, tmp_path: Path
) -> None:
    """Running and queued jobs count on the client's cap on every host, until they end."""
    gate = tmp_path / "gate"
    wait = {"path": str(gate)}
    capped = {"io_threads": 1, "client_max_inflight": 3}
    async with hosts(tmp_path, redis_url, "a", "b", **capped) as (a, b):
        try:
            first = await a.simulate_post("/test/jobs/test.wait_for", json=wait)
            second = await a.simulate_post("/test/jobs/test.wait_for", json=wait)
            assert (first.json["state"], second.json["state"]) == ("running", "queued")
            for _ in range(200):  # b has a free thread: it takes the queued one
                doc = (await b.simulate_get(f"/v1/jobs/{second.json['job']}")).json
                if doc["state"] == "running":
                    break
                await asyncio.sleep(0.02)
            assert doc["state"] == "running"
            third = await a.simulate_post("/test/jobs/test.wait_for", json=wait)
            assert third.json["state"] == "queued"  # no thread free in the fleet
            assert await inflight(redis_url, "alice") == 3
            for host in (a, b):  # the queued one counts too, on every host
                refused = await host.simulate_post("/test/jobs/test.wait_for", json=wait)
                assert refused.status_code == 429, refused.text
                assert "JOBPOOL_CLIENT_MAX_INFLIGHT" in refused.json["detail"]
            other = await b.simulate_post("/v1/echo", json={}, headers=bearer(BOB))
            assert other.status_code == 202  # bob has a cap of his own
            assert (await b.simulate_delete(f"/v1/jobs/{third.json['job']}")).status_code == 200
            assert await inflight(redis_url, "alice") == 2  # cancelled: it no longer counts
            fourth = await b.simulate_post("/test/jobs/test.wait_for", json=wait)
            assert fourth.status_code == 202
            again = await b.simulate_post("/test/jobs/test.wait_for", json=wait)
            assert again.status_code == 429
            gate.touch()
            for job in (first.json["job"], second.json["job"], fourth.json["job"]):
                assert (await final(a, job))["state"] == "succeeded"
            assert await inflight(redis_url, "alice") == 0  # ended with the step that ends them
        finally:
            gate.touch()  # a failed check must not leave the jobs waiting forever
