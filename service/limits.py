"""Per-client fair limits, the same for every gunicorn worker of a host.

Two limits, each switched off by 0:

* **rate** (``JOBPOOL_CLIENT_RATE`` requests/s, ``JOBPOOL_CLIENT_BURST``): a token bucket
  per client; every authenticated request takes a token.
* **jobs in flight** (``JOBPOOL_CLIENT_MAX_INFLIGHT``): jobs of a client queued or running
  in any worker of the host; a submit over the cap is refused.

Where the state lives: a small table in ``JOBPOOL_STATE_DIR/limits/``, mapped into every
worker with ``mmap`` and changed under an exclusive ``flock``. A request costs one lock and
unlock (two system calls) and a few loads and stores in shared memory: microseconds, where
a shared SQLite table would cost a write transaction and waits on its file lock.

Crash safety: a process killed while it holds the lock loses the lock with it (the kernel
drops ``flock`` locks with the process). What it counted in flight is kept per worker
*slot* as well as per client: each worker holds a slot (``slot-N.lock``, ``flock``) for its
life, and whoever takes a dead worker's slot, or finds its lock free (a sweep at start and
whenever a client meets its cap), subtracts that slot's counts. So a SIGKILLed worker's
jobs stop counting at once, and count again when its replacement resumes them.

The table (little-endian): a 4 KiB header (magic, sizes, one "in use" byte per slot), then
``CAPACITY`` client entries ``(name hash u64, tokens f64, stamp f64, in flight i64)``
found by open addressing on the hash of the client's name, then the per-slot counts
(``SLOTS`` x ``CAPACITY`` i32, a sparse region). Times are ``CLOCK_MONOTONIC``, which is
one clock for every process of the host.
"""

from __future__ import annotations

import fcntl
import hashlib
import logging
import math
import mmap
import os
import struct
import time
from collections.abc import Callable
from pathlib import Path

from service.errors import RateLimited, StoreUnavailable, TooManyJobs

log = logging.getLogger(__name__)

#: Clients the table holds; past that, new clients are not limited (logged once).
CAPACITY = 2048
#: Worker processes that can hold a slot at once (old and new workers during a reload).
SLOTS = 512
HEADER_SIZE = 4096
MAGIC = b"JPLIMIT1"
HEADER = struct.Struct("<8sII")
ACTIVE_AT = 64
ENTRY = struct.Struct("<Qddq")
BUCKET = struct.Struct("<dd")
COUNT = struct.Struct("<q")
SLOT_COUNT = struct.Struct("<i")
ENTRIES_AT = HEADER_SIZE
SLOTS_AT = ENTRIES_AT + CAPACITY * ENTRY.size
SIZE = SLOTS_AT + SLOTS * CAPACITY * SLOT_COUNT.size
TABLE = "table-v1.bin"
#: Least seconds between two sweeps for dead workers' counts triggered by a refusal.
SWEEP_EVERY_S = 1.0


def name_hash(client: str) -> int:
    """A client's key in the table: 64 bits of BLAKE2b of its name, never 0 (free)."""
    value = int.from_bytes(hashlib.blake2b(client.encode(), digest_size=8).digest(), "little")
    return value or 1


