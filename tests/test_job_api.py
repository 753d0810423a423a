"""The job API of a production job queue, in-process on the real SQLite store: retries with
backoff, delayed jobs, cancelling running jobs, progress, and the polling headers."""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psutil
import pytest
from falcon import testing

from tests.test_inprocess import final

JSON = {"Content-Type": "application/json"}


def ts(text: str) -> float:
    return dt.datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


async def until_state(
    c: testing.ASGIConductor, job_id: str, state: str, within: float = 30
) -> dict[str, Any]:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    doc: dict[str, Any] = {}
    while loop.time() < deadline:
        doc = (await c.simulate_get(f"/v1/jobs/{job_id}")).json
        if doc["state"] == state:
            return doc
        await asyncio.sleep(0.02)
    raise AssertionError(f"job {job_id} never {state}: {doc}")


async def test_a_flaky_job_succeeds_on_its_third_attempt_after_spaced_retries(
    client: testing.ASGIConductor, tmp_path: Path
) -> None:
    """A job that fails twice then succeeds ends succeeded with 3 attempts; each failed
    attempt is recorded, and each retry waited at least its backoff (0.3 s, then 0.6 s)."""
    r = await client.simulate_post("/test/jobs/test.flaky", json={"path": str(tmp_path / "n")})
    assert r.status_code == 202
    doc = await final(client, r.json["job"])
    assert doc["state"] == "succeeded"
    assert doc["attempts"] == 3
    first, second = doc["failed_attempts"]
    assert (first["attempt"], second["attempt"]) == (1, 2)
    assert first["error"] == "RuntimeError: flaky run 1"
    assert second["error"] == "RuntimeError: flaky run 2"
    assert ts(second["started_at"]) - ts(first["finished_at"]) >= 0.3 - 0.002
    assert ts(doc["started_at"]) - ts(second["finished_at"]) >= 0.6 - 0.002
    assert (await client.simulate_get(f"/v1/jobs/{doc['id']}/result")).json == {"runs": 3}


async def test_a_retry_waits_scheduled_with_its_next_attempt_shown(
    conductor_for: Callable[..., testing.ASGIConductor], tmp_path: Path
) -> None:
    """Between attempts the job is scheduled, its last error and next attempt's time in its
    document, with Retry-After until then."""
    async with conductor_for() as c:
        r = await c.simulate_post(
            "/test/jobs/test.flaky", json={"path": str(tmp_path / "n"), "fails": 1}
        )
        doc = await until_state(c, r.json["job"], "scheduled")
        assert doc["error"] == "RuntimeError: flaky run 1"
        assert ts(doc["next_attempt_at"]) >= ts(doc["failed_attempts"][0]["finished_at"])
        got = await c.simulate_get(f"/v1/jobs/{doc['id']}")
        assert int(got.headers["retry-after"]) >= 1
        assert (await final(c, doc["id"]))["state"] == "succeeded"


async def test_do_not_retry_fails_at_once_and_a_timeout_is_retried(
    client: testing.ASGIConductor, tmp_path: Path
) -> None:
    """DoNotRetry ends the job on its first attempt whatever its policy; a timeout is a
    failed attempt like any other, so it is retried."""
    r = await client.simulate_post("/test/jobs/test.fails_for_good", json={})
    doc = await final(client, r.json["job"])
    assert (doc["state"], doc["attempts"]) == ("failed", 1)
    assert doc["error"] == "DoNotRetry: this will never work"
    assert "failed_attempts" not in doc
    r = await client.simulate_post(
        "/test/jobs/test.slow_then_fine", json={"path": str(tmp_path / "ran")}
    )
    doc = await final(client, r.json["job"])
    assert (doc["state"], doc["attempts"]) == ("succeeded", 2)
    assert doc["failed_attempts"][0]["error"] == "timed out after 0.5 s"


async def test_a_delayed_job_is_scheduled_and_starts_no_sooner(
    client: testing.ASGIConductor,
) -> None:
    """Job-Delay: 1.5 answers 202 scheduled with Retry-After; the job starts no sooner
    than 1.5 s after it was created."""
    r = await client.simulate_post(
        "/test/jobs/test.echo", json={"a": 1}, headers={"Job-Delay": "1.5", "Prefer": "wait=5"}
    )
    assert r.status_code == 202  # a scheduled job is not waited for
    assert r.json["state"] == "scheduled"
    assert int(r.headers["retry-after"]) >= 1
    doc = (await client.simulate_get(f"/v1/jobs/{r.json['job']}")).json
    assert doc["state"] == "scheduled"
    assert ts(doc["next_attempt_at"]) - ts(doc["created_at"]) >= 1.5 - 0.002
    doc = await final(client, r.json["job"])
    assert doc["state"] == "succeeded"
    assert ts(doc["started_at"]) - ts(doc["created_at"]) >= 1.5 - 0.002


