"""Host-wide cpu tokens: at most N processes of the host run cpu jobs at once.

Each token is a file under the state directory held with ``flock``; the kernel releases it
when its holder dies, so a killed worker never leaks a token.

Why any worker may take any token: a load balancer keeps a few long-lived connections to
a host and the kernel hands each to whichever worker accepts first, so one worker often
holds most of the traffic. With a fixed split of the tokens, that worker's cpu jobs queue
while the others' processes idle (measured: the pool kept 49% of 2 vCPUs busy). So a worker
with waiting jobs borrows free tokens beyond its share, unless another worker is waiting:
each worker publishes how many of its jobs wait (one cell per worker slot, one writer
each, in a shared map), and a worker at or over its share leaves a freed token to them.
That keeps every worker its share when it needs it and lends the rest.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import mmap
import os
import random
import struct
from collections.abc import AsyncIterator
from pathlib import Path

POLL_MIN_S = 0.001
#: Longest a freed token can sit unused while another worker's job waits for it.
POLL_MAX_S = 0.005
#: Worker slots the waiting map has cells for (a slot past it shares a cell: still safe,
#: only less exact).
CELLS = 512
CELL = struct.Struct("<i")


class HostTokens:
    """``async with tokens.hold():`` runs the body while holding one of ``count`` tokens.

    ``slot`` is this worker's slot on the host and ``share`` the tokens it is owed (by
    default all: a worker alone on its host).
    """

    def __init__(
        self, directory: Path, count: int, *, slot: int = 0, share: int | None = None
    ) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        self.count = count
        self.share = count if share is None else share
        self._cell = (slot % CELLS) * CELL.size
        self._fds = [
            os.open(directory / f"cpu-{i}.lock", os.O_RDWR | os.O_CREAT, 0o600)
            for i in range(count)
        ]
        self._held: set[int] = set()
        self._waiting = 0
        self._freed = asyncio.Event()
        fd = os.open(directory / "waiting.bin", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            if os.fstat(fd).st_size != CELLS * CELL.size:
                os.ftruncate(fd, CELLS * CELL.size)
            self._map = mmap.mmap(fd, CELLS * CELL.size)
        finally:
            os.close(fd)
        self._publish()  # a dead worker that had this slot may have left its count

    @property
    def held(self) -> int:
        return len(self._held)

    def others_waiting(self) -> bool:
        cells = memoryview(self._map).cast("i")
        try:
            own = cells[self._cell // CELL.size]
            return sum(cells) - own > 0
        finally:
            cells.release()

    def _publish(self) -> None:
        CELL.pack_into(self._map, self._cell, self._waiting)

    def _try_take(self) -> int | None:
        if len(self._held) >= self.share and self.others_waiting():
            return None  # leave it to a worker that is owed one
        start = random.randrange(self.count)
        for k in range(self.count):
            i = (start + k) % self.count
            if i in self._held:
                continue
            try:
                fcntl.flock(self._fds[i], fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                continue
            self._held.add(i)
            return i
        return None

    async def _take(self) -> int:
        token = self._try_take()
        if token is not None:
            return token
        self._waiting += 1
        self._publish()
        try:
            delay = POLL_MIN_S
            while (token := self._try_take()) is None:
                # Woken at once by a token freed here; by polling for one freed elsewhere.
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._freed.wait(), delay)
                delay = min(delay * 2, POLL_MAX_S)
            return token
        finally:
            self._waiting -= 1
            self._publish()

    @contextlib.asynccontextmanager
    async def hold(self) -> AsyncIterator[int]:
        token = await self._take()
        try:
            yield token
        finally:
            fcntl.flock(self._fds[token], fcntl.LOCK_UN)
            self._held.discard(token)
            self._freed.set()
            self._freed = asyncio.Event()

    def close(self) -> None:
        for fd in self._fds:
            os.close(fd)
        self._fds = []
        self._waiting = 0
        with contextlib.suppress(ValueError):
            self._publish()
            self._map.close()
