"""Job ends the store could not write yet, kept to write again.

A job that ran to its end while the store refused writes (a full disk, the SQLite store at
``JOBPOOL_STORE_MAX_BYTES``, Redis unreachable) is still ``running`` in the store. Left
there, it would show ``running`` until the next start of its worker ran it again. Instead
its end is kept here, in memory, and the janitor writes it again every
``JOBPOOL_JANITOR_INTERVAL_S`` until the store takes it, and once more at shutdown. If the
process dies first, the job runs again after the restart: at least once, as before.

Bounded: past ``MAX_HELD`` the oldest ends are given up (logged); those jobs run again at
the next start instead.
"""

from __future__ import annotations

import logging

from service.errors import StoreUnavailable
from service.jobs.record import JobEnd
from service.jobs.store import Store

log = logging.getLogger(__name__)

#: Ends held at most; each holds its job's result until it is written.
MAX_HELD = 10_000


class UnwrittenEnds:
    def __init__(self) -> None:
        self._held: list[tuple[JobEnd, float]] = []

    def __len__(self) -> int:
        return len(self._held)

    def add(self, ends: list[JobEnd], when: float) -> None:
        self._held.extend((end, when) for end in ends)
        if len(self._held) > MAX_HELD:
            dropped = len(self._held) - MAX_HELD
            del self._held[:dropped]
            log.error("%d job ends could not be kept to write again: they run again at the "
                      "next start", dropped)  # fmt: skip

    async def write(self, store: Store) -> int:
        """Write what is held, each end with its own time; return how many were written."""
        if not self._held:
            return 0
        held, self._held = self._held, []
        by_time: dict[float, list[JobEnd]] = {}
        for end, when in held:
            by_time.setdefault(when, []).append(end)
        written = 0
        for when, ends in by_time.items():
            try:
                await store.finish_many(ends, when)
            except StoreUnavailable:
                self._held.extend((end, when) for end in ends)
            else:
                written += len(ends)
        if written:
            log.warning("wrote %d job ends the store had refused", written)
        return written
