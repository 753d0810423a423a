"""The cpu pool: processes for heavy work, created after fork, niced, one job each at a time.

Each slot is a one-process ``ProcessPoolExecutor`` (forkserver context: never ``fork`` from
a threaded worker). One process per slot is what lets a timeout kill exactly the process
that runs the late job, and lets a crash fail exactly the job that caused it; the other
slots keep running.
"""

from __future__ import annotations

import asyncio
import ctypes
import logging
import multiprocessing
import os
import signal
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from typing import Any

from service import logs
from service.jobs.tokens import HostTokens

log = logging.getLogger(__name__)

PR_SET_PDEATHSIG = 1


class TaskTimeout(Exception):
    """The task ran past its job's timeout."""


class ProcessDied(Exception):
    """The process running the task died (a crash, a signal, out of memory)."""


def _child_init(nice: int, log_level: str) -> None:
    # The same JSON lines as the worker: a task's log calls show up like any other.
    logs.configure(log_level)
    # Below the HTTP side in priority, so requests stay fast while the cpu pool is saturated.
    os.nice(nice)
    # If our parent (the forkserver, which dies with its gunicorn worker) goes, go too:
    # a job of a dead worker runs again elsewhere and must not also run here.
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    except (OSError, AttributeError):  # pragma: no cover - not Linux
        pass


def _warm() -> int:
    return os.getpid()


class CpuPool:
    """``await pool.run(fn, args, kwargs, timeout_s)`` on one of ``processes`` slots."""

    kind = "cpu"

    def __init__(
        self,
        *,
        processes: int,
        nice: int,
        tokens: HostTokens,
        preload: tuple[str, ...] = (),
        log_level: str = "info",
    ) -> None:
        self.processes = processes
        self.nice = nice
        self.log_level = log_level
        self.busy = 0
        self._tokens = tokens
        self._context = multiprocessing.get_context("forkserver")
        if preload:
            self._context.set_forkserver_preload(list(preload))
        self._slots: list[ProcessPoolExecutor | None] = [None] * processes
        self._idle: asyncio.Queue[int] = asyncio.Queue()
        for i in range(processes):
            self._idle.put_nowait(i)
        self.restarts = 0

    def _executor(self, slot: int) -> ProcessPoolExecutor:
        executor = self._slots[slot]
        if executor is None:
            executor = ProcessPoolExecutor(
                1,
                mp_context=self._context,
                initializer=_child_init,
                initargs=(self.nice, self.log_level),
            )
            self._slots[slot] = executor
        return executor

    async def warm(self) -> None:
        """Start every slot's process now, so the first jobs do not pay for it."""
        loop = asyncio.get_running_loop()
        await asyncio.gather(
            *(
                asyncio.wrap_future(self._executor(i).submit(_warm), loop=loop)
                for i in range(self.processes)
            ),
            return_exceptions=True,
        )

    async def run(
        self,
        fn: Callable[..., Any],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        timeout_s: float,
    ) -> Any:
        slot = await self._idle.get()
        self.busy += 1
        try:
            async with self._tokens.hold():
                future = self._executor(slot).submit(fn, *args, **kwargs)
                try:
                    return await asyncio.wait_for(asyncio.wrap_future(future), timeout_s)
                except TimeoutError:
                    self._replace(slot, kill=True)
                    raise TaskTimeout(f"timed out after {timeout_s:g} s") from None
                except BrokenProcessPool:
                    self._replace(slot, kill=False)
                    raise ProcessDied(
                        "the process running the job died (crash, signal or out of memory)"
                    ) from None
                except asyncio.CancelledError:
                    # The caller gave up (shutdown): do not leave the job running unowned.
                    self._replace(slot, kill=True)
                    raise
        finally:
            self.busy -= 1
            self._idle.put_nowait(slot)

    def _replace(self, slot: int, *, kill: bool) -> None:
        executor = self._slots[slot]
        self._slots[slot] = None
        self.restarts += 1
        if executor is None:
            return
        if kill:
            # ProcessPoolExecutor offers no way to stop one task; its process is all we can
            # stop. _processes is private but stable across 3.11-3.14.
            for process in list(getattr(executor, "_processes", {}).values()):
                process.kill()
        executor.shutdown(wait=False, cancel_futures=True)

    def close(self, *, wait: bool) -> None:
        for slot, executor in enumerate(self._slots):
            if executor is not None:
                if not wait:
                    for process in list(getattr(executor, "_processes", {}).values()):
                        process.kill()
                executor.shutdown(wait=wait, cancel_futures=True)
                self._slots[slot] = None