async def test_a_job_not_before_a_time_starts_no_sooner(client: testing.ASGIConductor) -> None:
    """Job-Not-Before takes an RFC 3339 date-time; a time already past starts at once."""
    at = dt.datetime.now(dt.UTC) + dt.timedelta(seconds=1.2)
    r = await client.simulate_post(
        "/test/jobs/test.echo",
        json={},
        headers={"Job-Not-Before": at.isoformat().replace("+00:00", "Z")},
    )
    assert r.json["state"] == "scheduled"
    doc = await final(client, r.json["job"])
    assert ts(doc["started_at"]) >= at.timestamp() - 0.002
    r = await client.simulate_post(
        "/test/jobs/test.echo", json={}, headers={"Job-Not-Before": "2001-01-01T00:00:00Z"}
    )
    assert r.json["state"] in ("queued", "running")


@pytest.mark.parametrize(
    ("headers", "status"),
    [
        ({"Job-Delay": "soon"}, 400),
        ({"Job-Delay": "-1"}, 400),
        ({"Job-Delay": "1e3"}, 400),
        ({"Job-Not-Before": "2030-01-01 00:00:00Z"}, 400),
        ({"Job-Not-Before": "2030-01-01T00:00:00+00:99"}, 400),
        ({"Job-Delay": "1", "Job-Not-Before": "2030-01-01T00:00:00Z"}, 400),
        ({"Job-Delay": "99999999"}, 422),
        ({"Job-Not-Before": "2999-01-01T00:00:00Z"}, 422),
    ],
)
async def test_bad_schedule_headers_are_refused(
    client: testing.ASGIConductor, headers: dict[str, str], status: int
) -> None:
    """A malformed delay or date-time, or both at once, is 400; one past the horizon
    (JOBPOOL_SCHEDULE_MAX_S) is 422; nothing is stored."""
    r = await client.simulate_post("/test/jobs/test.echo", json={}, headers=headers)
    assert r.status_code == status, r.text
    assert r.headers["content-type"] == "application/problem+json"


async def test_a_scheduled_job_cancelled_never_runs(client: testing.ASGIConductor) -> None:
    """DELETE on a scheduled job cancels it at once (dequeued); its time comes and goes."""
    r = await client.simulate_post("/test/jobs/test.echo", json={}, headers={"Job-Delay": "0.5"})
    job_id = r.json["job"]
    gone = await client.simulate_delete(f"/v1/jobs/{job_id}")
    assert gone.status_code == 200
    assert gone.json["state"] == "cancelled"
    assert gone.json["cancel"] == {"requested_at": None, "how": "dequeued"}
    await asyncio.sleep(1.0)
    doc = (await client.simulate_get(f"/v1/jobs/{job_id}")).json
    assert (doc["state"], doc["started_at"]) == ("cancelled", None)


async def test_a_running_io_job_that_checks_stops_when_cancelled(
    client: testing.ASGIConductor,
) -> None:
    """A running task that checks its context stops at the request: the DELETE answers
    200 with the job cancelled (stopped); the progress it reported is kept."""
    r = await client.simulate_post("/test/jobs/test.cooperative", json={})
    job_id = r.json["job"]
    running = await until_state(client, job_id, "running")
    for _ in range(200):  # progress is written at most every 0.5 s
        if "progress" in running:
            break
        await asyncio.sleep(0.05)
        running = (await client.simulate_get(f"/v1/jobs/{job_id}")).json
    assert running["progress"]["total"] == 3000
    assert running["progress"]["message"] == "working"
    assert int((await client.simulate_get(f"/v1/jobs/{job_id}")).headers["retry-after"]) >= 1
    gone = await client.simulate_delete(f"/v1/jobs/{job_id}")
    assert gone.status_code == 200, gone.text
    assert gone.json["state"] == "cancelled"
    assert gone.json["cancel"]["how"] == "stopped"
    assert gone.json["cancel"]["requested_at"] is not None
    assert "retry-after" not in gone.headers
    again = await client.simulate_delete(f"/v1/jobs/{job_id}")
    assert (again.status_code, again.json) == (200, gone.json)  # the same answer again


