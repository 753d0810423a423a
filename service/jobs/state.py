"""Job states and the transitions between them, as small pure functions."""

from __future__ import annotations

from enum import StrEnum


class JobState(StrEnum):
    """Where a job is in its life; serialises as its value."""

    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"


FINAL = frozenset({JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELLED})
UNFINISHED = frozenset({JobState.QUEUED, JobState.RUNNING})

_ALLOWED: dict[JobState, frozenset[JobState]] = {
    JobState.QUEUED: frozenset({JobState.RUNNING, JobState.CANCELLED, JobState.FAILED}),
    # RUNNING -> QUEUED: the process running it stopped (shutdown, crash); it runs again.
    JobState.RUNNING: frozenset(
        {JobState.SUCCEEDED, JobState.FAILED, JobState.QUEUED, JobState.RUNNING}
    ),
    JobState.SUCCEEDED: frozenset(),
    JobState.FAILED: frozenset(),
    JobState.CANCELLED: frozenset(),
}


def is_final(state: JobState) -> bool:
    """Whether nothing more will happen to a job in ``state``."""
    return state in FINAL


def can_move(src: JobState, dst: JobState) -> bool:
    """Whether a job may go from ``src`` to ``dst``."""
    return dst in _ALLOWED[src]


def can_cancel(state: JobState) -> bool:
    """Only a job that has not started can be cancelled (a running task cannot be recalled)."""
    return state is JobState.QUEUED


def after_interruption(attempts: int, max_attempts: int) -> JobState:
    """State of a job whose run was cut off (its process died or stopped) after ``attempts``."""
    return JobState.QUEUED if attempts < max_attempts else JobState.FAILED
