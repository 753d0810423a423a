"""Fixtures: settings on a temp state dir, the app in-process, the real server."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from falcon import testing
from hypothesis import settings as hypothesis_settings

from service.app import create_app
from service.config import Settings
from service.keys import env_entries
from tests.clients import ALICE, API_KEYS, bearer
from tests.extension import extend
from tests.redis_server import RedisServer, redis_server_binary
from tests.server import Server

# Property tests run the same examples every time (a run that fails, fails again), and with
# no deadline: on a shared machine an example's time says nothing about the code.
hypothesis_settings.register_profile("jobpool", deadline=None, derandomize=True)
hypothesis_settings.load_profile("jobpool")

SEED_BATCH = {
    "Data": [
        {"id": "1", "time": "2017-01-01T00:00:01Z", "data": "abc"},
        {"id": "2", "time": "2017-01-01T00:00:02Z", "data": "def"},
        {"id": "3", "time": "2017-01-01T00:00:03Z", "data": "ghi"},
        {"id": "4", "time": "2017-01-01T00:00:04Z", "data": "jkl"},
        {"id": "5", "time": "2017-01-01T00:00:05Z", "data": "mno"},
        {"id": "6", "time": "2017-01-01T00:00:06Z", "data": "pqr"},
        {"id": "7", "time": "2017-01-01T00:00:07Z", "data": "stu"},
        {"id": "8", "time": "2017-01-01T00:00:08Z", "data": "vwx"},
        {"id": "9", "time": "2017-01-01T00:00:09Z", "data": "yz0"},
    ]
}


@pytest.fixture
def make_settings(tmp_path: Path) -> Callable[..., Settings]:
    def make(**overrides: Any) -> Settings:
        base: dict[str, Any] = {
            "state_dir": tmp_path / "state",
            "cpu_workers": 2,
            "io_threads": 8,
            "janitor_interval_s": 1,
            "api_keys": env_entries(API_KEYS),  # auth is on: alice and bob
        }
        base.update(overrides)
        return Settings.from_env({}, **base)

    return make


@pytest.fixture
async def client(make_settings: Callable[..., Settings]) -> AsyncIterator[testing.ASGIConductor]:
    """The app in-process (lifespan included) with default test settings, as alice."""
    app = create_app(make_settings(), extend=extend)
    async with testing.ASGIConductor(app, headers=bearer(ALICE)) as conductor:
        yield conductor


@pytest.fixture
def conductor_for(
    make_settings: Callable[..., Settings],
) -> Callable[..., testing.ASGIConductor]:
    """An in-process app with the given setting overrides, as alice (``async with``)."""

    def make(**overrides: Any) -> testing.ASGIConductor:
        app = create_app(make_settings(**overrides), extend=extend)
        return testing.ASGIConductor(app, headers=bearer(ALICE))

    return make


@pytest.fixture
def server_factory(tmp_path: Path) -> Iterator[Callable[..., Server]]:
    """Start real gunicorn servers; every one still running is stopped at the end."""
    started: list[Server] = []

    def start(state: str = "state", **kw: Any) -> Server:
        srv = Server(tmp_path / state, **kw)
        started.append(srv)
        return srv.start()

    yield start
    for srv in started:
        srv.stop()


@pytest.fixture
def server(server_factory: Callable[..., Server]) -> Server:
    """One real gunicorn server (2 workers) with the test routes."""
    return server_factory()


@pytest.fixture(scope="session")
def redis_binary() -> str:
    """The redis-server program; the tests that need it skip without it (fail in CI)."""
    binary = redis_server_binary()
    if binary is None:
        message = "redis-server is not installed (apt-get install redis-server)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return binary


@pytest.fixture(scope="session")
def redis_session(
    redis_binary: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[RedisServer]:
    """One redis-server for the whole run, on a free loopback port."""
    srv = RedisServer(tmp_path_factory.mktemp("redis"), binary=redis_binary).start()
    yield srv
    srv.stop()


@pytest.fixture
def redis_url(redis_session: RedisServer) -> str:
    """The URL of the session's Redis, emptied for this test."""
    assert redis_session.command("FLUSHALL") == "+OK"
    return redis_session.url


@pytest.fixture
def redis_factory(redis_binary: str, tmp_path: Path) -> Iterator[Callable[[], RedisServer]]:
    """Redis servers of a test's own (to stop and start); every one is stopped at the end."""
    started: list[RedisServer] = []

    def start() -> RedisServer:
        srv = RedisServer(tmp_path / f"redis-{len(started)}", binary=redis_binary)
        started.append(srv)
        return srv.start()

    yield start
    for srv in started:
        srv.stop()
