"""The job API on the real server: a delayed job across a restart, a cancel that lands on
another worker than the one running the job, and both again on a fleet of two hosts on one
Redis (a delayed job whose host is SIGKILLed runs on the other)."""

from __future__ import annotations

import datetime as dt
import http.client
import time
from collections.abc import Callable

import orjson

from tests.clients import ALICE, bearer
from tests.server import Server
from tests.test_fleet import fleet_env, submit, until


def ts(text: str) -> float:
    return dt.datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


def test_a_delayed_job_survives_a_restart_while_scheduled(
    server_factory: Callable[..., Server],
) -> None:
    """A job scheduled 3 s ahead is still scheduled after the server stops and starts
    again on the same state, then runs, no sooner than its time."""
    srv = server_factory()
    r = srv.post("/test/jobs/test.echo", json={"x": 1}, headers={"Job-Delay": "3"})
    assert r.status == 202, r
    job_id = r.json()["job"]
    assert srv.stop() == 0
    srv.start()
    doc = srv.get(f"/v1/jobs/{job_id}").json()
    assert doc["state"] in ("scheduled", "queued", "running", "succeeded")
    doc = srv.wait_final(job_id, timeout=60)
    assert doc["state"] == "succeeded"
    assert ts(doc["started_at"]) - ts(doc["created_at"]) >= 3 - 0.002


def connection_to_other_worker(srv: Server, than: str) -> http.client.HTTPConnection:
    """A kept-alive connection that a worker other than ``than`` answers."""
    for _ in range(200):
        conn = http.client.HTTPConnection("127.0.0.1", srv.port, timeout=30)
        conn.request("GET", "/v1/jobs/00000000000000000000000000", headers=bearer(ALICE))
        answer = conn.getresponse()
        answer.read()
        if answer.getheader("X-Test-Worker") != than:
            return conn
        conn.close()
    raise AssertionError("the other worker never answered")


def test_a_cancel_taken_by_another_worker_stops_the_job_where_it_runs(
    server_factory: Callable[..., Server],
) -> None:
    """With two workers, a DELETE that another worker takes asks the job's own worker to
    stop it (through the store); it stops, and the DELETE answers 200 cancelled."""
    srv = server_factory(workers=2)
    r = srv.post("/test/jobs/test.cooperative", json={}, headers={"Connection": "close"})
    job_id, runner = r.json()["job"], r.headers["X-Test-Worker"]
    until(lambda: srv.get(f"/v1/jobs/{job_id}").json()["state"] == "running", "it runs")
    conn = connection_to_other_worker(srv, runner)
    conn.request("DELETE", f"/v1/jobs/{job_id}", headers=bearer(ALICE))
    answer = conn.getresponse()
    doc = orjson.loads(answer.read())
    conn.close()
    assert answer.status == 200, doc
    assert answer.getheader("X-Test-Worker") != runner
    assert (doc["state"], doc["cancel"]["how"]) == ("cancelled", "stopped")


def test_on_a_fleet_a_delayed_job_runs_on_another_host_after_its_host_is_killed(
    server_factory: Callable[..., Server], redis_url: str
) -> None:
    """A job delayed on host a, which is SIGKILLed before its time, runs on host b when it
    comes due; retries and cancels work across the fleet too."""
    a = server_factory("a", env=fleet_env(redis_url))
    b = server_factory("b", env=fleet_env(redis_url))
    r = a.post("/test/jobs/test.where", json={"seconds": 0}, headers={"Job-Delay": "2"})
    assert r.status == 202, r
    delayed = r.json()["job"]
    assert b.get(f"/v1/jobs/{delayed}").json()["state"] == "scheduled"
    a.kill_all()
    doc = b.wait_final(delayed, timeout=60)
    assert doc["state"] == "succeeded"
    assert ts(doc["started_at"]) - ts(doc["created_at"]) >= 2 - 0.002
    assert b.get(f"/v1/jobs/{delayed}/result").json()["state_dir"] == str(b.state_dir)

    flaky = b.post("/test/jobs/test.flaky", json={"path": str(b.state_dir / "n")}).json()["job"]
    doc = b.wait_final(flaky, timeout=60)
    assert (doc["state"], doc["attempts"], len(doc["failed_attempts"])) == ("succeeded", 3, 2)

    a.start()
    running = submit(b, "test.cooperative")
    until(lambda: a.get(f"/v1/jobs/{running}").json()["state"] == "running", "it runs")
    gone = a.delete(f"/v1/jobs/{running}")  # a cancel on the host that does not run it
    assert gone.status == 200, gone
    assert (gone.json()["state"], gone.json()["cancel"]["how"]) == ("cancelled", "stopped")
    later = b.post("/test/jobs/test.echo", json={}, headers={"Job-Delay": "600"})
    cancelled = a.delete(f"/v1/jobs/{later.json()['job']}")
    assert cancelled.json()["cancel"]["how"] == "dequeued"
    time.sleep(0.1)
    assert b.get(f"/v1/jobs/{later.json()['job']}").json()["state"] == "cancelled"
