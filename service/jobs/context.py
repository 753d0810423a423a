"""What a running task may know of its run: whether it was asked to stop, and how to say
how far it got.

A task calls :func:`current` (outside a run it gets a context that is never cancelled and
reports nowhere)::

    run = current()
    for n, part in enumerate(parts):
        run.check()                      # raises Cancelled once a cancel was asked for
        work(part)
        run.progress(n + 1, len(parts))  # shown in the job document

An io task (a thread) stops cooperatively: the layer sets the flag, the task sees it at its
next check. A cpu task needs no check (its process is stopped), but may report progress the
same way: it crosses back to the worker through a pipe.
"""

from __future__ import annotations

import contextvars
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from service import tracing
from service.tracing import Trace

if TYPE_CHECKING:
    from service.jobs.record import JobRecord

#: Reports progress: (done, total or None, message or None).
Reporter = Callable[[int, int | None, str | None], None]


class Cancelled(Exception):
    """The run was asked to stop (raised by :meth:`RunContext.check`)."""


class RunContext:
    """One run of one job."""

    __slots__ = ("_cancel", "_report", "attempt", "final", "job_id", "trace")

    def __init__(
        self,
        job_id: str = "",
        attempt: int = 0,
        *,
        final: bool = True,
        report: Reporter | None = None,
        cancel: threading.Event | None = None,
        trace: Trace | None = None,
    ) -> None:
        self.job_id = job_id
        self.attempt = attempt
        #: The run's span is made from it (None: the submit was not traced).
        self.trace = trace
        #: No retry follows this attempt if it fails (its job's retries are used up).
        self.final = final
        self._report = report
        self._cancel = cancel or threading.Event()

    def cancel(self) -> None:
        """Ask the run to stop (the layer does, on a client's cancel)."""
        self._cancel.set()

    def cancelled(self) -> bool:
        """Whether a cancel was asked for."""
        return self._cancel.is_set()

    def check(self) -> None:
        """Raise :class:`Cancelled` if a cancel was asked for."""
        if self._cancel.is_set():
            raise Cancelled(f"job {self.job_id} was cancelled")

    def progress(self, done: int, total: int | None = None, message: str | None = None) -> None:
        """Say how far the run got; the job document shows the latest (written at most
        every so often, and once more at the end)."""
        if self._report is not None:
            self._report(done, total, message)


_current: contextvars.ContextVar[RunContext | None] = contextvars.ContextVar(
    "jobpool_run", default=None
)
_NOWHERE = RunContext()


def current() -> RunContext:
    """The context of the run this code is part of (a no-op one outside a run)."""
    return _current.get() or _NOWHERE


def enter(context: RunContext) -> None:
    """Make ``context`` :func:`current` for the rest of this task (or thread)."""
    _current.set(context)


def run_in(context: RunContext, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Any:
    """``fn(*args, **kwargs)`` with ``context`` as :func:`current` (in this thread), within
    the run's span when it is traced."""
    token = _current.set(context)
    try:
        with tracing.run_span(context.trace):
            return fn(*args, **kwargs)
    finally:
        _current.reset(token)


def trace_of(record: JobRecord) -> Trace | None:
    """How a run of ``record`` is traced: under its submit's span on its first, undelayed
    run; linked to it only when it was delayed or is a retry (a trace of its own)."""
    if record.traceparent is None:
        return None
    return Trace(
        record.traceparent,
        child=record.not_before is None and not record.failed_attempts,
        job=record.name,
        job_id=record.id,
        attempt=record.attempts,
    )
