"""GET /v1/jobs: a client's own jobs, newest first, filtered, a cursor at a time; and the
SQLite plans behind it walk an index, never every job."""

from __future__ import annotations

import asyncio
import datetime as dt
import sqlite3
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from falcon import testing

from service.jobs.sqlite.schema import SCHEMA, list_jobs_sql
from tests.clients import BOB, bearer
from tests.test_inprocess import final


async def walk(c: testing.ASGIConductor, query: str, during: Callable[[], Any] | None = None,
               headers: dict[str, str] | None = None) -> list[str]:  # fmt: skip
    """Every job id a cursor walk of ``query`` gives, page after page."""
    seen: list[str] = []
    cursor = ""
    while True:
        r = await c.simulate_get(f"/v1/jobs?{query}{cursor}", headers=headers)
        assert r.status_code == 200, r.text
        seen += [doc["id"] for doc in r.json["jobs"]]
        if during is not None:
            await during()
        if r.json["next_cursor"] is None:
            return seen
        cursor = f"&cursor={r.json['next_cursor']}"


async def test_a_cursor_walk_sees_every_job_once_while_new_ones_arrive(
    client: testing.ASGIConductor,
) -> None:
    """Pages of 3 walk all 10 jobs exactly once, newest first, though a new job arrives
    after each page; bob's jobs never appear in alice's walk, nor hers in his."""
    mine = [(await client.simulate_post("/v1/echo", json={"n": i})).json["job"] for i in range(10)]
    theirs = (await client.simulate_post("/v1/echo", json={}, headers=bearer(BOB))).json["job"]
    arrived: list[str] = []

    async def one_more() -> None:
        arrived.append((await client.simulate_post("/v1/echo", json={})).json["job"])

    seen = await walk(client, "limit=3", during=one_more)
    assert seen[: len(mine)] == sorted(mine, reverse=True) or set(mine) <= set(seen)
    assert len(seen) == len(set(seen))  # once each
    assert set(mine) <= set(seen)
    assert set(seen) <= set(mine) | set(arrived)  # only hers, none of bob's
    assert seen == sorted(seen, reverse=True)
    assert theirs not in seen
    assert await walk(client, "limit=50", headers=bearer(BOB)) == [theirs]


async def test_listing_filters_by_state_name_and_time(
    client: testing.ASGIConductor, tmp_path: Path
) -> None:
    """state (one or several), job and created_after/before select the jobs they name; a
    listed document is the job's document."""
    ok = (await client.simulate_post("/v1/echo", json={})).json["job"]
    bad = (await client.simulate_post("/test/jobs/test.fail", json={"message": "x"})).json["job"]
    await asyncio.sleep(0.01)  # ids count milliseconds: the next job is in a later one
    later = (
        await client.simulate_post("/test/jobs/test.echo", json={}, headers={"Job-Delay": "600"})
    ).json["job"]
    await final(client, ok)
    await final(client, bad)

    async def ids(query: str) -> list[str]:
        return await walk(client, query)

    assert await ids("state=failed") == [bad]
    assert await ids("state=succeeded,failed") == [bad, ok]
    assert await ids("state=scheduled") == [later]
    assert await ids("job=test.fail") == [bad]
    assert await ids("job=test.echo&state=scheduled") == [later]
    created = (await client.simulate_get(f"/v1/jobs/{bad}")).json["created_at"]
    stamp = dt.datetime.fromisoformat(created.replace("Z", "+00:00"))
    assert await ids(f"created_after={created}") == [later, bad]
    before = (stamp + dt.timedelta(milliseconds=1)).isoformat().replace("+00:00", "Z")
    assert await ids(f"created_before={before}") == [bad, ok]
    page = (await client.simulate_get("/v1/jobs?state=failed")).json
    assert page["jobs"][0] == (await client.simulate_get(f"/v1/jobs/{bad}")).json


@pytest.mark.parametrize(
    "query",
    ["state=done", "limit=0", "limit=201", "limit=x", "created_after=yesterday", "cursor=abc",
     "colour=red", "state=failed&state=queued", "state=", "job="],
)  # fmt: skip
async def test_bad_listing_queries_are_422(client: testing.ASGIConductor, query: str) -> None:
    """An unknown state, a limit out of 1..JOBPOOL_LIST_MAX, a time that is not RFC 3339,
    a cursor this service did not give, an unknown or repeated parameter: 422."""
    r = await client.simulate_get(f"/v1/jobs?{query}")
    assert r.status_code == 422, r.text
    assert r.headers["content-type"] == "application/problem+json"


async def test_a_cursor_only_serves_the_filters_it_was_made_for(
    client: testing.ASGIConductor,
) -> None:
    """A cursor given with other filters, or by another client, is refused (422)."""
    for _ in range(3):
        await client.simulate_post("/v1/echo", json={})
    cursor = (await client.simulate_get("/v1/jobs?limit=1")).json["next_cursor"]
    assert cursor is not None
    assert (await client.simulate_get(f"/v1/jobs?limit=1&cursor={cursor}")).status_code == 200
    assert (
        await client.simulate_get(f"/v1/jobs?limit=1&state=queued&cursor={cursor}")
    ).status_code == 422
    other = await client.simulate_get(f"/v1/jobs?limit=1&cursor={cursor}", headers=bearer(BOB))
    assert other.status_code == 422


@pytest.mark.parametrize(
    ("filters", "index"),
    [
        ({"owner": True, "states": 0, "succeeded": False, "name": False}, "jobs_by_owner"),
        ({"owner": True, "states": 1, "succeeded": False, "name": False}, "jobs_unsucceeded"),
        ({"owner": True, "states": 1, "succeeded": False, "name": True}, "jobs_unsucceeded"),
        ({"owner": True, "states": 1, "succeeded": True, "name": False}, "jobs_by_owner"),
        ({"owner": True, "states": 0, "succeeded": False, "name": True}, "jobs_by_owner"),
    ],
)
def test_each_listing_walks_an_index(tmp_path: Path, filters: dict[str, Any], index: str) -> None:
    """SQLite's plan for each kind of listing searches one of the listing indexes (no
    scan of the table, no sort of what it found)."""
    conn = sqlite3.connect(tmp_path / "plan.db")
    conn.executescript(SCHEMA)
    conn.execute("ANALYZE")
    sql = list_jobs_sql(**filters, id_from=True, id_below=True)
    params = ["x"] * (sql.count("?"))
    plan = " ".join(row[-1] for row in conn.execute(f"EXPLAIN QUERY PLAN {sql}", params))
    assert f"USING INDEX {index}" in plan or f"USING COVERING INDEX {index}" in plan, plan
    assert "SCAN jobs" not in plan.replace(f"SCAN jobs USING INDEX {index}", ""), plan
    conn.close()
