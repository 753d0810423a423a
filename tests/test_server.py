"""The real gunicorn server on a loopback port: the Foundation's promises over HTTP."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.clients import ALICE, bearer
from tests.conftest import SEED_BATCH
from tests.server import Server, refused_start

CASES = Path(__file__).parent / "cases"


def bad_batches() -> list[tuple[int, str, bytes, str]]:
    rows = []
    for line in (CASES / "bad_batches.txt").read_text().splitlines():
        if line and not line.startswith("#"):
            status, ctype, body, must = line.split("\t")
            rows.append((int(status), ctype, body.encode(), must))
    return rows


def test_seed_batch_is_stored_and_readable_from_every_worker(server: Server) -> None:
    """The 9-item seed batch is accepted; each parcel reads back the same from any worker."""
    r = server.post("/v1/parcels", json=SEED_BATCH)
    assert r.status == 202
    assert r.json()["accepted"] == 9
    assert r.headers["Location"] == f"/v1/jobs/{r.json()['job']}"
    doc = server.wait_final(r.json()["job"])
    assert doc["state"] == "succeeded"
    assert doc["items"] == {"total": 9, "done": 9, "failed": 0}
    # New connections land on either worker; both see every shard.
    for _ in range(4):
        for item in SEED_BATCH["Data"]:
            got = server.get(f"/v1/parcels/{item['id']}", headers={"Connection": "close"})
            assert got.json() == item
        assert server.get(f"/v1/jobs/{doc['id']}", headers={"Connection": "close"}).status == 200


def test_bad_inputs_get_clear_4xx_and_the_server_keeps_serving(server: Server) -> None:
    """Every row of the bad-input table gets its problem+json 4xx; then a good batch passes."""
    for status, ctype, body, must in bad_batches():
        headers = {"Content-Type": ctype} if ctype else {}
        r = server.post("/v1/parcels", body=body, headers=headers)
        assert r.status == status, (body, r)
        assert r.headers["Content-Type"] == "application/problem+json"
        assert must in r.json()["detail"], (must, r.json())
    assert server.post("/v1/parcels", json=SEED_BATCH).status == 202
    assert server.get("/healthz").status == 200


def test_limits_answer_413_and_422(server_factory: Callable[..., Server]) -> None:
    """A body over JOBPOOL_BODY_MAX is 413; more items than JOBPOOL_BATCH_MAX is 422."""
    srv = server_factory(env={"JOBPOOL_BODY_MAX": "2000", "JOBPOOL_BATCH_MAX": "5"})
    item = {"id": "x", "time": "2017-01-01T00:00:01Z", "data": "y" * 3000}
    r = srv.post("/v1/parcels", json={"Data": [item]})
    assert r.status == 413
    assert "JOBPOOL_BODY_MAX" in r.json()["detail"]
    r = srv.post("/v1/parcels", json=SEED_BATCH)
    assert r.status == 422
    assert "JOBPOOL_BATCH_MAX" in r.json()["detail"]
    chunked = srv.http.request(
        "POST",
        srv.url("/v1/parcels"),
        body=iter([b'{"Data": [', b" " * 2500, b"]}"]),
        headers={"Content-Type": "application/json", **bearer(ALICE)},
        chunked=True,
    )
    assert chunked.status == 413
    assert srv.get("/healthz").status == 200


def test_full_pool_answers_503_with_retry_after(server_factory: Callable[..., Server]) -> None:
    """When the io pool of the worker is full, submits get 503 and Retry-After, not a hang."""
    srv = server_factory(workers=1, env={"JOBPOOL_IO_QUEUE_MAX": "4", "JOBPOOL_IO_THREADS": "2"})
    answers = [srv.post("/test/jobs/test.sleep", json={"seconds": 2}).status for _ in range(6)]
    assert answers == [202, 202, 202, 202, 503, 503]
    r = srv.post("/test/batch/test.slow_item", json={"items": [1, 2]})
    assert r.status == 503
    assert r.headers["Retry-After"] == "1"
    # Parcels run inline, stored with their job: a full pool does not hold them back.
    assert srv.post("/v1/parcels", json={"Data": SEED_BATCH["Data"][:2]}).status == 202
    # 9 items never fit a pool of 4: no retry can help, so it is not a 503.
    assert srv.post("/v1/parcels", json=SEED_BATCH).status == 422
    assert srv.get("/healthz").status == 200


def test_new_endpoint_needs_no_new_pool(server: Server) -> None:
    """An endpoint added in a test module with its own job runs on the shared pools."""
    r = server.post("/v1/echo", json={"hello": "world"}, headers={"Prefer": "wait=10"})
    assert r.status == 200
    assert r.json() == {"body": {"hello": "world"}}
    assert r.headers["Preference-Applied"] == "wait=10"


def test_cpu_jobs_run_niced_in_another_process(server: Server) -> None:
    """A cpu job runs in a separate, niced process; an io job's answer stays the same."""
    r = server.post(
        "/test/jobs/test.cpu_spin", json={"seconds": 0.05}, headers={"Prefer": "wait=30"}
    )
    assert r.status == 200, r
    result = r.json()
    assert result["pid"] not in ([*server.worker_pids(), server.proc.pid if server.proc else 0])
    assert result["nice"] >= 10


