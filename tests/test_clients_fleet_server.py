"""Client limits across a fleet of real servers: two gunicorn hosts, one Redis, one client."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from service import ids
from tests.clients import BOB
from tests.server import Response, Server
from tests.test_fleet import DEADLINE_S, fleet_env, states, submit, until


@pytest.fixture
def gates(tmp_path: Path, server_factory: Callable[..., Server]) -> Iterator[Callable[[], Path]]:
    """New files test.wait_for jobs wait for; each appears at the end of the test at the
    latest (before the servers stop, so that a failed check leaves no job waiting)."""
    made: list[Path] = []

    def gate() -> Path:
        made.append(tmp_path / f"gate-{len(made)}")
        return made[-1]

    yield gate
    for path in made:
        path.touch()


def hold(srv: Server, gate: Path) -> Response:
    """Submit a job of alice's that runs until ``gate`` appears."""
    r = srv.post("/test/jobs/test.wait_for", json={"path": str(gate)})
    if r.status == 429:
        assert "JOBPOOL_CLIENT_MAX_INFLIGHT" in r.json()["detail"], r
        assert r.headers["Retry-After"] == "1"
    return r


def held(srv: Server, gate: Path) -> int:
    """The status of :func:`hold`."""
    return hold(srv, gate).status


def test_a_clients_job_cap_holds_across_hosts(
    server_factory: Callable[..., Server], redis_url: str, gates: Callable[[], Path]
) -> None:
    """JOBPOOL_CLIENT_MAX_INFLIGHT=4 is alice's in the fleet: 4 accepted over two hosts, not
    8; both refuse her while bob is served; once her jobs have ended she has 4 again."""
    cap = 4
    env = fleet_env(redis_url, JOBPOOL_CLIENT_MAX_INFLIGHT=str(cap), JOBPOOL_CLIENT_RATE="0")
    hosts = (server_factory("a", env=env), server_factory("b", env=env))
    first = gates()
    answers = [hold(hosts[i % 2], first) for i in range(3 * cap)]
    assert [r.status for r in answers] == [202] * cap + [429] * (2 * cap)  # on both hosts
    for srv in hosts:
        assert srv.post("/test/jobs/test.echo", json={}, key=BOB).status == 202

    first.touch()
    for r in answers[:cap]:
        assert hosts[1].wait_final(r.json()["job"], timeout=DEADLINE_S)["state"] == "succeeded"
    second = gates()  # a job stops counting in the step that ends it: nothing to wait for
    assert [held(hosts[i % 2], second) for i in range(2 * cap)] == [202] * cap + [429] * cap


def test_a_clients_rate_holds_across_hosts(
    server_factory: Callable[..., Server], redis_url: str
) -> None:
    """A burst of 6 at 0.01 request/s is alice's in the fleet: over two hosts (and their
    four workers) it admits the burst plus what the rate adds meanwhile, not twice that."""
    rate, burst = 0.01, 6
    env = fleet_env(redis_url, JOBPOOL_CLIENT_RATE=str(rate), JOBPOOL_CLIENT_BURST=str(burst))
    hosts = (server_factory("a", env=env), server_factory("b", env=env))
    unknown = ids.new_id()
    began = time.monotonic()
    answers: dict[int, list[int]] = {0: [], 1: []}
    for i in range(4 * burst):
        fresh = {"Connection": "close"}  # a new connection: any worker of the host answers
        answers[i % 2].append(hosts[i % 2].get(f"/v1/jobs/{unknown}", headers=fresh).status)
    elapsed = time.monotonic() - began
    admitted = sum(status == 404 for statuses in answers.values() for status in statuses)
    assert burst <= admitted <= burst + rate * elapsed
    for statuses in answers.values():
        assert set(statuses) == {404, 429}
        assert statuses[-1] == 429  # each host refuses once the fleet's bucket is spent
    assert [srv.get(f"/v1/jobs/{unknown}", key=BOB).status for srv in hosts] == [404, 404]


def test_the_jobs_of_a_killed_host_count_until_another_host_ends_them(
    server_factory: Callable[..., Server], redis_url: str, gates: Callable[[], Path]
) -> None:
    """SIGKILL a host holding alice's 3 jobs (her cap): they still count; the other host
    takes them over and ends them, and then she has exactly her 3 again."""
    cap = 3
    env = fleet_env(
        redis_url,
        JOBPOOL_CLIENT_MAX_INFLIGHT=str(cap),
        JOBPOOL_CLIENT_RATE="0",
        JOBPOOL_IO_THREADS="1",
    )
    a = server_factory("a", env=env)
    first = gates()
    jobs = [submit(a, "test.wait_for", path=str(first)) for _ in range(cap)]
    until(
        lambda: sorted(states(a, jobs)) == ["queued", "running", "running"],
        "a runs two (one thread per worker), one waits in the fleet's queue",
    )
    assert held(a, first) == 429
    a.kill_all()

    b = server_factory("b", env=env)
    assert held(b, first) == 429  # a's jobs are in flight still: running on no live host
    first.touch()
    docs = [b.wait_final(job, timeout=DEADLINE_S) for job in jobs]
    assert [doc["state"] for doc in docs] == ["succeeded"] * cap  # b took them over
    second = gates()
    assert [held(b, second) for _ in range(cap + 1)] == [202] * cap + [429]
