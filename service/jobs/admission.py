"""Admission: a bounded count of slots per pool, taken before a job is accepted.

ThreadPoolExecutor and ProcessPoolExecutor queue without bound; this is the bound. A full
pool refuses at once, or after a bounded wait when one is configured.
"""

from __future__ import annotations

import asyncio
import collections

from service.errors import Overloaded, TooManyTasks


class Admission:
    """Counts slots in use; ``acquire(n)`` takes n or raises :class:`Overloaded`
    (:class:`TooManyTasks` when n is more than it can ever hold)."""

    def __init__(self, name: str, capacity: int, *, wait_s: float = 0.0) -> None:
        self.name = name
        self.capacity = capacity
        self.wait_s = wait_s
        self.in_use = 0
        self._waiters: collections.deque[tuple[int, asyncio.Future[None]]] = collections.deque()

    @property
    def free(self) -> int:
        return self.capacity - self.in_use

    def try_acquire(self, n: int = 1) -> bool:
        if n <= self.free and not self._waiters:
            self.in_use += n
            return True
        return False

    def check_fits(self, n: int) -> None:
        """Raise :class:`TooManyTasks` if ``n`` tasks can never fit."""
        if n > self.capacity:
            raise TooManyTasks(
                f"{n} tasks can never fit the {self.name} pool: it holds {self.capacity}"
                f" (JOBPOOL_{self.name.upper()}_QUEUE_MAX)"
            )

    async def acquire(self, n: int = 1) -> None:
        self.check_fits(n)
        if self.try_acquire(n):
            return
        if self.wait_s <= 0:
            raise self._overloaded()
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        entry = (n, waiter)
        self._waiters.append(entry)
        try:
            await asyncio.wait_for(asyncio.shield(waiter), self.wait_s)
        except TimeoutError:
            if waiter.done() and not waiter.cancelled():
                return  # granted at the last moment: keep it
            waiter.cancel()
            self._waiters.remove(entry)
            self._wake()
            raise self._overloaded() from None

    def release(self, n: int = 1) -> None:
        self.in_use -= n
        assert self.in_use >= 0, f"{self.name}: released more than acquired"
        self._wake()

    def force(self, n: int = 1) -> None:
        """Take slots past capacity: for jobs accepted earlier and being recovered."""
        self.in_use += n

    def _wake(self) -> None:
        # First come, first served: a large waiter at the head is not overtaken.
        while self._waiters:
            n, waiter = self._waiters[0]
            if waiter.done():
                self._waiters.popleft()
                continue
            if n > self.free:
                return
            self._waiters.popleft()
            self.in_use += n
            waiter.set_result(None)

    def _overloaded(self) -> Overloaded:
        return Overloaded(
            f"the {self.name} pool is full ({self.in_use} of {self.capacity} slots in use)",
            retry_after_s=1,
        )
