"""A job that ends while the store refuses writes is not left ``running``: its end is kept
and written once the store takes writes again (in-process, the real SQLite store made
read-only for a while with ``PRAGMA query_only``)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path
from typing import Any

import falcon.asgi
from falcon import testing

from service.app import create_app
from service.config import Settings
from service.jobs.layer import JobLayer
from service.jobs.sqlite.store import SqliteStore
from tests.clients import ALICE, bearer
from tests.conftest import SEED_BATCH
from tests.extension import extend


def app_and_layer(settings: Settings) -> tuple[Any, JobLayer]:
    found: list[JobLayer] = []

    def keep(app: falcon.asgi.App[Any, Any], layer: JobLayer, s: Settings) -> None:
        extend(app, layer, s)
        found.append(layer)

    app = create_app(settings, extend=keep)
    return app, found[0]


def read_only(layer: JobLayer, on: bool) -> None:
    store = layer.store
    assert isinstance(store, SqliteStore)
    assert store._conn is not None
    store._conn.execute(f"PRAGMA query_only = {'ON' if on else 'OFF'}")


async def state_of(c: testing.ASGIConductor, job_id: str) -> str:
    return str((await c.simulate_get(f"/v1/jobs/{job_id}")).json["state"])


async def until(check: Callable[[], Any], what: str) -> None:
    for _ in range(300):  # 30 s at most; the janitor runs every second here
        if await check():
            return
        await asyncio.sleep(0.1)
    raise AssertionError(f"never: {what}")


async def test_an_end_the_store_refused_is_written_when_it_recovers(
    make_settings: Callable[..., Settings], tmp_path: Path
) -> None:
    app, layer = app_and_layer(make_settings(parcel_latency_ms=(300, 300)))
    gate = tmp_path / "go"
    async with testing.ASGIConductor(app, headers=bearer(ALICE)) as c:
        single = await c.simulate_post("/test/jobs/test.wait_for", json={"path": str(gate)})
        batch = await c.simulate_post("/v1/parcels", json=SEED_BATCH)
        assert (single.status_code, batch.status_code) == (202, 202)
        single_id, batch_id = single.json["job"], batch.json["job"]
        read_only(layer, True)
        gate.touch()

        async def both_held() -> bool:
            return len(layer.unwritten) == 2

        await until(both_held, "both ends refused and held")
        assert await state_of(c, single_id) == "running"
        assert await state_of(c, batch_id) == "running"
        read_only(layer, False)

        async def both_written() -> bool:
            return not layer.unwritten

        await until(both_written, "the held ends written")
        assert await state_of(c, single_id) == "succeeded"
        assert (await c.simulate_get(f"/v1/jobs/{single_id}/result")).json == {
            "released": str(gate)
        }
        doc = (await c.simulate_get(f"/v1/jobs/{batch_id}")).json
        assert doc["state"] == "succeeded"
        assert doc["items"] == {"total": 9, "done": 9, "failed": 0}
        first = SEED_BATCH["Data"][0]
        assert (await c.simulate_get(f"/v1/parcels/{first['id']}")).json == first