class HostLimits:
    """The host-wide limits of one worker process; :meth:`open` it in the worker."""

    def __init__(
        self,
        directory: Path,
        *,
        rate: float,
        burst: int,
        max_inflight: int,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.directory = directory
        self.rate = rate
        self.burst = float(max(1, burst))
        self.max_inflight = max_inflight
        self.clock = clock
        self.slot = -1
        self._fd = -1
        self._slot_fd = -1
        self._map: mmap.mmap | None = None
        self._index: dict[str, int | None] = {}
        self._last_sweep = -math.inf
        self._warned_full = False

    @property
    def enabled(self) -> bool:
        return self.rate > 0 or self.max_inflight > 0

    # -- life cycle -------------------------------------------------------------------

    def open(self) -> None:
        """Map the table (making it if needed), claim a slot, clear what dead slots held."""
        if not self.enabled or self._map is not None:
            return
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.directory / TABLE, os.O_RDWR | os.O_CREAT, 0o600)
            fcntl.flock(fd, fcntl.LOCK_EX)
            try:
                header = HEADER.pack(MAGIC, CAPACITY, SLOTS)
                if os.fstat(fd).st_size != SIZE or os.pread(fd, HEADER.size, 0) != header:
                    os.ftruncate(fd, 0)  # new, or not this layout: start empty
                    os.ftruncate(fd, SIZE)
                    os.pwrite(fd, header, 0)
            finally:
                fcntl.flock(fd, fcntl.LOCK_UN)
            self._map = mmap.mmap(fd, SIZE)
            self._fd = fd
            self.slot, self._slot_fd = self._claim_slot()
        except OSError as ex:
            raise StoreUnavailable(
                f"cannot open the client limits in {self.directory}: {ex}"
            ) from ex
        self._lock()
        try:
            self._clear_slot(self.slot)  # what a dead holder of this slot left
            self._map[ACTIVE_AT + self.slot] = 1
        finally:
            self._unlock()
        self.sweep()

    def close(self) -> None:
        """Give back everything this worker counted and its slot."""
        if self._map is None:
            return
        self._lock()
        try:
            self._clear_slot(self.slot)
            self._map[ACTIVE_AT + self.slot] = 0
        finally:
            self._unlock()
        self._map.close()
        self._map = None
        os.close(self._slot_fd)
        os.close(self._fd)
        self._fd = self._slot_fd = -1
        self._index.clear()

    def _claim_slot(self) -> tuple[int, int]:
        for slot in range(SLOTS):
            fd = os.open(self._slot_path(slot), os.O_RDWR | os.O_CREAT, 0o600)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                continue
            return slot, fd
        raise OSError(f"all {SLOTS} limit slots are held")

    def _slot_path(self, slot: int) -> Path:
        return self.directory / f"slot-{slot}.lock"

    def sweep(self) -> int:
        """Clear the counts of slots whose worker is gone; return how many were cleared."""
        if self._map is None:
            return 0
        self._last_sweep = self.clock()
        cleared = 0
        for slot in range(SLOTS):
            if slot == self.slot or not self._map[ACTIVE_AT + slot]:
                continue
            try:
                fd = os.open(self._slot_path(slot), os.O_RDWR | os.O_CREAT, 0o600)
            except OSError:
                continue
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                continue  # its worker is alive
            try:
                self._lock()
                try:
                    self._clear_slot(slot)
                    self._map[ACTIVE_AT + slot] = 0
                finally:
                    self._unlock()
                cleared += 1
            finally:
                os.close(fd)  # releases its lock
        if cleared:
            log.warning("client limits: cleared the counts of %d stopped workers", cleared)
        return cleared

    # -- the lock and the table -------------------------------------------------------

    def _lock(self) -> None:
        fcntl.flock(self._fd, fcntl.LOCK_EX)

    def _unlock(self) -> None:
        fcntl.flock(self._fd, fcntl.LOCK_UN)

    def _clear_slot(self, slot: int) -> None:
        """Subtract ``slot``'s counts from the clients' totals (the lock is held)."""
        assert self._map is not None
        start = SLOTS_AT + slot * CAPACITY * SLOT_COUNT.size
        region = self._map[start : start + CAPACITY * SLOT_COUNT.size]
        if not region.strip(b"\0"):
            return
        for i, (n,) in enumerate(SLOT_COUNT.iter_unpack(region)):
            if n:
                at = ENTRIES_AT + i * ENTRY.size + 24
                (total,) = COUNT.unpack_from(self._map, at)
                COUNT.pack_into(self._map, at, max(0, total - n))
        self._map[start : start + len(region)] = bytes(len(region))

    def _entry(self, client: str) -> int | None:
        """The table index of ``client`` (added on first use); None if the table is full."""
        try:
            return self._index[client]
        except KeyError:
            pass
        assert self._map is not None
        key = name_hash(client)
        found: int | None = None
        self._lock()
        try:
            i = key % CAPACITY
            for _ in range(CAPACITY):
                at = ENTRIES_AT + i * ENTRY.size
                (held,) = struct.unpack_from("<Q", self._map, at)
                if held == key:
                    found = i
                    break
                if held == 0:
                    ENTRY.pack_into(self._map, at, key, self.burst, self.clock(), 0)
                    found = i
                    break
                i = (i + 1) % CAPACITY
        finally:
            self._unlock()
        if found is None and not self._warned_full:
            self._warned_full = True
            log.error("client limits: the table of %d clients is full; new clients are not"
                      " limited until %s is removed (service stopped)", CAPACITY,
                      self.directory / TABLE)  # fmt: skip
        self._index[client] = found
        return found

    # -- the limits -------------------------------------------------------------------

    def take(self, client: str) -> None:
        """Take one request token of ``client``; :class:`RateLimited` when there is none."""
        if self.rate <= 0 or self._map is None:
            return
        i = self._entry(client)
        if i is None:
            return
        at = ENTRIES_AT + i * ENTRY.size + 8
        self._lock()
        try:
            tokens, stamp = BUCKET.unpack_from(self._map, at)
            now = self.clock()
            elapsed = now - stamp
            # A stamp from the future is from before a reboot: start full.
            tokens = self.burst if elapsed < 0 else min(self.burst, tokens + elapsed * self.rate)
            wait = 0.0 if tokens >= 1.0 else (1.0 - tokens) / self.rate
            BUCKET.pack_into(self._map, at, tokens - 1.0 if wait == 0.0 else tokens, now)
        finally:
            self._unlock()
        if wait:
            raise RateLimited(
                f"over {self.rate:g} requests/s (JOBPOOL_CLIENT_RATE); slow down",
                retry_after_s=max(1, math.ceil(wait)),
            )

    def acquire(self, owner: str) -> None:
        """Count one more job of ``owner`` in flight; :class:`TooManyJobs` at the cap."""
        if self.max_inflight <= 0 or self._map is None:
            return
        if self._count(owner, cap=self.max_inflight):
            return
        # At the cap: counts a killed worker left behind may be what holds it there.
        swept = self.clock() - self._last_sweep >= SWEEP_EVERY_S and self.sweep()
        if swept and self._count(owner, cap=self.max_inflight):
            return
        raise TooManyJobs(
            f"{self.max_inflight} jobs of this client are queued or running"
            " (JOBPOOL_CLIENT_MAX_INFLIGHT); retry when some have finished",
            retry_after_s=1,
        )

    def force(self, owner: str) -> None:
        """Count a job that is in flight already (resumed after a restart), cap or not."""
        if self.max_inflight > 0 and self._map is not None:
            self._count(owner, cap=None)

    def release(self, owner: str) -> None:
        """A job of ``owner`` this worker counted has ended."""
        if self.max_inflight > 0 and self._map is not None:
            self._count(owner, cap=None, delta=-1)

    def inflight(self, owner: str) -> int:
        """Jobs of ``owner`` in flight on the host."""
        if self._map is None or (i := self._entry(owner)) is None:
            return 0
        (n,) = COUNT.unpack_from(self._map, ENTRIES_AT + i * ENTRY.size + 24)
        return int(n)

    def _count(self, owner: str, *, cap: int | None, delta: int = 1) -> bool:
        i = self._entry(owner)
        if i is None:
            return True
        assert self._map is not None
        total_at = ENTRIES_AT + i * ENTRY.size + 24
        mine_at = SLOTS_AT + (self.slot * CAPACITY + i) * SLOT_COUNT.size
        self._lock()
        try:
            (total,) = COUNT.unpack_from(self._map, total_at)
            (mine,) = SLOT_COUNT.unpack_from(self._map, mine_at)
            if delta > 0 and cap is not None and total >= cap:
                return False
            if delta < 0 and mine <= 0:
                return True  # not counted here (cleared at start): nothing to give back
            COUNT.pack_into(self._map, total_at, max(0, total + delta))
            SLOT_COUNT.pack_into(self._map, mine_at, mine + delta)
        finally:
            self._unlock()
        return True
