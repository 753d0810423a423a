"""The cpu pool: processes for heavy work, created after fork, niced, one job each at a time.

Each slot is a one-process ``ProcessPoolExecutor`` (forkserver context: never ``fork`` from
a threaded worker). One process per slot is what lets a timeout kill exactly the process
that runs the late job, and lets a crash fail exactly the job that caused it; the other
slots keep running.

A job first takes a host token (:mod:`service.jobs.tokens`), then the lowest free slot.
A worker has as many slots as the host has tokens, so it can run borrowed tokens' jobs
too. A slot's process starts with its first job; those of the worker's share are kept,
and a process on a slot past the share stops after ``SPARE_IDLE_S`` without work, so
borrowing costs memory only while the load is uneven.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import heapq
import logging
import multiprocessing
import os
import signal
import sys
import threading
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from typing import Any

from service import logs, tracing
from service.jobs.context import RunContext, run_in
from service.jobs.failures import ProcessDied, TaskTimeout
from service.jobs.tokens import HostTokens
from service.tracing import Trace

log = logging.getLogger(__name__)

PR_SET_PDEATHSIG = 1
#: Seconds a process started for a borrowed token waits for work before it stops.
SPARE_IDLE_S = 30.0


#: In a cpu process: where its tasks' progress goes (to the worker's reader thread).
_reports: Any = None


def _child_init(nice: int, log_level: str, reports: Any) -> None:
    global _reports
    _reports = reports
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


def _run_in_child(
    job_id: str,
    attempt: int,
    final: bool,
    fn: Callable[..., Any],
    kwargs: dict[str, Any],
    trace: Trace | None = None,
) -> Any:
    """A job's function in a cpu process, with a run context whose progress (and, when
    traced, whose spans) cross back."""

    def report(done: int, total: int | None, message: str | None) -> None:
        _reports.put((job_id, done, total, message))

    if trace is not None:
        tracing.in_child(_reports.put)
    context = RunContext(job_id, attempt, final=final, report=report, trace=trace)
    return run_in(context, fn, **kwargs)


#: How multiprocessing's resource tracker warns of the semaphores a SIGKILLed worker left:
#: plain text on stderr, where every line must be JSON, and nothing to act on (the kill
#: itself is logged by gunicorn, and the tracker frees them).
_TRACKER_WARNING = "ignore::UserWarning:multiprocessing.resource_tracker"


def _quiet_resource_tracker() -> None:
    """Start this process's resource tracker (if not yet) with that warning off: it runs
    with the interpreter flags of the process that starts it, ``sys.warnoptions`` too."""
    if _TRACKER_WARNING not in sys.warnoptions:
        sys.warnoptions.append(_TRACKER_WARNING)


class CpuPool:
    """``await pool.run(fn, args, kwargs, timeout_s)`` on one of ``processes`` slots, of
    which the first ``keep`` (default: all) keep their process when idle.

    Cancelling a run (its awaiting task) stops its process; a job's progress reports reach
    its :class:`~service.jobs.context.RunContext` in the worker, on the event loop.
    """

    def __init__(
        self,
        *,
        processes: int,
        nice: int,
        tokens: HostTokens,
        keep: int | None = None,
        preload: tuple[str, ...] = (),
        log_level: str = "info",
        spare_idle_s: float = SPARE_IDLE_S,
    ) -> None:
        self.processes = processes
        self.keep = processes if keep is None else min(keep, processes)
        self.spare_idle_s = spare_idle_s
        self.nice = nice
        self.log_level = log_level
        self.busy = 0
        self._tokens = tokens
        self._context = multiprocessing.get_context("forkserver")
        _quiet_resource_tracker()
        if preload:
            self._context.set_forkserver_preload(list(preload))
        self._slots: list[ProcessPoolExecutor | None] = [None] * processes
        self._room = asyncio.Semaphore(processes)
        self._free = list(range(processes))  # a heap: the lowest free slot is used first
        self._used = [0] * processes  # runs started per slot, to tell idle spares
        self._reports = self._context.SimpleQueue()
        self._reader: threading.Thread | None = None
        #: The run contexts of jobs running here, by job id (for their reports).
        self._running: dict[str, RunContext] = {}

    def _executor(self, slot: int) -> ProcessPoolExecutor:
        executor = self._slots[slot]
        if executor is None:
            executor = ProcessPoolExecutor(
                1,
                mp_context=self._context,
                initializer=_child_init,
                initargs=(self.nice, self.log_level, self._reports),
            )
            self._slots[slot] = executor
        return executor

    async def run(
        self,
        fn: Callable[..., Any],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        timeout_s: float,
        context: RunContext | None = None,
    ) -> Any:
        async with self._room, self._tokens.hold():
            slot = heapq.heappop(self._free)
            self.busy += 1
            self._used[slot] += 1
            try:
                if context is None:
                    future = self._executor(slot).submit(fn, *args, **kwargs)
                else:
                    self._listen()
                    self._running[context.job_id] = context
                    future = self._executor(slot).submit(
                        _run_in_child, context.job_id, context.attempt, context.final, fn,
                        kwargs, context.trace,
                    )  # fmt: skip
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
                if context is not None:
                    self._running.pop(context.job_id, None)
                self.busy -= 1
                heapq.heappush(self._free, slot)
                if slot >= self.keep:
                    asyncio.get_running_loop().call_later(
                        self.spare_idle_s, self._retire, slot, self._used[slot]
                    )

    def _listen(self) -> None:
        """Start the thread that hands the processes' progress reports to the loop."""
        if self._reader is not None:
            return
        loop = asyncio.get_running_loop()

        def read() -> None:
            while (message := self._reports.get()) is not None:
                if message[0] == "spans":  # a traced run's spans: exported from here
                    tracing.export_foreign(message[1])
                    continue
                with contextlib.suppress(RuntimeError):  # the loop is closed: nobody listens
                    loop.call_soon_threadsafe(self._deliver, *message)

        self._reader = threading.Thread(target=read, name="jobpool-cpu-reports", daemon=True)
        self._reader.start()

    def _deliver(self, job_id: str, done: int, total: int | None, message: str | None) -> None:
        context = self._running.get(job_id)
        if context is not None:
            context.progress(done, total, message)

    def _retire(self, slot: int, runs: int) -> None:
        """Stop a spare slot's process if it ran nothing since ``runs`` and is free."""
        executor = self._slots[slot]
        if executor is None or self._used[slot] != runs or slot not in self._free:
            return
        self._slots[slot] = None
        executor.shutdown(wait=False, cancel_futures=True)

    def _replace(self, slot: int, *, kill: bool) -> None:
        executor = self._slots[slot]
        self._slots[slot] = None
        if executor is None:
            return
        if kill:
            # ProcessPoolExecutor offers no way to stop one task; its process is all we can
            # stop. _processes is private but stable across 3.11-3.14.
            for process in list(getattr(executor, "_processes", {}).values()):
                process.kill()
        executor.shutdown(wait=False, cancel_futures=True)

    def close(self, *, wait: bool) -> None:
        if self._reader is not None:
            self._reports.put(None)  # the reader's end
            self._reader = None
        for slot, executor in enumerate(self._slots):
            if executor is not None:
                if not wait:
                    for process in list(getattr(executor, "_processes", {}).values()):
                        process.kill()
                executor.shutdown(wait=wait, cancel_futures=True)
                self._slots[slot] = None
