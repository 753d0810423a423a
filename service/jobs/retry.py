"""Retries: which failures of a job run again, and how long the next attempt waits.

A job declares its policy with :func:`~service.jobs.registry.job` (``retries=N``,
``backoff=Backoff(...)``). A run that raises, or times out, or whose cpu process dies, is a
failed attempt: with retries left the job is scheduled again after the backoff's delay,
else it fails with the last error. A task says a failure is not worth retrying by raising
:class:`DoNotRetry` (or an exception whose ``retryable`` attribute is False), and that the
next attempt must wait at least so long (an upstream's ``Retry-After``) by raising
:class:`RetryAfter`. A task sees whether it is on its last attempt in its run context
(``current().final``).

Runs cut off by a crash of the worker are another matter, with their own bound
(``JOBPOOL_MAX_ATTEMPTS``, see :func:`service.jobs.state.after_interruption`).
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass


class DoNotRetry(Exception):
    """Raised by a task: this failure is final, whatever the job's retry policy."""


class RetryAfter(Exception):
    """Raised by a task: the attempt failed, and the next one waits ``seconds`` at least."""

    def __init__(self, message: str, *, seconds: float) -> None:
        super().__init__(message)
        self.seconds = seconds


@dataclass(frozen=True)
class Backoff:
    """Exponential backoff with full jitter, capped.

    The wait before retry ``n`` (1 for the first) is at most ``min(max_s, base_s *
    factor ** (n - 1))``; with ``jitter`` it is a uniform draw below that bound, so retries
    of many jobs that failed together spread out instead of coming back together.
    """

    base_s: float = 1.0
    factor: float = 2.0
    max_s: float = 300.0
    jitter: bool = True

    def __post_init__(self) -> None:
        if self.base_s < 0 or self.factor < 1 or self.max_s < self.base_s:
            raise ValueError(f"{self}: want base_s >= 0, factor >= 1, max_s >= base_s")

    def bound(self, retry: int) -> float:
        """The longest wait before retry number ``retry`` (1, 2, ...)."""
        exponent = min(retry - 1, 64)  # past this the cap holds anyway
        return min(self.max_s, self.base_s * self.factor**exponent)

    def delay(self, retry: int, rand: Callable[[], float] = random.random) -> float:
        """The wait before retry number ``retry``."""
        bound = self.bound(retry)
        return bound * rand() if self.jitter else bound
