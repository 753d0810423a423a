"""Idempotency keys on one host: a submit with a key holds it while it looks for an earlier
job of that key and stores its own, so two workers never both store one.

Why a lock: the key row goes into the accepting worker's shard, in the job's own
transaction (so a key never names a job that was not stored), and another worker's shard
is another file, so no one transaction can refuse the second submit. A lock on one of
``BUCKETS`` bytes of the file ``keys/holds`` (by the key's hash; POSIX byte-range locks,
``lockf``) excludes the other workers, and a map of the buckets held here excludes this
worker's other requests (a process never conflicts with its own byte-range locks). The
holder writes its key's digest in the bucket's slot of the same file, so a submit that
finds the bucket held by the same key is told 409 at once, and one that finds another key
there (a shared bucket, rare) waits its turn. The kernel drops the locks of a process that
dies.

Why one file and not a file per bucket: creating a bucket's file cost ~640 µs of CPU on its
first use (each new key, until all existed), more than the rest of a keyed submit.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import fcntl
import hashlib
import os
from collections.abc import AsyncIterator
from pathlib import Path

from service.errors import KeyInFlight, StoreUnavailable
from service.jobs.record import IdempotencyKey

#: Buckets (by the first two bytes of the key's hash): a locked byte each, and a slot of
#: DIGEST bytes for its holder's digest.
BUCKETS = 1 << 16
DIGEST = 32
#: Longest a submit waits for a bucket held by another key before it says 409.
WAIT_S = 1.0
WAIT_STEP_S = 0.005
_NOBODY = bytes(DIGEST)
_HELD_ELSEWHERE = (errno.EACCES, errno.EAGAIN)


class KeyLocks:
    """The idempotency-key holds of one host, in ``directory``."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self._fd: int | None = None
        #: Buckets held by this process, and by which key's digest.
        self._held: dict[int, bytes] = {}

    def open(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        self._fd = os.open(self.directory / "holds", os.O_RDWR | os.O_CREAT, 0o600)

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # drops this process's locks, held or not
            self._fd = None

    @contextlib.asynccontextmanager
    async def hold(self, key: IdempotencyKey) -> AsyncIterator[None]:
        """Hold ``key`` on this host; KeyInFlight when a submit with it is being accepted."""
        fd = self._fd
        if fd is None:
            raise StoreUnavailable("the job store is closed")
        digest = hashlib.sha256(key.name.encode()).digest()
        bucket = int.from_bytes(digest[:2]) % BUCKETS
        await self._lock(fd, bucket, digest)
        try:
            os.pwrite(fd, digest, BUCKETS + bucket * DIGEST)
            yield
        finally:
            # The slot is cleared before the unlock: no one reads a stale holder.
            with contextlib.suppress(OSError):
                os.pwrite(fd, _NOBODY, BUCKETS + bucket * DIGEST)
            del self._held[bucket]
            with contextlib.suppress(OSError):
                fcntl.lockf(fd, fcntl.LOCK_UN, 1, bucket)

    async def _lock(self, fd: int, bucket: int, digest: bytes) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + WAIT_S
        while True:
            holder = self._held.get(bucket)
            if holder is None:
                try:
                    fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB, 1, bucket)
                except OSError as ex:
                    if ex.errno not in _HELD_ELSEWHERE:
                        raise
                    holder = os.pread(fd, DIGEST, BUCKETS + bucket * DIGEST)
                else:
                    self._held[bucket] = digest
                    return
            if holder == digest:
                raise KeyInFlight(
                    "a request with this Idempotency-Key is still being accepted; retry"
                )
            if loop.time() >= deadline:
                raise KeyInFlight(
                    "requests with this Idempotency-Key's lock are being accepted; retry"
                )
            await asyncio.sleep(WAIT_STEP_S)