def test_one_worker_uses_the_hosts_whole_cpu_budget(server_factory: Callable[..., Server]) -> None:
    """Jobs that all reach one worker (one kept-alive connection, as from a load balancer)
    run on as many processes at once as the host has cpu workers, and never on more."""
    srv = server_factory(workers=2, env={"JOBPOOL_CPU_WORKERS": "2"})
    ids = [srv.post("/test/jobs/test.cpu_span", json={"seconds": 0.4}).json()["job"]
           for _ in range(6)]  # fmt: skip
    runs = [srv.wait_final(i, timeout=60) for i in ids]
    assert {r["state"] for r in runs} == {"succeeded"}
    results = [srv.get(f"/v1/jobs/{i}/result").json() for i in ids]
    assert len({r["ppid"] for r in results}) == 1  # one worker's forkserver ran them all
    assert len({r["pid"] for r in results}) == 2
    edges = sorted([(r["began"], 1) for r in results] + [(r["ended"], -1) for r in results])
    running = most = 0
    for _, step in edges:
        running += step
        most = max(most, running)
    assert most == 2


def test_cancel_over_http(server_factory: Callable[..., Server]) -> None:
    """DELETE cancels a queued job (again: same answer); a job that ended answers 409."""
    srv = server_factory(workers=1, env={"JOBPOOL_IO_THREADS": "1"})
    running = srv.post("/test/jobs/test.sleep", json={"seconds": 1}).json()["job"]
    queued = srv.post("/test/jobs/test.sleep", json={"seconds": 0}).json()["job"]
    assert srv.delete(f"/v1/jobs/{queued}").json()["state"] == "cancelled"
    assert srv.delete(f"/v1/jobs/{queued}").json()["state"] == "cancelled"
    assert srv.wait_final(running)["state"] == "succeeded"
    assert srv.wait_final(queued)["state"] == "cancelled"
    conflict = srv.delete(f"/v1/jobs/{running}")
    assert conflict.status == 409
    assert "succeeded" in conflict.json()["detail"]
    assert "ended" in conflict.json()["detail"]


def test_a_bad_setting_stops_start_up_with_one_line(tmp_path: Path) -> None:
    """gunicorn with an invalid JOBPOOL_ variable exits at once with one line naming it."""
    env = {**os.environ, "JOBPOOL_IO_THREADS": "lots", "JOBPOOL_STATE_DIR": str(tmp_path)}
    status, lines = refused_start(env)
    assert status == 2
    assert lines == ["jobpool: JOBPOOL_IO_THREADS: 'lots' is not an integer"]


def test_unwritable_state_dir_stops_start_up(tmp_path: Path) -> None:
    """A state directory that cannot be written stops start-up with one clear line."""
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    env = {**os.environ, "JOBPOOL_STATE_DIR": str(blocker / "state")}
    status, lines = refused_start(env)
    assert status == 2
    assert lines[0].startswith("jobpool: JOBPOOL_STATE_DIR:")


@pytest.mark.parametrize("how", ["cli", "env"])
def test_command_line_and_gunicorn_cmd_args_override_the_config(
    server_factory: Callable[..., Server], how: str
) -> None:
    """-w on the command line or in GUNICORN_CMD_ARGS beats JOBPOOL_WORKERS."""
    env = {"JOBPOOL_WORKERS": "1"}
    if how == "env":
        env["GUNICORN_CMD_ARGS"] = "--workers 3"
        srv = server_factory(workers=None, env=env, expect_workers=3)
    else:
        srv = server_factory(workers=3, env=env)
    assert len(srv.worker_pids()) == 3


def test_large_bodies_on_one_kept_alive_connection(server: Server) -> None:
    """Every large upload on one kept-alive connection gets an answer (none dropped)."""
    from tests.imagegen import photo_like

    big = photo_like(2048, 1536, "jpeg")
    assert len(big) > 500_000
    answers = [
        server.post(
            "/v1/images?op=thumbnail&width=50&height=50",
            body=big,
            headers={"Content-Type": "image/jpeg"},
        ).status
        for _ in range(8)
    ]
    assert answers == [202] * 8
