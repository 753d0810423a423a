"""Idempotency-Key on submits (draft-ietf-httpapi-idempotency-key-header): the same key and
request is one job however often it comes, across workers, restarts, crashes and hosts."""

from __future__ import annotations

import asyncio
import concurrent.futures
import os
import signal
import time
from collections.abc import Callable
from typing import Any

import pytest
from falcon import testing

from tests.clients import BOB, bearer
from tests.conftest import SEED_BATCH
from tests.server import Server
from tests.test_fleet import fleet_env, until


def keyed(key: str, **more: str) -> dict[str, str]:
    return {"Idempotency-Key": key, **more}


async def test_the_same_key_and_request_is_the_same_job(client: testing.ASGIConductor) -> None:
    """A batch sent twice with one key answers with one job: same id, same Location, the
    second marked Idempotent-Replayed; the client has that one job only."""
    first = await client.simulate_post("/v1/parcels", json=SEED_BATCH, headers=keyed('"k-1"'))
    again = await client.simulate_post("/v1/parcels", json=SEED_BATCH, headers=keyed('"k-1"'))
    assert (first.status_code, again.status_code) == (202, 202)
    assert again.json["job"] == first.json["job"]
    assert again.headers["location"] == first.headers["location"]
    assert again.headers["idempotent-replayed"] == "true"
    assert "idempotent-replayed" not in first.headers
    listed = (await client.simulate_get("/v1/jobs")).json["jobs"]
    assert [doc["id"] for doc in listed] == [first.json["job"]]


async def test_a_key_with_another_request_is_422_and_keys_are_per_client(
    client: testing.ASGIConductor,
) -> None:
    """Reusing a key with another body is 422; another client's same key is its own job."""
    first = await client.simulate_post("/test/jobs/test.echo", json={"a": 1}, headers=keyed("x"))
    other = await client.simulate_post("/test/jobs/test.echo", json={"a": 2}, headers=keyed("x"))
    assert other.status_code == 422, other.text
    assert other.headers["content-type"] == "application/problem+json"
    delayed = await client.simulate_post(
        "/test/jobs/test.echo", json={"a": 1}, headers=keyed("x", **{"Job-Delay": "60"})
    )
    assert delayed.status_code == 422  # another Job-Delay is another request
    bobs = await client.simulate_post(
        "/test/jobs/test.echo", json={"a": 1}, headers={**keyed("x"), **bearer(BOB)}
    )
    assert bobs.status_code == 202
    assert bobs.json["job"] != first.json["job"]


@pytest.mark.parametrize(
    "key", ['""', "", '"', "a b", '"a"b"', "x" * 256, '"' + "x" * 256 + '"', "caf\u00e9", "a,b\x01"]
)
async def test_a_malformed_or_too_long_key_is_400(client: testing.ASGIConductor, key: str) -> None:
    """An empty key, one over JOBPOOL_IDEMPOTENCY_KEY_MAX, or one not a Structured Fields
    string nor a bare printable token is 400; nothing is stored."""
    r = await client.simulate_post("/test/jobs/test.echo", json={}, headers=keyed(key))
    assert r.status_code == 400, r.text
    assert (await client.simulate_get("/v1/jobs")).json["jobs"] == []


async def test_twenty_submits_of_one_key_at_once_make_one_job(
    client: testing.ASGIConductor,
) -> None:
    """Twenty concurrent submits with one key: one job; each answer is that job (202, a
    replay) or 409 (the first is still being accepted), never another job."""
    answers = await asyncio.gather(*(
        client.simulate_post("/v1/parcels", json=SEED_BATCH, headers=keyed('"same"'))
        for _ in range(20)
    ))  # fmt: skip
    assert {r.status_code for r in answers} <= {202, 409}
    ids = {r.json["job"] for r in answers if r.status_code == 202}
    assert len(ids) == 1
    assert [d["id"] for d in (await client.simulate_get("/v1/jobs")).json["jobs"]] == list(ids)


def post_many(srv: Server, n: int, body: dict[str, Any], key: str) -> list[Any]:
    """``n`` submits of one key at once, each on a connection of its own."""
    headers = {"Idempotency-Key": key, "Connection": "close"}
    with concurrent.futures.ThreadPoolExecutor(n) as pool:
        return list(pool.map(
            lambda _: srv.post("/v1/parcels", json=body, headers=headers), range(n)
        ))  # fmt: skip


def test_one_key_at_once_on_two_workers_makes_one_job(
    server_factory: Callable[..., Server],
) -> None:
    """Twenty submits of one key at once on the real two-worker server make one job."""
    srv = server_factory(workers=2)
    answers = post_many(srv, 20, SEED_BATCH, '"together"')
    assert {r.status for r in answers} <= {202, 409}, answers
    assert len({r.json()["job"] for r in answers if r.status == 202}) == 1
    assert len({r.headers["X-Test-Worker"] for r in answers}) >= 1
    assert len(srv.get("/v1/jobs").json()["jobs"]) == 1


def test_a_retry_after_the_accepting_worker_is_killed_is_the_same_job(
    server_factory: Callable[..., Server],
) -> None:
    """A submit is accepted, its worker SIGKILLed; the client's retry with the same key (on
    the restarted server: keys survive restarts) gets that job, not a second one."""
    srv = server_factory(workers=1)
    first = srv.post("/v1/parcels", json=SEED_BATCH, headers={"Idempotency-Key": "crash-1"})
    assert first.status == 202
    os.kill(int(first.headers["X-Test-Worker"]), signal.SIGKILL)
    srv.stop()  # the whole server, too: the key is in the store, not in a process
    srv.start()
    again = srv.post("/v1/parcels", json=SEED_BATCH, headers={"Idempotency-Key": "crash-1"})
    assert again.status in (200, 202), again
    assert again.headers["Location"] == first.headers["Location"]
    assert again.headers["Idempotent-Replayed"] == "true"
    assert [d["id"] for d in srv.get("/v1/jobs").json()["jobs"]] == [first.json()["job"]]
    assert srv.wait_final(first.json()["job"])["state"] == "succeeded"


def test_on_a_fleet_a_key_holds_across_hosts(
    server_factory: Callable[..., Server], redis_url: str
) -> None:
    """With the Redis store, one key is one job whichever host takes each submit, also
    when twenty come at once to both hosts."""
    a = server_factory("a", env=fleet_env(redis_url))
    b = server_factory("b", env=fleet_env(redis_url))
    first = a.post("/v1/parcels", json=SEED_BATCH, headers={"Idempotency-Key": "fleet"})
    again = b.post("/v1/parcels", json=SEED_BATCH, headers={"Idempotency-Key": "fleet"})
    assert again.json()["job"] == first.json()["job"]
    assert again.headers["Idempotent-Replayed"] == "true"
    other = b.post("/v1/parcels", json={"Data": SEED_BATCH["Data"][:1]},
                   headers={"Idempotency-Key": "fleet"})  # fmt: skip
    assert other.status == 422
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        both = list(pool.map(lambda srv: post_many(srv, 10, SEED_BATCH, "fleet-2"), (a, b)))
    answers = [r for host in both for r in host]
    assert {r.status for r in answers} <= {202, 409}
    assert len({r.json()["job"] for r in answers if r.status == 202}) == 1
    until(lambda: len(a.get("/v1/jobs").json()["jobs"]) == 2, "two jobs, one per key")
    time.sleep(0.2)
    assert len(b.get("/v1/jobs").json()["jobs"]) == 2
