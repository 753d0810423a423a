"""Metrics: what /metrics shows adds up over every worker, and the bookkeeping behind it."""

from __future__ import annotations

import os
import signal
import socket
import time
from collections.abc import Callable
from typing import Any

import orjson
import pytest
from falcon import testing
from prometheus_client import CollectorRegistry, Histogram, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from service.jobs.state import JobState
from service.metrics import REQUEST_BUCKETS, Metrics, _Observations
from tests.conftest import SEED_BATCH
from tests.server import Server

DEADLINE_S = 30.0


def scrape(text: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """Every sample of a Prometheus text page: (name, labels) -> value."""
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def value(samples: dict[Any, float], name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


def wait_for_metrics(
    get_text: Callable[[], str], ready: Callable[[dict[Any, float]], bool]
) -> dict[Any, float]:
    """Scrape until ``ready`` holds (other workers flush once a second); fail at a deadline."""
    deadline = time.monotonic() + DEADLINE_S
    samples: dict[Any, float] = {}
    while time.monotonic() < deadline:
        samples = scrape(get_text())
        if ready(samples):
            return samples
        time.sleep(0.2)
    raise AssertionError(f"metrics never got there: {sorted(samples.items())[:80]}")


def access_lines(srv: Server) -> list[dict[str, Any]]:
    lines = []
    for line in srv.log().splitlines():
        doc = orjson.loads(line)
        if doc["logger"] == "jobpool.access":
            lines.append(doc)
    return lines


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# -- the real server ----------------------------------------------------------------------


def test_counts_add_up_across_workers(server_factory: Callable[..., Server]) -> None:
    """After known traffic spread over both workers, /metrics counts all of it, exactly."""
    srv = server_factory(env={"JOBPOOL_IO_QUEUE_MAX": "20"})
    close = {"Connection": "close"}  # a new connection each time: either worker may take it
    batches = 0
    for _ in range(400):  # until both workers have taken some (bounded)
        r = srv.post("/v1/parcels", json=SEED_BATCH, headers=close)
        assert r.status == 202, r
        batches += 1
        pids = {line["pid"] for line in access_lines(srv) if line["route"] == "/v1/parcels"}
        if batches >= 10 and len(pids) == 2:
            break
    assert len(pids) == 2, "every request went to one worker"
    for _ in range(3):
        assert srv.get("/no/such/path", headers=close).status == 404
    assert srv.post("/v1/parcels", json={"Data": []}, headers=close).status == 422
    failing = [
        srv.post("/test/jobs/test.fail", json={"message": "no"}, headers=close).json()["job"]
        for _ in range(4)
    ]
    too_big = {"Data": [dict(SEED_BATCH["Data"][0], id=str(i)) for i in range(25)]}
    assert srv.post("/v1/parcels", json=too_big, headers=close).status == 422
    for job_id in failing:
        assert srv.wait_final(job_id)["state"] == "failed"

    requests = "jobpool_http_requests_total"

    def settled(s: dict[Any, float]) -> bool:
        # Each worker flushes its counts once a second, on its own: wait for the last
        # count asserted below of either worker, not only for the jobs' ends.
        done = value(s, "jobpool_jobs_completed_total", job="parcel", state="succeeded")
        failed = value(s, "jobpool_jobs_completed_total", job="test.fail", state="failed")
        answered = (
            value(s, requests, route="/v1/parcels", method="POST", status="422")
            + value(s, requests, route="unmatched", method="GET", status="404")
            + value(s, requests, route="/test/jobs/{name}", method="POST", status="202")
        )
        return done == batches and failed == len(failing) and answered >= 2 + 3 + 4

    s = wait_for_metrics(lambda: srv.get("/metrics").data.decode(), settled)
    assert value(s, requests, route="/v1/parcels", method="POST", status="202") == batches
    assert value(s, requests, route="/v1/parcels", method="POST", status="422") == 2
    assert value(s, requests, route="unmatched", method="GET", status="404") == 3
    assert value(s, requests, route="/test/jobs/{name}", method="POST", status="202") == 4
    # The same requests, one per access-log line, whichever worker wrote it.
    logged = [x for x in access_lines(srv) if x["route"] == "/v1/parcels" and x["status"] == 202]
    assert len(logged) == batches
    duration = "jobpool_http_request_duration_seconds_count"
    assert value(s, duration, route="/v1/parcels", method="POST") == batches + 2
    assert value(s, "jobpool_jobs_submitted_total", job="parcel", pool="io") == batches
    assert value(s, "jobpool_jobs_submitted_total", job="test.fail", pool="io") == 4
    assert value(s, "jobpool_jobs_rejected_total", job="parcel", reason="too_large") == 1
    assert value(s, "jobpool_job_run_seconds_count", job="parcel") == batches
    assert value(s, "jobpool_job_queue_wait_seconds_count", job="parcel") == batches
    assert value(s, "jobpool_job_queue_wait_seconds_count", job="test.fail") == 4
    # Gauges are summed over the live workers: two workers of 32 io threads, idle now.
    assert value(s, "jobpool_workers") == 2
    assert value(s, "jobpool_pool_slots", pool="io") == 2 * 32
    assert value(s, "jobpool_pool_admission_limit", pool="io") == 2 * 20
    s = wait_for_metrics(
        lambda: srv.get("/metrics").data.decode(),
        lambda s: (
            value(s, "jobpool_pool_busy_slots", pool="io") == 0
            and value(s, "jobpool_pool_admitted_tasks", pool="io") == 0
        ),
    )
    assert value(s, "jobpool_pool_queued_jobs", pool="io") == 0


def test_a_dead_workers_gauges_go_and_its_counts_stay(server: Server) -> None:
    """SIGKILL a worker: its replacement counts once in the gauges; no counter goes back."""
    get_text = lambda: server.get("/metrics").data.decode()  # noqa: E731
    for _ in range(6):
        assert server.post("/v1/parcels", json=SEED_BATCH).status == 202
    before = wait_for_metrics(
        get_text,
        lambda s: value(s, "jobpool_jobs_submitted_total", job="parcel", pool="io") == 6,
    )
    assert value(before, "jobpool_workers") == 2
    old = server.worker_pids()
    os.kill(old[0], signal.SIGKILL)
    server.http.clear()

    def replaced(s: dict[Any, float]) -> bool:
        pids = server.worker_pids()
        return len(pids) == 2 and old[0] not in pids and value(s, "jobpool_workers") == 2

    after = wait_for_metrics(get_text, replaced)
    # Counts flushed before the kill are kept; a kill loses at most the last second's.
    assert value(after, "jobpool_jobs_submitted_total", job="parcel", pool="io") == 6
    assert value(after, "jobpool_pool_slots", pool="io") == 2 * 32


def test_metrics_bind_keeps_metrics_off_the_api_port(
    server_factory: Callable[..., Server],
) -> None:
    """With JOBPOOL_METRICS_BIND, /metrics answers there alone and the API port says 404."""
    port = free_port()
    srv = server_factory(env={"JOBPOOL_METRICS_BIND": f"127.0.0.1:{port}"})
    assert srv.get("/metrics").status == 404
    assert srv.get("/healthz").status == 200
    other = f"http://127.0.0.1:{port}"
    r = srv.http.request("GET", f"{other}/metrics")
    assert r.status == 200
    assert b"jobpool_workers" in r.data
    assert srv.http.request("GET", f"{other}/healthz").status == 404
    assert srv.http.request("POST", f"{other}/v1/parcels", json=SEED_BATCH).status == 404


def test_metrics_off_means_no_route(server_factory: Callable[..., Server]) -> None:
    """JOBPOOL_METRICS=off: no /metrics, and the service works as before."""
    srv = server_factory(env={"JOBPOOL_METRICS": "off"})
    assert srv.get("/metrics").status == 404
    assert srv.post("/v1/parcels", json=SEED_BATCH).status == 202


# -- in-process ---------------------------------------------------------------------------


async def test_in_process_app_counts_for_itself(client: testing.ASGIConductor) -> None:
    """Without the multiprocess directory an app's /metrics shows its own counts."""
    r = await client.simulate_post("/v1/parcels", json=SEED_BATCH)
    assert r.status_code == 202
    s = scrape((await client.simulate_get("/metrics")).text)
    requests = "jobpool_http_requests_total"
    assert value(s, requests, route="/v1/parcels", method="POST", status="202") == 1
    assert value(s, "jobpool_jobs_submitted_total", job="parcel", pool="io") == 1
    assert (await client.simulate_get("/metrics")).headers["content-type"].startswith("text/plain")


async def test_overload_is_counted_by_reason(
    conductor_for: Callable[..., testing.ASGIConductor],
) -> None:
    """A full pool's refusal is a rejection with reason overloaded."""
    async with conductor_for(io_queue_max=1, io_threads=1) as c:
        assert (
            await c.simulate_post("/test/jobs/test.sleep", json={"seconds": 0.5})
        ).status_code == 202
        assert (
            await c.simulate_post("/test/jobs/test.sleep", json={"seconds": 0})
        ).status_code == 503
        s = scrape((await c.simulate_get("/metrics")).text)
    rejected = "jobpool_jobs_rejected_total"
    assert value(s, rejected, job="test.sleep", reason="overloaded") == 1


def test_bulk_flush_writes_what_observe_would() -> None:
    """Observations flushed in bulk give the exposition that one observe() each gives."""
    observed = [0.0, 0.0004, 0.001, 0.0011, 0.3, 0.3, 2.5, 59.0, 61.0, 1e6]
    direct_registry, bulk_registry = CollectorRegistry(), CollectorRegistry()
    direct = Histogram("h_seconds", "h", ["route"], registry=direct_registry,
                       buckets=REQUEST_BUCKETS)  # fmt: skip
    bulk = Histogram("h_seconds", "h", ["route"], registry=bulk_registry,
                     buckets=REQUEST_BUCKETS)  # fmt: skip
    pending = _Observations(bulk, REQUEST_BUCKETS)
    for x in observed:
        direct.labels("/a").observe(x)
        pending.observe(("/a",), x)
    pending.flush()
    pending.flush()  # nothing pending: nothing added twice

    def lines(registry: CollectorRegistry) -> list[bytes]:
        return [x for x in generate_latest(registry).splitlines() if b"_created" not in x]

    assert lines(bulk_registry) == lines(direct_registry)


def test_finished_counts_state_and_run_time_apart() -> None:
    """A cancelled job counts as completed but has no run time to observe."""
    m = Metrics(multiprocess_dir="")
    m.finished("parcel", JobState.CANCELLED, None)
    m.finished("parcel", JobState.SUCCEEDED, 0.2)
    m.flush()
    s = scrape(m.exposition().decode())
    assert value(s, "jobpool_jobs_completed_total", job="parcel", state="cancelled") == 1
    assert value(s, "jobpool_jobs_completed_total", job="parcel", state="succeeded") == 1
    assert value(s, "jobpool_job_run_seconds_count", job="parcel") == 1


@pytest.mark.parametrize("bind", ["127.0.0.1:8000", "0.0.0.0:8000"])
def test_metrics_bind_needs_its_own_port(bind: str) -> None:
    """JOBPOOL_METRICS_BIND on the API's port is refused, naming the variable."""
    from service.config import Settings
    from service.errors import ConfigError

    with pytest.raises(ConfigError, match="JOBPOOL_METRICS_BIND"):
        Settings.from_env({"JOBPOOL_BIND": "127.0.0.1:8000", "JOBPOOL_METRICS_BIND": bind})


def test_metrics_port_refusals_still_carry_a_request_id(
    server_factory: Callable[..., Server],
) -> None:
    """The 404 for /metrics on the API port is a documented answer: it has X-Request-ID."""
    srv = server_factory(env={"JOBPOOL_METRICS_BIND": f"127.0.0.1:{free_port()}"})
    r = srv.get("/metrics", headers={"X-Request-ID": "scrape-1"})
    assert r.status == 404
    assert r.headers["X-Request-ID"] == "scrape-1"
    assert r.headers["Content-Type"] == "application/problem+json"


async def test_a_client_over_its_jobs_in_flight_is_counted_apart(
    conductor_for: Callable[..., testing.ASGIConductor],
) -> None:
    """A submit refused by the client's cap on jobs in flight (429) is reason client_limit."""
    async with conductor_for(client_max_inflight=1) as c:
        first = await c.simulate_post("/test/jobs/test.sleep", json={"seconds": 0.5})
        assert first.status_code == 202
        second = await c.simulate_post("/test/jobs/test.sleep", json={"seconds": 0})
        assert second.status_code == 429
        s = scrape((await c.simulate_get("/metrics")).text)
    rejected = "jobpool_jobs_rejected_total"
    assert value(s, rejected, job="test.sleep", reason="client_limit") == 1
    assert value(s, rejected, job="test.sleep", reason="overloaded") == 0
