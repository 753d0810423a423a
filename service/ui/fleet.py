"""Where the dashboard finds the hosts it shows, and the secret its sessions are signed with.

- SQLite store (one host): this host alone; the secret is a file in the state directory.
- Redis store (a fleet): the hosts share the Redis. While someone watches (a dashboard read
  within the last few polls), one worker of each host (slot 0) publishes the host's snapshot
  there every ``JOBPOOL_UI_POLL_S``, to expire unless renewed; a dashboard reads them all in
  one script. Nobody watching costs a host one small read per poll. The secret is made
  once in the Redis (``SET NX``), so a session made on one host is good on all of them.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from pathlib import Path
from secrets import token_hex
from typing import Any, Protocol

import orjson

from service.background import cancel_and_wait
from service.errors import StoreUnavailable
from service.jobs.redis.store import RedisStore
from service.jobs.store import Store
from service.ui.session import SECRET_BYTES, local_secret

__all__ = ["Board", "FleetBoard", "HostBoard", "for_store"]

log = logging.getLogger(__name__)

#: Polls a snapshot outlives its host's last publication (then the host is gone from view).
KEEP_POLLS = 3

READ = r"""
redis.call('SET', P .. 'ui:watched', '1', 'PX', ARGV[2])
local out = {}
for _, host in ipairs(redis.call('SMEMBERS', P .. 'ui:hosts')) do
  local snap = redis.call('GET', P .. 'ui:host:' .. host)
  if snap then table.insert(out, snap) else redis.call('SREM', P .. 'ui:hosts', host) end
end
return out
"""
WATCHED = r"""
return redis.call('EXISTS', P .. 'ui:watched')
"""
PUBLISH = r"""
redis.call('SET', P .. 'ui:host:' .. ARGV[2], ARGV[3], 'PX', ARGV[4])
redis.call('SADD', P .. 'ui:hosts', ARGV[2])
return 1
"""
SHARED_KEY_SCRIPT = r"""
redis.call('SET', P .. 'ui:secret', ARGV[2], 'NX')
return redis.call('GET', P .. 'ui:secret')
"""

Snapshot = Callable[[], Awaitable[dict[str, Any]]]


class Board(Protocol):
    """The hosts a dashboard shows, and the sessions' secret."""

    async def secret(self) -> bytes: ...

    async def hosts(self, mine: dict[str, Any]) -> list[dict[str, Any]]:
        """Every host's snapshot, this host's (``mine``, fresh) among them."""

    async def start(self, snapshot: Snapshot) -> None: ...

    async def stop(self) -> None: ...


class HostBoard:
    """One host (SQLite store): its own snapshot; the secret in its state directory."""

    def __init__(self, state_dir: Path) -> None:
        self.state_dir = state_dir
        self._secret: bytes | None = None

    async def secret(self) -> bytes:
        if self._secret is None:
            self._secret = await asyncio.to_thread(local_secret, self.state_dir)
        return self._secret

    async def hosts(self, mine: dict[str, Any]) -> list[dict[str, Any]]:
        return [mine]

    async def start(self, snapshot: Snapshot) -> None:
        """Nothing to publish: no other host reads this one."""

    async def stop(self) -> None:
        """Nothing to stop."""


class FleetBoard:
    """Every host of a fleet, through the Redis its store uses."""

    def __init__(self, store: RedisStore, *, host_id: str, poll_s: float) -> None:
        self.store = store
        self.host_id = host_id
        self.poll_s = poll_s
        self._secret: bytes | None = None
        self._loop: asyncio.Task[None] | None = None
        for name, body in (("ui_read", READ), ("ui_watched", WATCHED),
                           ("ui_publish", PUBLISH), ("ui_secret", SHARED_KEY_SCRIPT)):  # fmt: skip
            store.define(name, body)

    @property
    def keep_ms(self) -> int:
        return int(self.poll_s * KEEP_POLLS * 1000)

    async def secret(self) -> bytes:
        if self._secret is None:
            held = await self.store.script("ui_secret", token_hex(SECRET_BYTES))
            self._secret = bytes.fromhex(held.decode())
        return self._secret

    async def hosts(self, mine: dict[str, Any]) -> list[dict[str, Any]]:
        published = await self.store.script("ui_read", self.keep_ms)
        found = {mine["id"]: mine}
        for blob in published:
            snap = orjson.loads(blob)
            found.setdefault(snap["id"], snap)
        return sorted(found.values(), key=lambda s: (s["host"], s["id"]))

    async def start(self, snapshot: Snapshot) -> None:
        self._loop = asyncio.create_task(self._publish_loop(snapshot), name="jobpool-ui-board")

    async def stop(self) -> None:
        await cancel_and_wait(self._loop)
        self._loop = None

    async def _publish_loop(self, snapshot: Snapshot) -> None:
        while True:
            await asyncio.sleep(self.poll_s)
            if self.store.slot != 0:
                continue  # one worker per host publishes: the one in slot 0
            try:
                if await self.store.script("ui_watched"):
                    snap = orjson.dumps(await snapshot())
                    await self.store.script("ui_publish", self.host_id, snap, self.keep_ms)
            except StoreUnavailable:
                continue  # the store logs it; the dashboard shows the host once it is back
            except Exception:
                log.exception("dashboard: publishing this host's snapshot failed")


def for_store(store: Store, *, state_dir: Path, host_id: str, poll_s: float) -> Board:
    """The board as far as ``store`` is shared: the fleet (Redis), or this host."""
    if isinstance(store, RedisStore):
        return FleetBoard(store, host_id=host_id, poll_s=poll_s)
    return HostBoard(state_dir)
