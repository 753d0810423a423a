"""The job layer as one app sees it: its own registry, its own signal handler, and a fan-out
whose late calls are cancelled for real."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import falcon.asgi
from falcon import testing

from service import signals
from service.app import create_app
from service.config import Settings
from service.jobs.layer import JobLayer
from service.jobs.registry import registry
from tests.clients import ALICE, bearer
from tests.extension import extend
from tests.providers import Provider


def app_and_layer(settings: Settings) -> tuple[Any, JobLayer]:
    found: list[JobLayer] = []

    def keep(app: falcon.asgi.App[Any, Any], layer: JobLayer, s: Settings) -> None:
        extend(app, layer, s)
        found.append(layer)

    return create_app(settings, extend=keep), found[0]


def test_two_apps_in_one_process_keep_their_own_job_timeouts(
    make_settings: Callable[..., Settings],
) -> None:
    """Each app applies its settings to a registry of its own; the declarations stay as
    declared."""
    declared = registry.get("image").timeout_s
    _, short = app_and_layer(make_settings(image_timeout_s=5))
    _, long = app_and_layer(make_settings(image_timeout_s=500))
    assert short.registry.get("image").timeout_s == 5
    assert long.registry.get("image").timeout_s == 500
    assert registry.get("image").timeout_s == declared


async def test_an_app_listens_for_sigterm_only_while_it_runs(
    make_settings: Callable[..., Settings],
) -> None:
    """The drain hook is added when the app starts and taken off when it stops, so apps
    made and stopped in one process leave no handlers behind."""
    before = len(signals._handlers)
    app = create_app(make_settings(), extend=extend)
    assert len(signals._handlers) == before  # made, not started
    async with testing.ASGIConductor(app, headers=bearer(ALICE)) as c:
        assert len(signals._handlers) == before + 1
        assert (await c.simulate_get("/healthz")).status_code == 200
    assert len(signals._handlers) == before


async def test_a_provider_past_the_deadline_is_cancelled_and_hung_up_on(
    conductor_for: Callable[..., testing.ASGIConductor],
) -> None:
    """The answer comes at the deadline with the slow provider reported, and that
    provider's connection is closed then, not when its own (long) timeout runs out."""
    items = [{"id": "1", "title": "t", "url": "https://x/1", "score": 1.0}]
    with Provider("ok", items=items) as fast, Provider("hang") as hang:
        settings: dict[str, Any] = {
            "search_providers": (("fast", fast.url), ("hang", hang.url)),
            "search_deadline_ms": 300,
            "search_provider_timeout_ms": 60_000,
        }
        async with conductor_for(**settings) as c:
            r = await c.simulate_get("/v1/search", params={"q": "x"})
            assert r.status_code == 200
            status = {p["name"]: p["status"] for p in r.json["providers"]}
            assert status == {"fast": "ok", "hang": "timeout"}
            assert [i["id"] for i in r.json["items"]] == ["1"]
            # Well before its 60 s timeout: the call was cancelled, its socket closed.
            assert await asyncio.to_thread(hang.hung_up.wait, 20)
