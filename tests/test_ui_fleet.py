"""The dashboard of a fleet: two in-process hosts (each its own state dir) on one Redis."""

from __future__ import annotations

import asyncio
from pathlib import Path

from service.keys import env_entries
from tests.clients import ALICE, OPS, WITH_OPERATOR
from tests.test_fleet_inprocess import hosts
from tests.test_ui import FORM, SAME_SITE, log_in

#: Seconds within which a watched host publishes (its poll is 1 s).
PUBLISHED_WITHIN_S = 10.0


async def test_an_operator_sees_every_host_and_a_session_holds_on_all(
    redis_url: str, tmp_path: Path
) -> None:
    """Once someone watches, each host publishes its snapshot: the overview on host a
    lists both hosts; a session made on a is good on b (one secret in the Redis)."""
    settings = {"ui": True, "ui_poll_s": 1, "api_keys": env_entries(WITH_OPERATOR)}
    async with hosts(tmp_path, redis_url, "a", "b", **settings) as (a, b):
        ops = await log_in(a, OPS)
        assert (await b.get("/ui", headers=ops)).status_code == 200
        seen: set[str] = set()
        deadline = asyncio.get_running_loop().time() + PUBLISHED_WITHIN_S
        while len(seen) < 2 and asyncio.get_running_loop().time() < deadline:
            live = (await a.get("/ui/live.json", headers=ops)).json
            seen = {h["id"] for h in live["hosts"]}
            await asyncio.sleep(0.2)
        assert len(seen) == 2
        ids = {(tmp_path / name / "host-id").read_text().strip() for name in ("a", "b")}
        assert seen == ids


async def test_nobody_watching_publishes_nothing(redis_url: str, tmp_path: Path) -> None:
    """Without a dashboard open, no host writes its snapshot to the Redis; a client's
    figures never show the hosts."""
    import redis.asyncio

    settings = {"ui": True, "ui_poll_s": 1, "api_keys": env_entries(WITH_OPERATOR)}
    async with hosts(tmp_path, redis_url, "a", "b", **settings) as (a, _b):
        await asyncio.sleep(2.5)  # two polls of each host
        client = redis.asyncio.Redis.from_url(redis_url)
        try:
            assert await client.keys("jobpool:ui:host:*") == []
        finally:
            await client.aclose()
        alice = await log_in(a, ALICE)
        live = (await a.get("/ui/live.json", headers=alice)).json
        assert "hosts" not in live
        refused = await a.post("/ui/login", body="key=jp_nope", headers=FORM | SAME_SITE)
        assert refused.status_code == 401
