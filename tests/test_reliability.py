"""Reliability: a 202 is a promise. Each test does the damage for real to the real server
and then checks the ledger: every job it was promised, in the exact final state."""

from __future__ import annotations

import os
import signal
import sqlite3
import threading
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psutil
import urllib3

from tests.clients import ALICE, bearer
from tests.conftest import SEED_BATCH
from tests.imagegen import photo_like
from tests.server import Response, Server

FINAL = {"succeeded", "failed", "cancelled"}


def ledger(srv: Server, ids: list[str], within: float = 60) -> dict[str, dict[str, Any]]:
    """The final document of every job in ``ids``; fails if any is not final in time."""
    return {job_id: srv.wait_final(job_id, within) for job_id in ids}


def rows_in_state(state_dir: Path, state: str) -> int:
    """Jobs in ``state`` across the SQLite shards, read straight from the files."""
    total = 0
    for db in state_dir.glob("jobs-*.db"):
        with sqlite3.connect(db) as conn:
            total += conn.execute("SELECT count(*) FROM jobs WHERE state = ?", (state,)).fetchone()[
                0
            ]
    return total


def wait_for_new_worker(srv: Server, old: set[int], within: float = 30) -> None:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        pids = set(srv.worker_pids())
        if pids and not pids & old and len(pids) >= (srv.workers or 1):
            try:
                if srv.get("/readyz").status == 200:
                    return
            except urllib3.exceptions.HTTPError:
                pass
        time.sleep(0.1)
    raise AssertionError("no replacement worker came up")


def submit_sleepers(srv: Server, n: int, seconds: float) -> list[str]:
    ids = []
    for i in range(n):
        r = srv.post("/test/jobs/test.sleep", json={"seconds": seconds, "tag": str(i)})
        assert r.status == 202, r
        ids.append(r.json()["job"])
    return ids


def test_killed_worker_jobs_are_run_again(server_factory: Callable[..., Server]) -> None:
    """SIGKILL a worker holding running and queued jobs: all succeed, the cut-off ones on a
    second attempt."""
    srv = server_factory(workers=1, env={"JOBPOOL_IO_THREADS": "2"})
    ids = submit_sleepers(srv, 6, 3.0)
    running = [i for i in ids if srv.get(f"/v1/jobs/{i}").json()["state"] == "running"]
    assert 1 <= len(running) <= 2  # the rest are queued behind them
    old = set(srv.worker_pids())
    os.kill(next(iter(old)), signal.SIGKILL)
    wait_for_new_worker(srv, old)
    docs = ledger(srv, ids)
    assert {d["state"] for d in docs.values()} == {"succeeded"}
    rerun = {i for i, d in docs.items() if d["attempts"] == 2}
    # What ran when the worker died ran again; a 3 s job cannot have ended in between.
    assert set(running) <= rerun
    assert len(rerun) <= 2
    assert all(d["attempts"] in (1, 2) for d in docs.values())


def test_a_job_that_kills_its_worker_is_failed_after_max_attempts(
    server_factory: Callable[..., Server],
) -> None:
    """A job whose every run kills its worker is run JOBPOOL_MAX_ATTEMPTS times, then failed."""
    srv = server_factory(workers=1, env={"JOBPOOL_MAX_ATTEMPTS": "2"})
    fine = submit_sleepers(srv, 2, 0.1)
    poison = srv.post("/test/jobs/test.kill_worker", json={}).json()["job"]
    doc = srv.wait_final(poison, 60)
    assert doc["state"] == "failed"
    assert doc["error"].startswith("gave up after 2 attempts")
    assert doc["attempts"] == 3  # the third start is where it was given up
    assert {d["state"] for d in ledger(srv, fine).values()} == {"succeeded"}


def test_whole_server_killed_then_restarted_runs_every_accepted_job(
    server_factory: Callable[..., Server], tmp_path: Path
) -> None:
    """SIGKILL master and workers: a new server on the same state dir runs every 202 job."""
    srv = server_factory("state", workers=2, env={"JOBPOOL_IO_THREADS": "2"})
    ids = submit_sleepers(srv, 10, 0.5)
    batch = srv.post("/v1/parcels", json=SEED_BATCH).json()["job"]
    srv.kill_all()
    assert rows_in_state(tmp_path / "state", "succeeded") < 11  # not all were done
    again = server_factory("state", workers=2)
    docs = ledger(again, [*ids, batch])
    assert Counter(d["state"] for d in docs.values()) == Counter({"succeeded": 11})
    for item in SEED_BATCH["Data"]:
        assert again.get(f"/v1/parcels/{item['id']}").json() == item


