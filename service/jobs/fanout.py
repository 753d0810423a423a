"""Several calls of one job at once, for an answer computed within a request (search): each
call runs now on its pool, stored nowhere, and all of them within one deadline. A call still
going at the deadline is cancelled: a coroutine job for real (its sockets are closed), a
thread's job at its own timeout.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from service import tracing
from service.jobs.hold import Admissions, Hold, NoQuota
from service.jobs.registry import JobSpec
from service.jobs.runner import Runner

_NO_QUOTA = NoQuota()


@dataclass(frozen=True, slots=True)
class Outcome:
    """What one call came to: its value, or its error, or the deadline."""

    value: Any = None
    error: BaseException | None = None
    #: Still going at the deadline, and cancelled.
    cut_off: bool = False
    elapsed_s: float = 0.0


async def fan_out(
    runner: Runner,
    admissions: Admissions,
    spec: JobSpec,
    calls: Sequence[dict[str, Any]],
    deadline_s: float,
) -> list[Outcome]:
    """Run ``spec.fn(**kwargs)`` for each of ``calls`` at once; one outcome each, in order,
    never later than ``deadline_s``. Each call takes a place of its pool while it runs (a
    full pool is that call's error, not the whole answer's)."""
    admission = admissions.pools[spec.pool]
    started = time.perf_counter()

    async def one(kwargs: dict[str, Any]) -> tuple[Any, float]:
        await admission.acquire(1)
        hold = Hold(admission, 1, _NO_QUOTA, "")
        try:
            with tracing.run_here(spec.name):  # under the request's span
                return await runner.call(spec, kwargs, hold), time.perf_counter() - started
        finally:
            hold.release()

    tasks = [asyncio.ensure_future(one(kwargs)) for kwargs in calls]
    if tasks:
        await asyncio.wait(tasks, timeout=deadline_s)
    outcomes = []
    for task in tasks:
        if not task.done():
            task.cancel()
            outcomes.append(Outcome(cut_off=True, elapsed_s=deadline_s))
        elif (error := task.exception()) is not None:
            outcomes.append(Outcome(error=error, elapsed_s=time.perf_counter() - started))
        else:
            value, elapsed_s = task.result()
            outcomes.append(Outcome(value=value, elapsed_s=elapsed_s))
    return outcomes
