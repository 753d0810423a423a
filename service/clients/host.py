"""Per-client fair limits, the same for every gunicorn worker of a host.

This is what a host with the SQLite store applies; with the Redis store the same limits
hold across the fleet instead (:mod:`service.clients.fleet`, picked by
:func:`service.clients.limits.for_store`).

Two limits, each switched off by 0:

* **rate** (``JOBPOOL_CLIENT_RATE`` requests/s, ``JOBPOOL_CLIENT_BURST``): a token bucket
  per client; every authenticated request takes a token.
* **jobs in flight** (``JOBPOOL_CLIENT_MAX_INFLIGHT``): jobs of a client queued or running
  in any worker of the host; a submit over the cap is refused.

Where the state lives: a small table in ``JOBPOOL_STATE_DIR/limits/``, mapped into every
worker with ``mmap``. Measured on the real server (bench.ingest, 2 workers, 2 vCPUs), an
``flock`` around every request's change cost 40-90 us of server CPU per request, far more
than the loads and stores themselves, so the common path takes no lock:

* Jobs in flight are counted per worker *slot* and client, and each cell has one writer:
  the worker holding the slot. A submit sums the client's cells over the slots in use and
  adds one to its own. Two submits racing on two workers at the cap can both pass, so the
  cap may be overshot by at most (workers - 1) jobs for an instant; never by more.
* Tokens are taken from the shared bucket (under an ``flock``) in small leases: at most
  ``LEASE_S`` seconds' worth of the rate, at most half of what is left, at least one; the
  worker spends a lease locally and gives back what is left of it at its next refill. With
  a small rate or burst a lease is one token, so the bucket is exact; with the defaults a
  worker locks about once in 50 requests of a client. Nothing is ever taken twice, so the
  host never admits more than the bucket holds.

Crash safety: a process killed while it holds the lock loses the lock with it (the kernel
drops ``flock`` locks with the process). Each worker holds its slot (``slot-N.lock``,
``flock``) for its life; whoever takes a dead worker's slot, or finds its lock free (a
sweep at start and whenever a client meets its cap), clears that slot's counts. So a
SIGKILLed worker's jobs stop counting at once, and count again when its replacement
resumes them.

The table (little-endian): a 4 KiB header (magic, sizes, slots in use so far, one "in use"
byte per slot), then ``CAPACITY`` client entries ``(name hash u64, tokens f64, stamp f64)``
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
#: Longest a worker spends leased tokens: the bucket's timing is this coarse at most.
LEASE_S = 0.05
HEADER_SIZE = 4096
MAGIC = b"JPLIMIT2"
HEADER = struct.Struct("<8sII")
IN_USE = struct.Struct("<I")  # slots 0..n-1 may hold counts
IN_USE_AT = 16
ACTIVE_AT = 64
ENTRY = struct.Struct("<Qdd")
BUCKET = struct.Struct("<dd")
KEY = struct.Struct("<Q")
COUNT = struct.Struct("<i")
ENTRIES_AT = HEADER_SIZE
SLOTS_AT = ENTRIES_AT + CAPACITY * ENTRY.size
SLOT_BYTES = CAPACITY * COUNT.size
SIZE = SLOTS_AT + SLOTS * SLOT_BYTES
TABLE = "table-v2.bin"
#: Least seconds between two sweeps for dead workers' counts triggered by a refusal.
SWEEP_EVERY_S = 1.0


def lease_size(rate: float, burst: float) -> int:
    """Most tokens one lease takes: ``LEASE_S`` seconds' worth of the rate and an eighth of
    the burst at most, one at least (a small rate or burst: one token, an exact bucket)."""
    return max(1, int(min(rate * LEASE_S, burst / 8)))


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
        #: Most tokens one lease takes.
        self.lease_max = lease_size(rate, self.burst)
        self.slot = -1
        self._fd = -1
        self._slot_fd = -1
        self._map: mmap.mmap | None = None
        self._index: dict[str, int | None] = {}
        self._leases: dict[int, list[float]] = {}  # entry -> [tokens left, good until]
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
            if self._in_use() <= self.slot:
                IN_USE.pack_into(self._map, IN_USE_AT, self.slot + 1)
        finally:
            self._unlock()
        self.sweep()

    def close(self) -> None:
        """Give back everything this worker counted (and leased) and its slot."""
        if self._map is None:
            return
        self._lock()
        try:
            for i, lease in self._leases.items():
                at = ENTRIES_AT + i * ENTRY.size + 8
                tokens, stamp = BUCKET.unpack_from(self._map, at)
                BUCKET.pack_into(self._map, at, min(self.burst, tokens + lease[0]), stamp)
            self._clear_slot(self.slot)
            self._map[ACTIVE_AT + self.slot] = 0
        finally:
            self._unlock()
        self._leases.clear()
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
        for slot in range(self._in_use()):
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
        self._lock()
        try:  # the slots in use end after the highest one still held
            active = self._map[ACTIVE_AT : ACTIVE_AT + SLOTS].rstrip(b"\0")
            IN_USE.pack_into(self._map, IN_USE_AT, len(active))
        finally:
            self._unlock()
        if cleared:
            log.warning("client limits: cleared the counts of %d stopped workers", cleared)
        return cleared

    # -- the lock and the table -------------------------------------------------------

    def _lock(self) -> None:
        fcntl.flock(self._fd, fcntl.LOCK_EX)

    def _unlock(self) -> None:
        fcntl.flock(self._fd, fcntl.LOCK_UN)

    def _in_use(self) -> int:
        assert self._map is not None
        (n,) = IN_USE.unpack_from(self._map, IN_USE_AT)
        return int(n)

    def _clear_slot(self, slot: int) -> None:
        """Zero ``slot``'s counts (its worker is this one, or gone)."""
        assert self._map is not None
        start = SLOTS_AT + slot * SLOT_BYTES
        if self._map[start : start + SLOT_BYTES].strip(b"\0"):
            self._map[start : start + SLOT_BYTES] = bytes(SLOT_BYTES)

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
                (held,) = KEY.unpack_from(self._map, at)
                if held == key:
                    found = i
                    break
                if held == 0:
                    ENTRY.pack_into(self._map, at, key, self.burst, self.clock())
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

    # -- the rate ---------------------------------------------------------------------

    async def take(self, client: str) -> None:
        """Take one request token of ``client``; :class:`RateLimited` when there is none.

        A coroutine only to share :class:`~service.clients.limits.ClientLimits` with the
        fleet's limits: it never waits."""
        if self.rate <= 0 or self._map is None:
            return
        i = self._entry(client)
        if i is None:
            return
        now = self.clock()
        lease = self._leases.get(i)
        if lease is not None and lease[0] >= 1.0 and now < lease[1]:
            lease[0] -= 1.0
            return
        left = lease[0] if lease is not None else 0.0
        at = ENTRIES_AT + i * ENTRY.size + 8
        self._lock()
        try:
            tokens, stamp = BUCKET.unpack_from(self._map, at)
            elapsed = now - stamp
            # A stamp from the future is from before a reboot: start full.
            tokens = self.burst if elapsed < 0 else tokens + elapsed * self.rate
            tokens = min(self.burst, tokens + left)
            grant = max(1, min(self.lease_max, int(tokens / 2))) if tokens >= 1.0 else 0
            BUCKET.pack_into(self._map, at, tokens - grant, now)
        finally:
            self._unlock()
        if not grant:
            self._leases.pop(i, None)
            raise RateLimited(
                f"over {self.rate:g} requests/s (JOBPOOL_CLIENT_RATE); slow down",
                retry_after_s=max(1, math.ceil((1.0 - tokens) / self.rate)),
            )
        self._leases[i] = [grant - 1.0, now + LEASE_S]

    # -- jobs in flight ---------------------------------------------------------------

    def acquire(self, owner: str) -> None:
        """Count one more job of ``owner`` in flight; :class:`TooManyJobs` at the cap."""
        if self.max_inflight <= 0 or self._map is None:
            return
        i = self._entry(owner)
        if i is None:
            return
        if self._total(i) >= self.max_inflight:
            # Counts a killed worker left behind may be what holds the client at its cap.
            swept = self.clock() - self._last_sweep >= SWEEP_EVERY_S and self.sweep()
            if not swept or self._total(i) >= self.max_inflight:
                raise TooManyJobs(
                    f"{self.max_inflight} jobs of this client are queued or running"
                    " (JOBPOOL_CLIENT_MAX_INFLIGHT); retry when some have finished",
                    retry_after_s=1,
                )
        self._add(i, 1)

    def force(self, owner: str) -> None:
        """Count a job that is in flight already (resumed after a restart), cap or not."""
        if self.max_inflight > 0 and self._map is not None:
            i = self._entry(owner)
            if i is not None:
                self._add(i, 1)

    def release(self, owner: str) -> None:
        """A job of ``owner`` this worker counted has ended."""
        if self.max_inflight > 0 and self._map is not None:
            i = self._entry(owner)
            if i is not None:
                self._add(i, -1)

    def inflight(self, owner: str) -> int:
        """Jobs of ``owner`` in flight on the host."""
        if self._map is None or (i := self._entry(owner)) is None:
            return 0
        return self._total(i)

    def _total(self, i: int) -> int:
        """The client's count summed over the slots in use (no lock: each cell has one
        writer, and aligned 4-byte loads and stores do not tear)."""
        assert self._map is not None
        read = COUNT.unpack_from
        m = self._map
        return sum(
            read(m, SLOTS_AT + slot * SLOT_BYTES + i * COUNT.size)[0]
            for slot in range(self._in_use())
        )

    def _add(self, i: int, delta: int) -> None:
        """Change this worker's own cell (it is the only writer of it)."""
        assert self._map is not None
        at = SLOTS_AT + self.slot * SLOT_BYTES + i * COUNT.size
        (mine,) = COUNT.unpack_from(self._map, at)
        # Never below zero: a job counted before this slot was cleared ends uncounted.
        COUNT.pack_into(self._map, at, max(0, mine + delta))