def test_sigterm_finishes_running_jobs_and_keeps_queued_ones(
    server_factory: Callable[..., Server], tmp_path: Path
) -> None:
    """On SIGTERM running jobs finish, queued ones stay queued (none left running) and run
    at the next start."""
    srv = server_factory("state", workers=1, env={"JOBPOOL_IO_THREADS": "2",
                                                  "JOBPOOL_GRACEFUL_TIMEOUT_S": "20"})  # fmt: skip
    ids = submit_sleepers(srv, 8, 1.5)
    time.sleep(0.3)
    running = [i for i in ids if srv.get(f"/v1/jobs/{i}").json()["state"] == "running"]
    assert len(running) == 2
    # An idle kept-alive connection, as a load balancer holds: it must not delay the drain.
    idle = urllib3.PoolManager()
    idle.request("GET", srv.url("/healthz"))
    assert srv.stop(signal.SIGTERM, timeout=60) == 0
    state = tmp_path / "state"
    assert rows_in_state(state, "running") == 0
    assert rows_in_state(state, "succeeded") == 2
    assert rows_in_state(state, "queued") == 6
    again = server_factory("state", workers=1)
    docs = ledger(again, ids)
    assert {d["state"] for d in docs.values()} == {"succeeded"}
    assert all(docs[i]["attempts"] == 1 for i in ids)
    idle.clear()


def test_overload_refuses_fast_and_loses_nothing(server_factory: Callable[..., Server]) -> None:
    """At ~3x the cpu pool's capacity every answer is 202 or 503 + Retry-After, memory stays
    bounded, /healthz answers, and every 202 job completes."""
    srv = server_factory(workers=2, env={"JOBPOOL_CPU_WORKERS": "2", "JOBPOOL_CPU_QUEUE_MAX": "6"})
    assert srv.proc is not None
    master = psutil.Process(srv.proc.pid)
    # Capacity: 2 processes x (1 / 0.2 s) = 10 jobs/s. Offered: 6 clients without pause.
    stop = threading.Event()
    statuses: Counter[int] = Counter()
    accepted: list[str] = []
    missing_retry_after = 0
    health_failures = 0
    peak_rss = 0
    lock = threading.Lock()

    def client() -> None:
        nonlocal missing_retry_after
        http = urllib3.PoolManager(retries=False, timeout=urllib3.Timeout(connect=5, read=10))
        while not stop.is_set():
            r = http.request(
                "POST", srv.url("/test/jobs/test.cpu_spin"), body=b'{"seconds": 0.2}',
                headers={"Content-Type": "application/json", **bearer(ALICE)},
            )  # fmt: skip
            with lock:
                statuses[r.status] += 1
                if r.status == 202:
                    accepted.append(r.json()["job"])
                elif r.status == 503 and "Retry-After" not in r.headers:
                    missing_retry_after += 1
            if r.status == 503:
                time.sleep(0.03)

    threads = [threading.Thread(target=client) for _ in range(6)]
    for t in threads:
        t.start()
    deadline = time.monotonic() + 6
    health = urllib3.PoolManager(retries=False, timeout=urllib3.Timeout(connect=2, read=2))
    while time.monotonic() < deadline:
        try:
            if health.request("GET", srv.url("/healthz")).status != 200:
                health_failures += 1
        except urllib3.exceptions.HTTPError:
            health_failures += 1
        family = [master, *master.children(recursive=True)]
        peak_rss = max(peak_rss, sum(p.memory_info().rss for p in family if p.is_running()))
        time.sleep(0.1)
    stop.set()
    for t in threads:
        t.join()
    assert set(statuses) <= {202, 503}, statuses
    assert statuses[503] > statuses[202] // 2, statuses  # the load really was over capacity
    assert missing_retry_after == 0
    assert health_failures == 0
    assert peak_rss < 600 * 2**20, f"{peak_rss / 2**20:.0f} MiB"
    docs = ledger(srv, accepted, within=120)
    assert {d["state"] for d in docs.values()} == {"succeeded"}


def test_timeouts_fail_the_job_and_kill_a_stuck_cpu_process(server: Server, tmp_path: Path) -> None:
    """An io task past its timeout fails as timed out; a stuck cpu process is killed and
    replaced, and the pool keeps serving."""
    io = server.post("/test/jobs/test.io_stuck", json={"seconds": 3}, headers={"Prefer": "wait=20"})
    assert io.json()["state"] == "failed"
    assert io.json()["error"] == "timed out after 1 s"
    pid_file = tmp_path / "stuck.pid"
    cpu = server.post("/test/jobs/test.cpu_stuck_pid", json={"pid_file": str(pid_file)},
                      headers={"Prefer": "wait=20"})  # fmt: skip
    assert cpu.json()["state"] == "failed"
    assert cpu.json()["error"] == "timed out after 1 s"
    stuck = int(pid_file.read_text())
    deadline = time.monotonic() + 10
    while alive(stuck):
        assert time.monotonic() < deadline, "the stuck process was left running"
        time.sleep(0.05)
    after = server.post(
        "/test/jobs/test.cpu_spin", json={"seconds": 0.01}, headers={"Prefer": "wait=20"}
    )
    assert after.status == 200
    assert after.json()["pid"] != stuck


def alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie, or a process gone while we look, does not)."""
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def test_a_worker_told_to_stop_while_it_boots_stops(server: Server) -> None:
    """SIGTERM to a worker still loading the app (uvloop would drop it) stops that worker
    by itself, gracefully, and the master replaces it; the log stays JSON throughout."""
    old = server.worker_pids()
    os.kill(old[0], signal.SIGKILL)
    deadline = time.monotonic() + 30
    while not (booting := [p for p in server.worker_pids() if p not in old]):
        assert time.monotonic() < deadline, "the killed worker was not replaced"
        time.sleep(0.005)
    # Past gunicorn's own window (fork to its post_fork hook, which logs this line first),
    # and the app takes ~0.5 s to load after: it is loading now.
    while f"Booting worker with pid: {booting[0]}" not in server.log():
        assert time.monotonic() < deadline, "the new worker did not log its boot"
        time.sleep(0.005)
    os.kill(booting[0], signal.SIGTERM)
    while f"Worker exiting (pid: {booting[0]})" not in server.log():
        assert time.monotonic() < deadline, "the worker signalled while booting kept running"
        time.sleep(0.05)
    while len(server.worker_pids()) != 2 or booting[0] in server.worker_pids():
        assert time.monotonic() < deadline, "the stopped worker was not replaced"
        time.sleep(0.05)
    assert server.get("/healthz").status == 200
    # The SIGKILLed worker's leftovers (its resource tracker's warning) are no plain text.
    plain = [line for line in server.log().splitlines() if line and not line.startswith("{")]
    assert plain == []


def test_idle_kept_alive_connections_do_not_hold_a_stop(
    server_factory: Callable[..., Server],
) -> None:
    """SIGTERM with idle kept-alive connections open (a load balancer holds many): each
    worker closes them and exits by itself, none is killed at the graceful timeout."""
    srv = server_factory(env={"JOBPOOL_GRACEFUL_TIMEOUT_S": "15"})
    idle = [urllib3.HTTPConnectionPool("127.0.0.1", srv.port, maxsize=1) for _ in range(8)]
    served = {pool.request("GET", "/healthz").status for pool in idle}
    assert served == {200}
    workers = srv.worker_pids()
    assert srv.stop(signal.SIGTERM, timeout=60) == 0
    log = srv.log()
    for pid in workers:
        assert f"Worker exiting (pid: {pid})" in log
    assert "Forcing close" not in log
    for pool in idle:
        pool.close()


def until_refused(submit: Callable[[], Response], tries: int, why: str) -> list[str]:
    """Submit ``tries`` times: each answer is a 202 or a 503 whose detail names ``why``, and
    there are both. Returns the accepted job ids."""
    accepted, refused = [], 0
    for _ in range(tries):
        r = submit()
        if r.status == 202:
            accepted.append(r.json()["job"])
        else:
            assert r.status == 503, r
            assert why in r.json()["detail"]
            refused += 1
    assert accepted
    assert refused > 0
    return accepted


def test_a_full_store_answers_503_and_never_acknowledges_an_unstored_job(
    server_factory: Callable[..., Server],
) -> None:
    """With the store at its size cap, submits get 503; every job that got a 202 is stored."""
    srv = server_factory(workers=1, env={"JOBPOOL_STORE_MAX_BYTES": str(256 * 1024)})
    big = {"Data": [{**item, "data": "z" * 2000} for item in SEED_BATCH["Data"]]}
    accepted = until_refused(lambda: srv.post("/v1/parcels", json=big), 200, "store")
    for job_id in accepted:
        assert srv.get(f"/v1/jobs/{job_id}").status == 200
    assert srv.get("/healthz").status == 200


def test_payload_files_at_their_cap_answer_503_and_lose_nothing(
    server_factory: Callable[..., Server],
) -> None:
    """Images are payload files: past JOBPOOL_PAYLOAD_MAX_BYTES an upload gets 503, and
    every image that got a 202 is processed and readable."""
    image = photo_like(900, 700, seed=3)
    cap = 6 * len(image)
    srv = server_factory(workers=1, env={"JOBPOOL_PAYLOAD_MAX_BYTES": str(cap)})

    def upload() -> Response:
        return srv.post(
            "/v1/images?op=grayscale&format=png", body=image,
            headers={"Content-Type": "image/jpeg"},
        )  # fmt: skip

    accepted = until_refused(upload, 30, "JOBPOOL_PAYLOAD_MAX_BYTES")
    for job_id in accepted:
        assert srv.wait_final(job_id, timeout=60)["state"] == "succeeded"
        result = srv.get(f"/v1/jobs/{job_id}/result")
        assert result.status == 200
        assert result.headers["Content-Type"] == "image/png"
    assert srv.get("/healthz").status == 200
