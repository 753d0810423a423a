"""The io pool: one ThreadPoolExecutor per gunicorn worker, for jobs that mostly wait."""

from __future__ import annotations

import asyncio
import contextlib
import functools
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any


class IoPool:
    """Runs functions on threads; the caller awaits an asyncio future.

    ``threads`` are the jobs' (the lanes count them); ``reserved`` more are for the layer's
    own bounded work beside them (callback POSTs, at most that many at once), so that work
    never takes a thread a job counts on.
    """

    def __init__(self, threads: int, *, reserved: int = 0) -> None:
        self.threads = threads
        self.reserved = reserved
        self.busy = 0
        self._executor = ThreadPoolExecutor(threads + reserved, thread_name_prefix="jobpool-io")

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> asyncio.Future[Any]:
        """Start ``fn`` on a thread. A timeout cannot stop a thread: the future still ends."""
        loop = asyncio.get_running_loop()
        self.busy += 1
        future = loop.run_in_executor(self._executor, functools.partial(fn, *args, **kwargs))
        future.add_done_callback(self._done)
        return future

    def post(self, fn: Callable[..., Any], /, *args: Any, done: Callable[[Any], None]) -> None:
        """Start ``fn(*args)`` on a thread, then call ``done(result)`` on the loop (with the
        exception instead if it raised). No futures: the cheapest hand-off there is."""
        loop = asyncio.get_running_loop()
        self.busy += 1
        self._executor.submit(self._call, loop, fn, args, done)

    def _call(
        self,
        loop: asyncio.AbstractEventLoop,
        fn: Callable[..., Any],
        args: tuple[Any, ...],
        done: Callable[[Any], None],
    ) -> None:
        try:
            result = fn(*args)
        except BaseException as ex:  # reported to the loop, never lost on the thread
            result = ex
        with contextlib.suppress(RuntimeError):  # a closed loop: nobody is waiting any more
            loop.call_soon_threadsafe(self._posted, done, result)

    def _posted(self, done: Callable[[Any], None], result: Any) -> None:
        self.busy -= 1
        done(result)

    def _done(self, _future: asyncio.Future[Any]) -> None:
        self.busy -= 1

    def close(self, *, wait: bool) -> None:
        self._executor.shutdown(wait=wait, cancel_futures=True)
