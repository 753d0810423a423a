"""The app in-process (falcon.testing), with a real SQLite store in a temp dir."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from falcon import testing

from tests.conftest import SEED_BATCH

JSON = {"Content-Type": "application/json"}


async def final(c: testing.ASGIConductor, job_id: str, within: float = 20) -> dict[str, Any]:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while loop.time() < deadline:
        doc: dict[str, Any] = (await c.simulate_get(f"/v1/jobs/{job_id}")).json
        if doc["state"] in ("succeeded", "failed", "cancelled"):
            return doc
        await asyncio.sleep(0.02)
    raise AssertionError(f"job {job_id} not final: {doc}")


async def test_seed_batch_is_accepted_stored_and_readable_item_by_item(
    client: testing.ASGIConductor,
) -> None:
    """The seed's batch gets a 202 with Location, and each parcel reads back as it was sent."""
    r = await client.simulate_post("/v1/parcels", json=SEED_BATCH)
    assert r.status_code == 202
    job_id = r.json["job"]
    assert r.json["accepted"] == 9
    assert r.headers["location"] == f"/v1/jobs/{job_id}"
    doc = await final(client, job_id)
    assert doc["state"] == "succeeded"
    assert doc["items"] == {"total": 9, "done": 9, "failed": 0}
    for item in SEED_BATCH["Data"]:
        got = await client.simulate_get(f"/v1/parcels/{item['id']}")
        assert got.status_code == 200
        assert got.json == item


async def test_each_parcel_keeps_its_own_data(client: testing.ASGIConductor) -> None:
    """The seed's loop-pointer bug has no twin: 200 parcels each keep their own data."""
    items = [
        {"id": f"p{i}", "time": "2020-03-01T00:59:60.5+01:00", "data": f"payload-{i}"}
        for i in range(200)
    ]
    r = await client.simulate_post("/v1/parcels", json={"Data": items})
    assert r.status_code == 202
    assert (await final(client, r.json["job"]))["state"] == "succeeded"
    for item in items:
        assert (await client.simulate_get(f"/v1/parcels/{item['id']}")).json == item


async def test_job_document_has_every_field(client: testing.ASGIConductor) -> None:
    """A job document carries id, job, state, timestamps, attempts and error."""
    r = await client.simulate_post("/v1/echo", json={"a": 1})
    doc = await final(client, r.json["job"])
    assert doc["id"] == r.json["job"]
    assert doc["job"] == "test.echo"
    assert doc["state"] == "succeeded"
    assert doc["attempts"] == 1
    assert doc["error"] is None
    assert doc["created_at"] <= doc["started_at"] <= doc["finished_at"]
    assert doc["created_at"].endswith("Z")
    result = await client.simulate_get(f"/v1/jobs/{doc['id']}/result")
    assert result.json == {"body": {"a": 1}}


async def test_state_goes_queued_running_succeeded(
    conductor_for: Callable[..., testing.ASGIConductor],
) -> None:
    """A job waits queued while the pool is busy, is seen running, then succeeded."""
    async with conductor_for(io_threads=1) as c:
        blocker = await c.simulate_post("/test/jobs/test.sleep", json={"seconds": 0.3})
        assert blocker.json["state"] == "running"  # a free thread: it starts at once
        r = await c.simulate_post("/test/jobs/test.sleep", json={"seconds": 0.3})
        assert r.json["state"] == "queued"
        job_id = r.json["job"]
        seen = []
        for _ in range(200):
            state = (await c.simulate_get(f"/v1/jobs/{job_id}")).json["state"]
            if not seen or seen[-1] != state:
                seen.append(state)
            if state == "succeeded":
                break
            await asyncio.sleep(0.01)
        assert seen == ["queued", "running", "succeeded"]


async def test_failing_task_marks_its_job_failed_with_the_reason(
    client: testing.ASGIConductor,
) -> None:
    """A task that raises fails its job with the exception's message; the app serves on."""
    r = await client.simulate_post("/test/jobs/test.fail", json={"message": "disk on fire"})
    doc = await final(client, r.json["job"])
    assert doc["state"] == "failed"
    assert doc["error"] == "RuntimeError: disk on fire"
    result = await client.simulate_get(f"/v1/jobs/{doc['id']}/result")
    assert result.status_code == 409
    assert "disk on fire" in result.json["detail"]
    assert (await client.simulate_get("/healthz")).status_code == 200


