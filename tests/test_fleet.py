"""Fleet mode with the real server: gunicorn hosts sharing one Redis, killed and cut off."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from tests.conftest import SEED_BATCH
from tests.redis_server import RedisServer
from tests.server import Server

#: A bound so a broken test stops by itself, not a speed check: generous for a loaded machine.
DEADLINE_S = 90.0


def fleet_env(url: str, **extra: str) -> dict[str, str]:
    return {
        "JOBPOOL_STORE_URL": url,
        "JOBPOOL_LEASE_S": "2",
        "JOBPOOL_JANITOR_INTERVAL_S": "1",
        "JOBPOOL_IO_THREADS": "2",
        "JOBPOOL_CPU_WORKERS": "1",
        **extra,
    }


def submit(srv: Server, name: str, **args: Any) -> str:
    r = srv.post(f"/test/jobs/{name}", json=args)
    assert r.status == 202, r
    job_id: str = r.json()["job"]
    return job_id


def states(srv: Server, ids: list[str]) -> list[str]:
    return [srv.get(f"/v1/jobs/{i}").json()["state"] for i in ids]


def until(check: Callable[[], bool], what: str, within: float = DEADLINE_S) -> None:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.05)
    raise AssertionError(f"not within {within} s: {what}")


def test_two_hosts_share_jobs_and_one_finishes_what_a_killed_one_held(
    server_factory: Callable[..., Server], redis_url: str
) -> None:
    """Jobs are read and cancelled across hosts; SIGKILL one, the other runs all it held."""
    a = server_factory("a", env=fleet_env(redis_url))
    b = server_factory("b", env=fleet_env(redis_url))

    # Across hosts: a accepts more than it can run; b runs the rest; b cancels a queued one.
    spread = [submit(a, "test.where", seconds=1.5) for _ in range(8)]  # 2 hosts x 4 threads
    extra = submit(a, "test.where", seconds=0)
    assert b.get(f"/v1/jobs/{extra}").json()["state"] == "queued"
    cancelled = b.delete(f"/v1/jobs/{extra}")
    assert cancelled.status == 200
    assert cancelled.json()["state"] == "cancelled"
    waited = b.get(f"/v1/jobs/{spread[0]}", headers={"Prefer": "wait=20"})
    assert waited.json()["state"] == "succeeded", waited
    ran_on = {b.wait_final(i)["id"]: b.get(f"/v1/jobs/{i}/result").json() for i in spread}
    assert {r["state_dir"] for r in ran_on.values()} == {str(a.state_dir), str(b.state_dir)}
    assert a.get(f"/v1/jobs/{extra}").json()["state"] == "cancelled"

    # SIGKILL: a holds running jobs (io and cpu) and queued ones. b is restarting meanwhile
    # (stopped gracefully), so that nothing but a could have taken them before the kill.
    b.stop()
    running = [submit(a, "test.where", seconds=1.0) for _ in range(4)]
    running.append(submit(a, "test.cpu_where", seconds=1.0))
    queued = [submit(a, "test.where", seconds=0.2) for _ in range(4)]
    until(lambda: states(a, running) == ["running"] * 5, "a runs 4 io jobs and a cpu job")
    assert states(a, queued) == ["queued"] * 4
    a.kill_all()
    b.start()

    accepted = [*running, *queued]
    final = {}
    for job_id in accepted:
        final[job_id] = b.wait_final(job_id, timeout=DEADLINE_S)
    lost = [i for i in accepted if final[i]["state"] not in ("succeeded", "failed", "cancelled")]
    assert (len(accepted), len(final), lost) == (9, 9, [])
    assert all(doc["state"] == "succeeded" for doc in final.values()), final
    for job_id in [*running, *queued]:
        result = b.get(f"/v1/jobs/{job_id}/result").json()
        assert result["state_dir"] == str(b.state_dir)  # b ran every job a held
    assert {final[i]["attempts"] for i in running} == {2}  # cut off once, run once more
    assert {final[i]["attempts"] for i in queued} == {1}


def test_redis_stopped_and_started_again(
    server_factory: Callable[..., Server], redis_factory: Callable[[], RedisServer]
) -> None:
    """While Redis is down submits answer 503 (never 202) and readiness fails; then all is back."""
    redis = redis_factory()
    srv = server_factory("solo", workers=1, env=fleet_env(redis.url))
    before = srv.post("/v1/parcels", json=SEED_BATCH)
    assert before.status == 202
    straddling = submit(srv, "test.where", seconds=1.0)  # ends while Redis is down

    redis.stop()
    for _ in range(5):
        r = srv.post("/v1/parcels", json=SEED_BATCH)
        assert r.status == 503, r
        assert r.headers["Retry-After"]
        assert "unreachable" in r.json()["detail"]
    ready = srv.get("/readyz")
    assert ready.status == 503
    assert "store" in ready.json()["failing"]
    assert srv.get("/healthz").status == 200
    time.sleep(1.2)  # the straddling job ends now, its end cannot be written

    redis.start()
    answers: list[int] = []

    def accepted_again() -> bool:
        answers.append(srv.post("/v1/parcels", json=SEED_BATCH).status)
        return answers[-1] == 202

    until(accepted_again, "a submit is accepted after Redis is back", within=20)
    assert set(answers) <= {202, 503}
    until(lambda: srv.get("/readyz").status == 200, "ready again", within=20)
    for job_id in (before.json()["job"], straddling):
        doc = srv.wait_final(job_id, timeout=DEADLINE_S)
        assert doc["state"] == "succeeded", doc
    assert srv.wait_final(straddling)["attempts"] in (1, 2)  # run again if its end was lost


def test_queued_jobs_of_a_host_stopped_gracefully_run_on_another(
    server_factory: Callable[..., Server], redis_url: str
) -> None:
    """SIGTERM: the running job finishes there; the queued ones run on the next host up."""
    env = fleet_env(redis_url, JOBPOOL_IO_THREADS="1")
    a = server_factory("a", workers=1, env=env)
    running = submit(a, "test.where", seconds=2.0)  # a is busy until after its SIGTERM
    queued = [submit(a, "test.where", seconds=0) for _ in range(3)]
    assert states(a, [running, *queued]) == ["running", "queued", "queued", "queued"]
    assert a.stop() == 0  # graceful
    b = server_factory("b", workers=1, env=env)
    docs = {i: b.wait_final(i, timeout=DEADLINE_S) for i in [running, *queued]}
    assert {d["state"] for d in docs.values()} == {"succeeded"}
    assert b.get(f"/v1/jobs/{running}/result").json()["state_dir"] == str(a.state_dir)
    for job_id in queued:
        assert b.get(f"/v1/jobs/{job_id}/result").json()["state_dir"] == str(b.state_dir)
        assert docs[job_id]["attempts"] == 1
