"""The io pool: one ThreadPoolExecutor per gunicorn worker, for jobs that mostly wait (and a
small one of reserved threads, for the callbacks' POSTs)."""

from __future__ import annotations

import asyncio
import contextlib
import functools
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any


class IoPool:
    """Runs functions on threads; the caller awaits an asyncio future.

    ``threads`` are the jobs'; ``reserved`` more, in an executor of their own, run the
    layer's own bounded work (:meth:`submit_reserved`: callback POSTs), which so never takes
    a thread from a job nor gives one to it.
    """

    def __init__(self, threads: int, *, reserved: int = 0) -> None:
        self.threads = threads
        self.reserved = reserved
        self.busy = 0
        self._executor = ThreadPoolExecutor(threads, thread_name_prefix="jobpool-io")
        self._reserved = (
            ThreadPoolExecutor(reserved, thread_name_prefix="jobpool-io-reserved")
            if reserved
            else None
        )

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> asyncio.Future[Any]:
        """Start ``fn`` on a thread. A timeout cannot stop a thread: the future still ends."""
        loop = asyncio.get_running_loop()
        self.busy += 1
        future = loop.run_in_executor(self._executor, functools.partial(fn, *args, **kwargs))
        future.add_done_callback(self._done)
        return future

    def submit_reserved(self, fn: Callable[..., Any], /, *args: Any) -> asyncio.Future[Any]:
        """Start ``fn(*args)`` on a reserved thread (on a job's thread when none is)."""
        if self._reserved is None:
            return self.submit(fn, *args)
        return asyncio.get_running_loop().run_in_executor(self._reserved, fn, *args)

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
        if self._reserved is not None:
            self._reserved.shutdown(wait=wait, cancel_futures=True)