async def test_cancel_a_queued_job_and_409_for_a_finished_one(
    conductor_for: Callable[..., testing.ASGIConductor],
) -> None:
    """DELETE cancels a queued job (it never runs); a finished job answers 409."""
    async with conductor_for(io_threads=1) as c:
        blocker = await c.simulate_post("/test/jobs/test.sleep", json={"seconds": 0.5})
        queued = await c.simulate_post("/test/jobs/test.sleep", json={"seconds": 0, "tag": "x"})
        d = await c.simulate_delete(f"/v1/jobs/{queued.json['job']}")
        assert d.status_code == 200
        assert d.json["state"] == "cancelled"
        await final(c, blocker.json["job"])
        doc = await final(c, queued.json["job"])
        assert doc["state"] == "cancelled"
        assert doc["started_at"] is None
        again = await c.simulate_delete(f"/v1/jobs/{blocker.json['job']}")
        assert again.status_code == 409
        assert again.headers["content-type"] == "application/problem+json"


async def test_cancelling_a_queued_job_frees_its_place_under_the_client_cap_at_once(
    conductor_for: Callable[..., testing.ASGIConductor], tmp_path: Path
) -> None:
    """A client at its cap on jobs in flight cancels a queued job and may submit again
    while the job ahead of it still runs (not only once the cancelled job's turn came)."""
    release = tmp_path / "release"
    async with conductor_for(io_threads=1, client_max_inflight=2) as c:
        try:
            blocker = await c.simulate_post("/test/jobs/test.wait_for", json={"path": str(release)})
            queued = await c.simulate_post("/test/jobs/test.sleep", json={"seconds": 0})
            assert (blocker.status_code, queued.status_code) == (202, 202)
            assert queued.json["state"] == "queued"
            over = await c.simulate_post("/test/jobs/test.sleep", json={"seconds": 0})
            assert over.status_code == 429
            waiting = asyncio.create_task(
                c.simulate_get(f"/v1/jobs/{queued.json['job']}", headers={"Prefer": "wait=5"})
            )
            await asyncio.sleep(0.05)  # the wait is parked on the queued job
            cancel = await c.simulate_delete(f"/v1/jobs/{queued.json['job']}")
            assert cancel.json["state"] == "cancelled"
            assert (await waiting).json["state"] == "cancelled"
            again = await c.simulate_post("/test/jobs/test.sleep", json={"seconds": 0, "tag": "n"})
            assert again.status_code == 202, again.text
            running = await c.simulate_get(f"/v1/jobs/{blocker.json['job']}")
            assert running.json["state"] == "running"  # the place came from the cancel
        finally:
            release.touch()
        assert (await final(c, again.json["job"]))["state"] == "succeeded"
        result = await c.simulate_get(f"/v1/jobs/{again.json['job']}/result")
        assert result.json == {"slept": 0, "tag": "n"}
        assert (await final(c, blocker.json["job"]))["state"] == "succeeded"


async def test_prefer_wait_answers_200_with_the_result(client: testing.ASGIConductor) -> None:
    """Prefer: wait=N holds the request and answers 200 with the result when it is ready."""
    r = await client.simulate_post(
        "/test/jobs/test.sleep", json={"seconds": 0.1, "tag": "w"}, headers={"Prefer": "wait=5"}
    )
    assert r.status_code == 200
    assert r.json == {"slept": 0.1, "tag": "w"}
    assert r.headers["preference-applied"] == "wait=5"


async def test_prefer_wait_answers_202_when_the_job_is_not_done(
    client: testing.ASGIConductor,
) -> None:
    """Prefer: wait=1 on a 3 s job answers 202 after about a second."""
    r = await client.simulate_post(
        "/test/jobs/test.sleep", json={"seconds": 3}, headers={"Prefer": "wait=1"}
    )
    assert r.status_code == 202
    assert r.json["state"] == "running"