async def test_a_running_io_job_that_never_checks_is_abandoned_after_the_grace(
    conductor_for: Callable[..., testing.ASGIConductor], tmp_path: Path
) -> None:
    """A task that ignores the request ends cancelled (abandoned) after
    JOBPOOL_CANCEL_GRACE_S; what it returns later is thrown away."""
    gate = tmp_path / "go"
    async with conductor_for(cancel_grace_s=1) as c:
        r = await c.simulate_post("/test/jobs/test.stubborn", json={"path": str(gate)})
        job_id = r.json["job"]
        await until_state(c, job_id, "running")
        gone = await c.simulate_delete(f"/v1/jobs/{job_id}")
        assert gone.status_code == 200, gone.text
        assert gone.json["cancel"]["how"] == "abandoned"
        gate.touch()
        await asyncio.sleep(0.3)
        doc = (await c.simulate_get(f"/v1/jobs/{job_id}")).json
        assert doc["state"] == "cancelled"
        assert (await c.simulate_get(f"/v1/jobs/{job_id}/result")).status_code == 409


async def test_a_running_cpu_job_cancelled_is_terminated_and_its_process_replaced(
    client: testing.ASGIConductor, tmp_path: Path
) -> None:
    """Cancelling a running cpu job kills its process (the DELETE answers once it is
    stopped: terminated); the next cpu job runs in a new process."""
    pid_file = tmp_path / "pid"
    r = await client.simulate_post("/test/jobs/test.cpu_progress", json={"pid_file": str(pid_file)})
    job_id = r.json["job"]
    for _ in range(600):
        if pid_file.exists() and pid_file.read_text():
            break
        await asyncio.sleep(0.05)
    pid = int(pid_file.read_text())
    doc = (await client.simulate_get(f"/v1/jobs/{job_id}")).json
    for _ in range(100):  # its progress crossed back from the process
        if "progress" in doc:
            break
        await asyncio.sleep(0.05)
        doc = (await client.simulate_get(f"/v1/jobs/{job_id}")).json
    assert doc["progress"]["message"] == "spinning"
    gone = await client.simulate_delete(f"/v1/jobs/{job_id}")
    assert gone.status_code == 200, gone.text
    assert (gone.json["state"], gone.json["cancel"]["how"]) == ("cancelled", "terminated")
    for _ in range(100):
        if not psutil.pid_exists(pid):
            break
        await asyncio.sleep(0.05)
    assert not psutil.pid_exists(pid)
    again = await client.simulate_post(
        "/test/jobs/test.cpu_spin", json={"seconds": 0.01}, headers={"Prefer": "wait=30"}
    )
    assert again.status_code == 200
    assert again.json["pid"] != pid


async def test_a_batch_cancelled_mid_way_skips_its_remaining_items(
    client: testing.ASGIConductor,
) -> None:
    """A running batch asked to stop runs no more of its items: it ends cancelled with
    the items done so far, the rest skipped."""
    items = list(range(40))
    r = await client.simulate_post(
        "/test/batch/test.slow_item", json={"items": items, "options": {"seconds": 0.1}}
    )
    job_id = r.json["job"]
    await until_state(client, job_id, "running")
    await asyncio.sleep(0.3)
    gone = await client.simulate_delete(f"/v1/jobs/{job_id}")
    assert gone.status_code == 200, gone.text
    doc = gone.json
    assert (doc["state"], doc["cancel"]["how"]) == ("cancelled", "stopped")
    assert doc["items"]["done"] < len(items)
    result = (await client.simulate_get(f"/v1/jobs/{job_id}/result")).json
    assert result["skipped"] > 0
    assert result["done"] + result["failed"] + result["skipped"] == len(items)


async def test_prefer_respond_async_is_applied_and_named(client: testing.ASGIConductor) -> None:
    """Prefer: respond-async gets the 202 at once, named in Preference-Applied; with a wait
    the finished job comes back (200) and the wait is what was applied."""
    r = await client.simulate_post("/v1/echo", json={}, headers={"Prefer": "respond-async"})
    assert r.status_code == 202
    assert r.headers["preference-applied"] == "respond-async"
    assert int(r.headers["retry-after"]) >= 1
    r = await client.simulate_post(
        "/v1/echo", json={"x": 1}, headers={"Prefer": "respond-async, wait=10"}
    )
    assert r.status_code == 200
    assert r.headers["preference-applied"] == "wait=10"
