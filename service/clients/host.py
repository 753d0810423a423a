"""Per-client limits on one host, the same for every gunicorn worker of it.

This is what a host with the SQLite store applies; with the Redis store the same limits
hold across the fleet instead (:mod:`service.clients.fleet`, picked by
:func:`service.clients.limits.for_store`).

Where the state lives: a small table in ``JOBPOOL_STATE_DIR/limits/``, mapped into every
worker with ``mmap``. Measured on the real server (bench.ingest, 2 workers, 2 vCPUs), an
``flock`` around every request's change cost 40-90 us of server CPU per request, far more
than the loads and stores themselves, so the common path takes no lock:

* Jobs in flight are counted per worker slot and client, and each cell has one writer: the
  worker holding the slot. A submit sums the client's cells over the slots in use and adds
  one to its own. Two submits racing on two workers at the cap can both pass, so the cap
  may be overshot by at most (workers - 1) jobs for an instant; never by more.
* Tokens are taken from the shared bucket (under an ``flock``) in leases
  (:mod:`service.clients.bucket`); with the defaults a worker locks about once in 50
  requests of a client.

Crash safety. The slot is the worker's own, claimed by the job store (a ``flock``ed file
the kernel releases when its holder dies); this table is told its number at :meth:`open`
and asks ``alive(slot)`` whether another slot's worker still holds it. A worker opening
clears what a dead holder of its slot left; a sweep (when a client meets its cap, at once
the first time) clears the slots whose worker is gone. So a SIGKILLed worker's jobs stop counting
at once, and count again when its replacement resumes them. Each slot records which opening
holds it, so a worker that closes after its replacement took the slot leaves the
replacement's counts alone. A process killed while it holds the table's lock loses the lock
with it.

The table (little-endian): a 4 KiB header (magic, sizes, slots in use so far, the holder of
each slot: a random u32 per opening, 0 for none), then ``CAPACITY`` client entries ``(name
hash u64, tokens f64, stamp f64)`` found by open addressing on the hash of the client's
name, then the per-slot counts (``SLOTS`` x ``CAPACITY`` i32, a sparse region). Times are
``CLOCK_MONOTONIC``, one clock for every process of the host.
"""

from __future__ import annotations

import fcntl
import hashlib
import logging
import math
import mmap
import os
import secrets
import struct
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from service.clients.bucket import Bucket, Lease
from service.errors import RateLimited, StoreUnavailable, TooManyJobs

if TYPE_CHECKING:
    from service.clients.limits import LimitSettings

log = logging.getLogger(__name__)

#: Clients the table holds; past that, new clients are not limited (logged once).
CAPACITY = 2048
#: Worker slots the table counts for (old and new workers during a reload).
SLOTS = 512
HEADER_SIZE = 4096
MAGIC = b"JPLIMIT3"
HEADER = struct.Struct("<8sII")
IN_USE = struct.Struct("<I")  # slots 0..n-1 may hold counts
IN_USE_AT = 16
HOLDER = struct.Struct("<I")
HOLDERS = struct.Struct(f"<{SLOTS}I")
HOLDERS_AT = 64
ENTRY = struct.Struct("<Qdd")
BUCKET = struct.Struct("<dd")
KEY = struct.Struct("<Q")
COUNT = struct.Struct("<i")
ENTRIES_AT = HEADER_SIZE
SLOTS_AT = ENTRIES_AT + CAPACITY * ENTRY.size
SLOT_BYTES = CAPACITY * COUNT.size
SIZE = SLOTS_AT + SLOTS * SLOT_BYTES
TABLE = "table-v3.bin"
#: Least seconds between two sweeps for dead workers' counts triggered by a refusal.
SWEEP_EVERY_S = 1.0


def name_hash(client: str) -> int:
    """A client's key in the table: 64 bits of BLAKE2b of its name, never 0 (free)."""
    value = int.from_bytes(hashlib.blake2b(client.encode(), digest_size=8).digest(), "little")
    return value or 1