async def test_full_pool_answers_503_with_retry_after(
    conductor_for: Callable[..., testing.ASGIConductor],
) -> None:
    """With the io pool's queue full, a submit is refused at once with 503 and Retry-After."""
    async with conductor_for(io_queue_max=3, io_threads=1) as c:
        for _ in range(3):
            r = await c.simulate_post("/test/jobs/test.sleep", json={"seconds": 0.3})
            assert r.status_code == 202
        r = await c.simulate_post("/test/jobs/test.sleep", json={"seconds": 0.3})
        assert r.status_code == 503
        assert r.headers["retry-after"] == "1"
        assert r.headers["content-type"] == "application/problem+json"
        assert "io pool is full" in r.json["detail"]
        small = await c.simulate_post("/test/batch/test.slow_item", json={"items": [1, 2]})
        assert small.status_code == 503
        # Parcels are stored with their job and run inline: they take no place in the pool.
        parcels = await c.simulate_post("/v1/parcels", json={"Data": SEED_BATCH["Data"][:2]})
        assert parcels.status_code == 202
        assert parcels.json["state"] == "succeeded"
        big = await c.simulate_post("/v1/parcels", json=SEED_BATCH)
        assert big.status_code == 422  # 9 tasks never fit 3 slots: retrying cannot help
        assert "JOBPOOL_IO_QUEUE_MAX" in big.json["detail"]


async def test_admission_wait_turns_a_refusal_into_a_short_wait(
    conductor_for: Callable[..., testing.ASGIConductor],
) -> None:
    """With JOBPOOL_ADMISSION_WAIT_MS, a submit to a full pool waits for a slot instead."""
    async with conductor_for(io_queue_max=1, io_threads=1, admission_wait_ms=5000) as c:
        first = await c.simulate_post("/test/jobs/test.sleep", json={"seconds": 0.2})
        second = await c.simulate_post("/test/jobs/test.sleep", json={"seconds": 0})
        assert (first.status_code, second.status_code) == (202, 202)


async def test_batch_items_fail_on_their_own(client: testing.ASGIConductor) -> None:
    """One bad item fails alone: the others succeed and the counts say so."""
    r = await client.simulate_post("/test/batch/test.slow_item", json={"items": ["a", "bad", "c"]})
    assert r.status_code == 202, r.text
    doc = await final(client, r.json["job"])
    assert doc["items"] == {"total": 3, "done": 2, "failed": 1}
    assert doc["state"] == "failed"
    assert "bad item" in doc["error"]


@pytest.mark.parametrize(
    ("path", "status"),
    [("/v1/jobs/01m80z4h38adhscx7c6epxp5fx", 404), ("/v1/jobs/nope", 404), ("/v1/nope", 404)],
)
async def test_unknown_paths_and_jobs_are_404_problems(
    client: testing.ASGIConductor, path: str, status: int
) -> None:
    """Unknown jobs and routes answer 404 in problem+json."""
    r = await client.simulate_get(path)
    assert r.status_code == status
    assert r.headers["content-type"] == "application/problem+json"
    assert r.json["status"] == status


async def test_healthz_is_cheap_and_readyz_names_its_pings(
    client: testing.ASGIConductor,
) -> None:
    """/healthz answers ok; /readyz lists each named ping."""
    assert (await client.simulate_get("/healthz")).json == {"status": "ok"}
    ready = await client.simulate_get("/readyz")
    assert ready.status_code == 200
    assert ready.json == {"ok": ["store", "accepting"], "failing": {}}


async def test_a_cheap_batch_runs_inline_and_is_stored_ended(
    client: testing.ASGIConductor,
) -> None:
    """A batch whose job declares its items cheap for its options is stored already ended,
    failed items and all (one write, no thread); with other options it runs on the pool."""
    r = await client.simulate_post(
        "/test/batch/test.maybe_inline", json={"items": ["a", "bad", "c"]}
    )
    assert (r.status_code, r.json["state"]) == (202, "failed")
    doc = (await client.simulate_get(f"/v1/jobs/{r.json['job']}")).json
    assert doc["items"] == {"total": 3, "done": 2, "failed": 1}
    assert doc["attempts"] == 1
    assert doc["started_at"] == doc["created_at"] == doc["finished_at"]
    assert doc["error"] == "1 of 3 items failed; first: ValueError: bad item"
    result = (await client.simulate_get(f"/v1/jobs/{r.json['job']}/result")).json
    assert result["failures"] == [{"index": 1, "key": "bad", "error": "ValueError: bad item"}]
    slow = await client.simulate_post(
        "/test/batch/test.maybe_inline", json={"items": ["a"], "options": {"seconds": 0.2}}
    )
    assert slow.json["state"] in ("queued", "running")
    assert (await final(client, slow.json["job"]))["state"] == "succeeded"
