"""The io pool: one ThreadPoolExecutor per gunicorn worker, for jobs that mostly wait."""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any


class IoPool:
    """Runs functions on threads; the caller awaits an asyncio future."""

    kind = "io"

    def __init__(self, threads: int) -> None:
        self.threads = threads
        self.busy = 0
        self._executor = ThreadPoolExecutor(threads, thread_name_prefix="jobpool-io")

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> asyncio.Future[Any]:
        """Start ``fn`` on a thread. A timeout cannot stop a thread: the future still ends."""
        loop = asyncio.get_running_loop()
        self.busy += 1
        future = loop.run_in_executor(self._executor, functools.partial(fn, *args, **kwargs))
        future.add_done_callback(self._done)
        return future

    def _done(self, _future: asyncio.Future[Any]) -> None:
        self.busy -= 1

    @property
    def idle(self) -> int:
        return max(0, self.threads - self.busy)

    def close(self, *, wait: bool) -> None:
        self._executor.shutdown(wait=wait, cancel_futures=True)
