"""The job layer as one app sees it: its own registry, its own signal handler, and a fan-out
whose late calls are cancelled for real."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path
from typing import Any

import falcon.asgi
from falcon import testing

from service import signals
from service.app import create_app
from service.config import Settings
from service.jobs.cpu_pool import CpuPool
from service.jobs.io_pool import IoPool
from service.jobs.layer import JobLayer
from service.jobs.registry import registry
from service.jobs.sqlite.store import SqliteStore
from service.jobs.state import JobState
from service.jobs.tokens import HostTokens
from service.tasks.images import process
from tests import jobs_for_tests  # noqa: F401 - registers the test jobs
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
    _, short = app_and_layer(make_settings(image_timeout_s=5))
    _, long = app_and_layer(make_settings(image_timeout_s=500))
    assert short.registry.get("image").timeout_s == 5
    assert long.registry.get("image").timeout_s == 500
    assert registry.get("image").timeout_s == process.IMAGE_TIMEOUT_S


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


class CountingQuota:
    """A quota that refuses nothing and counts what each owner took and gave back."""

    def __init__(self) -> None:
        self.taken: dict[str, int] = {}
        self.given: dict[str, int] = {}

    def acquire(self, owner: str) -> None:
        self.taken[owner] = self.taken.get(owner, 0) + 1

    force = acquire

    def release(self, owner: str) -> None:
        self.given[owner] = self.given.get(owner, 0) + 1
        assert self.given[owner] <= self.taken.get(owner, 0), f"{owner} given back twice"


async def test_every_hold_is_given_back_once_whichever_way_its_job_leaves(
    tmp_path: Path,
) -> None:
    """Jobs that succeed, fail, run as a batch, are cancelled while they wait, or are cut
    off or left waiting at shutdown each give back their places and their client's count
    exactly once."""
    quota = CountingQuota()
    settings = Settings.from_env({}, state_dir=tmp_path, cpu_workers=1)
    layer = JobLayer(
        registry=registry,
        store=SqliteStore(tmp_path / "jobs", result_ttl_s=60, result_max=1 << 20),
        io_pool=IoPool(1),
        cpu_pool_factory=lambda slot: CpuPool(
            processes=1, nice=0, tokens=HostTokens(tmp_path / "tokens", 1)
        ),
        io_queue_max=100,
        cpu_queue_max=10,
        admission_wait_s=0,
        max_attempts=settings.max_attempts,
        janitor_interval_s=60,
        quota=quota,
    )
    await layer.start()
    gate = tmp_path / "go"
    ok = await layer.submit("test.echo", {"a": 1}, owner="ok")
    await layer.wait(ok.id, 20)
    bad = await layer.submit("test.fail", {"message": "no"}, owner="bad")
    await layer.wait(bad.id, 20)
    batch = await layer.submit_batch("test.slow_item", [1, 2, 3], owner="batch")
    await layer.wait(batch.id, 20)
    cpu = await layer.submit("test.cpu_fail", {"message": "no"}, owner="cpu")
    await layer.wait(cpu.id, 60)
    running = await layer.submit("test.wait_for", {"path": str(gate)}, owner="cut")
    waiting = await layer.submit("test.echo", {}, owner="cancelled")
    left = await layer.submit("test.echo", {}, owner="left")
    assert waiting.state is JobState.QUEUED  # the one thread is taken
    cancelled = await layer.cancel(waiting.id)
    assert cancelled is not None
    assert cancelled.state is JobState.CANCELLED
    await layer.close(drain_s=0.2)  # `running` is cut off, `left` never ran
    gate.touch()  # let the cut-off thread end
    for owner in ("ok", "bad", "batch", "cpu", "cut", "cancelled", "left"):
        assert quota.taken.get(owner) == 1, owner
        assert quota.given.get(owner) == 1, owner
    assert layer.admissions.pools["cpu"].in_use == 0
    for _ in range(200):  # the cut-off thread's place goes back when the thread ends
        if layer.admissions.pools["io"].in_use == 0:
            break
        await asyncio.sleep(0.05)
    assert layer.admissions.pools["io"].in_use == 0
    again = SqliteStore(tmp_path / "jobs", result_ttl_s=60, result_max=1 << 20)
    await again.open()
    assert {r.id for r in await again.unfinished()} == {running.id, left.id}  # run next start
    await again.close()
