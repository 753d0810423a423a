"""Idempotency keys on one host: a submit with a key holds it while it looks for an earlier
job of that key and stores its own, so two workers never both store one.

Why a lock file: the key row goes into the accepting worker's shard, in the job's own
transaction (so a key never names a job that was not stored), and another worker's shard
is another file, so no one transaction can refuse the second submit. A ``flock`` on one of
``BUCKETS`` files in ``keys/`` (by the key's hash) excludes the other workers; the holder
writes its key's digest into the file, so a submit that finds the file locked by the same
key is told 409 at once, and one that finds another key there (a shared bucket, rare)
waits its turn. The kernel drops the lock of a process that dies.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import hashlib
import os
from collections.abc import AsyncIterator
from pathlib import Path

from service.errors import KeyInFlight
from service.jobs.record import IdempotencyKey

#: Lock files (by the first two bytes of the key's hash); each made once, never removed.
BUCKETS = 1 << 16
#: Longest a submit waits for a bucket held by another key before it says 409.
WAIT_S = 1.0
WAIT_STEP_S = 0.005
_NOBODY = bytes(32)


class KeyLocks:
    """The lock files of one host's idempotency keys, under ``directory``."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory

    def open(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)

    @contextlib.asynccontextmanager
    async def hold(self, key: IdempotencyKey) -> AsyncIterator[None]:
        """Hold ``key`` on this host; KeyInFlight when a submit with it is being accepted."""
        digest = hashlib.sha256(key.name.encode()).digest()
        bucket = int.from_bytes(digest[:2]) % BUCKETS
        fd = os.open(self.directory / f"{bucket:04x}.lock", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            await _lock(fd, digest)
            os.pwrite(fd, digest, 0)
            try:
                yield
            finally:
                os.pwrite(fd, _NOBODY, 0)  # before the unlock: no one reads a stale holder
                fcntl.flock(fd, fcntl.LOCK_UN)
        finally:
            os.close(fd)


async def _lock(fd: int, digest: bytes) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + WAIT_S
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return
        except BlockingIOError:
            if os.pread(fd, len(digest), 0) == digest:
                raise KeyInFlight(
                    "a request with this Idempotency-Key is still being accepted; retry"
                ) from None
            if loop.time() >= deadline:
                raise KeyInFlight(
                    "requests with this Idempotency-Key's lock are being accepted; retry"
                ) from None
            await asyncio.sleep(WAIT_STEP_S)
