"""Job states and the moves between them: the one declaration the stores follow.

Each :class:`Move` is a store operation that changes a job's state: the states it applies in,
and those it may lead to. The stores build their conditions from these sets (the SQLite
statements' ``WHERE state IN (...)``, the Redis scripts' checks), and
``tests/test_store.py`` runs every move from every state through both stores.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


class JobState(StrEnum):
    """Where a job is in its life; serialises as its value."""

    #: Waits for its time: a submit that asked to start later, or a retry's backoff.
    SCHEDULED = "scheduled"
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"


FINAL = frozenset({JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELLED})
UNFINISHED = frozenset({JobState.SCHEDULED, JobState.QUEUED, JobState.RUNNING})
#: Jobs that hold a place in a pool's queue or run (what a client's in-flight cap counts).
IN_FLIGHT = frozenset({JobState.QUEUED, JobState.RUNNING})


@dataclass(frozen=True)
class Move:
    """A store operation that changes a job's state: from one of ``sources`` (anything
    else is left alone) to one of ``targets``."""

    name: str
    sources: frozenset[JobState]
    targets: frozenset[JobState]

    def sql(self) -> str:
        """The sources as an SQL list: ``('queued', 'running')``."""
        return "(" + ", ".join(f"'{s.value}'" for s in sorted(self.sources)) + ")"


#: A new job: stored running when a place is free at once, else queued; scheduled when it
#: may start only later; or already ended, when its work was done as it was accepted (an
#: inline batch: see the registry's ``inline_when``).
ADD = Move("add", frozenset(), UNFINISHED | {JobState.SUCCEEDED, JobState.FAILED})
#: A scheduled job's time has come: it waits for a place like any other.
DUE = Move("due", frozenset({JobState.SCHEDULED}), frozenset({JobState.QUEUED}))
#: A waiting job gets its place (a worker's lane, or a claim from a shared queue).
START = Move("start", frozenset({JobState.QUEUED}), frozenset({JobState.RUNNING}))
#: A run ends (cancelled: it was stopped on a client's request). A queued job may end too:
#: its arguments were lost.
FINISH = Move("finish", IN_FLIGHT, FINAL)
#: A run failed and the job has retries left: it waits for its next attempt.
RETRY = Move("retry", frozenset({JobState.RUNNING}), frozenset({JobState.SCHEDULED}))
#: A run was cut off (a shutdown, or a crash found later): the job runs again.
REQUEUE = Move("requeue", frozenset({JobState.RUNNING}), frozenset({JobState.QUEUED}))
#: A client cancels a job that has not started (a running one is asked to stop instead,
#: and ends cancelled through FINISH).
CANCEL = Move(
    "cancel", frozenset({JobState.SCHEDULED, JobState.QUEUED}), frozenset({JobState.CANCELLED})
)

MOVES = (ADD, DUE, START, FINISH, RETRY, REQUEUE, CANCEL)


def is_final(state: JobState) -> bool:
    """Whether nothing more will happen to a job in ``state``."""
    return state in FINAL


def can_move(src: JobState, dst: JobState) -> bool:
    """Whether some move takes a job from ``src`` to ``dst``."""
    return any(src in m.sources and dst in m.targets for m in MOVES)


def can_cancel(state: JobState) -> bool:
    """Whether a cancel ends the job at once (it has not started); a running one is asked
    to stop, and ends cancelled once it has."""
    return state in CANCEL.sources


def can_stop(state: JobState) -> bool:
    """Whether a cancel asks the job's run to stop."""
    return state is JobState.RUNNING


def after_interruption(interruptions: int, max_attempts: int) -> JobState:
    """State of a job whose runs were cut off ``interruptions`` times (by crashes of the
    processes running it): it runs again up to ``max_attempts`` runs, then fails."""
    return JobState.QUEUED if interruptions < max_attempts else JobState.FAILED