class HostLimits:
    """The host-wide limits of one worker process; :meth:`open` it with the worker's slot."""

    def __init__(
        self,
        directory: Path,
        settings: LimitSettings,
        *,
        alive: Callable[[int], bool],
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.directory = directory
        self.settings = settings
        self.bucket = Bucket(settings.rate, settings.burst)
        #: Whether the worker of a slot (not this one's) is alive: it holds the slot's lock.
        self.alive = alive
        self.clock = clock
        self.slot = -1
        self._holder = 0
        self._fd = -1
        self._map: mmap.mmap | None = None
        self._index: dict[str, int | None] = {}
        self._leases: dict[int, Lease] = {}  # by entry
        self._last_sweep = -math.inf
        self._warned_full = False

    # -- life cycle -------------------------------------------------------------------

    def open(self, slot: int) -> None:
        """Map the table (making it if needed) and count in ``slot``, the worker's own,
        cleared first of what a dead holder left."""
        if not self.settings.enabled or self._map is not None:
            return
        if not 0 <= slot < SLOTS:
            raise StoreUnavailable(f"worker slot {slot} is past the {SLOTS} the client limits"
                                   f" in {self.directory} count for")  # fmt: skip
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
        except OSError as ex:
            raise StoreUnavailable(
                f"cannot open the client limits in {self.directory}: {ex}"
            ) from ex
        self.slot = slot
        self._holder = secrets.randbits(32) or 1
        self._lock()
        try:
            self._clear_slot(slot)  # what a dead holder of this slot left
            HOLDER.pack_into(self._map, HOLDERS_AT + slot * HOLDER.size, self._holder)
            if self._in_use() <= slot:
                IN_USE.pack_into(self._map, IN_USE_AT, slot + 1)
        finally:
            self._unlock()
        # No sweep here: its probes would take free slot locks for an instant just as this
        # worker's siblings start and claim theirs. The first client at its cap sweeps.

    def close(self) -> None:
        """Give back what this worker leased, and what it counted unless its slot has a new
        holder already (its store let the slot go first)."""
        if self._map is None:
            return
        self._lock()
        try:
            for i, lease in self._leases.items():
                at = ENTRIES_AT + i * ENTRY.size + 8
                tokens, stamp = BUCKET.unpack_from(self._map, at)
                back = lease.tokens + lease.back
                BUCKET.pack_into(self._map, at, min(self.bucket.burst, tokens + back), stamp)
            if self._holder_of(self.slot) == self._holder:
                self._release_slot(self.slot)
        finally:
            self._unlock()
        self._leases.clear()
        self._map.close()
        self._map = None
        os.close(self._fd)
        self._fd = -1
        self._index.clear()

    def sweep(self) -> int:
        """Clear the counts of slots whose worker is gone; return how many were cleared."""
        if self._map is None:
            return 0
        self._last_sweep = self.clock()
        cleared = 0
        # Under the table's lock: a worker that takes a dead slot over opens (clears it and
        # writes itself in) after this, never between the check and the clearing.
        self._lock()
        try:
            for slot in range(self._in_use()):
                if slot == self.slot or not self._holder_of(slot):
                    continue
                try:
                    if self.alive(slot):
                        continue
                except OSError:
                    continue  # not known to be dead
                self._release_slot(slot)
                cleared += 1
            # The slots in use end after the highest one still held.
            holders = HOLDERS.unpack_from(self._map, HOLDERS_AT)
            in_use = next((n for n in range(SLOTS, 0, -1) if holders[n - 1]), 0)
            IN_USE.pack_into(self._map, IN_USE_AT, in_use)
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

    def _holder_of(self, slot: int) -> int:
        assert self._map is not None
        (holder,) = HOLDER.unpack_from(self._map, HOLDERS_AT + slot * HOLDER.size)
        return int(holder)

    def _release_slot(self, slot: int) -> None:
        """Clear ``slot`` and mark it held by nobody (under the lock)."""
        assert self._map is not None
        self._clear_slot(slot)
        HOLDER.pack_into(self._map, HOLDERS_AT + slot * HOLDER.size, 0)

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
                    ENTRY.pack_into(self._map, at, key, self.bucket.burst, self.clock())
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
        if self.bucket.rate <= 0 or self._map is None:
            return
        i = self._entry(client)
        if i is None:
            return
        now = self.clock()
        lease = self._leases.get(i)
        if lease is not None and lease.spend(now):
            return
        if lease is None:
            lease = self._leases[i] = Lease()
        bucket = self.bucket
        at = ENTRIES_AT + i * ENTRY.size + 8
        self._lock()
        try:
            tokens, stamp = BUCKET.unpack_from(self._map, at)
            granted, left = bucket.take(
                tokens, stamp, now, most=lease.most(bucket.lease_max), back=lease.give_back(now)
            )
            BUCKET.pack_into(self._map, at, left, now)
        finally:
            self._unlock()
        if not granted:
            del self._leases[i]
            raise RateLimited(
                f"over {bucket.rate:g} requests/s (JOBPOOL_CLIENT_RATE); slow down",
                retry_after_s=bucket.retry_after_s(left),
            )
        lease.fill(granted, now, bucket.lease_max)
        lease.spend(now)

    # -- jobs in flight ---------------------------------------------------------------

    def acquire(self, owner: str) -> None:
        """Count one more job of ``owner`` in flight; :class:`TooManyJobs` at the cap."""
        cap = self.settings.max_inflight
        if cap <= 0 or self._map is None:
            return
        i = self._entry(owner)
        if i is None:
            return
        if self._total(i) >= cap:
            # Counts a killed worker left behind may be what holds the client at its cap.
            swept = self.clock() - self._last_sweep >= SWEEP_EVERY_S and self.sweep()
            if not swept or self._total(i) >= cap:
                raise TooManyJobs(
                    f"{cap} jobs of this client are queued or running"
                    " (JOBPOOL_CLIENT_MAX_INFLIGHT); retry when some have finished",
                    retry_after_s=1,
                )
        self._add(i, 1)

    def force(self, owner: str) -> None:
        """Count a job that is in flight already (resumed after a restart), cap or not."""
        if self.settings.max_inflight > 0 and self._map is not None:
            i = self._entry(owner)
            if i is not None:
                self._add(i, 1)

    def release(self, owner: str) -> None:
        """A job of ``owner`` this worker counted has ended."""
        if self.settings.max_inflight > 0 and self._map is not None:
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
