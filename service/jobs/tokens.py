"""Host-wide cpu tokens: at most N processes of the host run cpu jobs at once.

Each token is a file under the state directory held with ``flock``; the kernel releases it
when its holder dies, so a killed worker never leaks a token.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os
import random
from collections.abc import AsyncIterator
from pathlib import Path

POLL_MIN_S = 0.002
POLL_MAX_S = 0.05


class HostTokens:
    """``async with tokens.hold():`` runs the body while holding one of ``count`` tokens."""

    def __init__(self, directory: Path, count: int) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        self.count = count
        self._fds = [
            os.open(directory / f"cpu-{i}.lock", os.O_RDWR | os.O_CREAT, 0o600)
            for i in range(count)
        ]
        self._held: set[int] = set()

    def _try_take(self) -> int | None:
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

    @contextlib.asynccontextmanager
    async def hold(self) -> AsyncIterator[int]:
        delay = POLL_MIN_S
        while (token := self._try_take()) is None:
            await asyncio.sleep(delay)
            delay = min(delay * 2, POLL_MAX_S)
        try:
            yield token
        finally:
            fcntl.flock(self._fds[token], fcntl.LOCK_UN)
            self._held.discard(token)

    def close(self) -> None:
        for fd in self._fds:
            os.close(fd)
        self._fds = []
