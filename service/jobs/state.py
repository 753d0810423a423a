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

    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"


FINAL = frozenset({JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELLED})
UNFINISHED = frozenset({JobState.QUEUED, JobState.RUNNING})


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

    def lua(self, var: str) -> str:
        """A Lua condition: whether the state in ``var`` is one of the sources."""
        return " or ".join(f"{var} == '{s.value}'" for s in sorted(self.sources))


#: A new job: stored running when a place is free at once, else queued.
ADD = Move("add", frozenset(), frozenset({JobState.QUEUED, JobState.RUNNING}))
#: A waiting job gets its place (a worker's lane, or a claim from a shared queue).
START = Move("start", frozenset({JobState.QUEUED}), frozenset({JobState.RUNNING}))
#: A run ends. A queued job may end too: its arguments were lost, or it gave up.
FINISH = Move("finish", UNFINISHED, frozenset({JobState.SUCCEEDED, JobState.FAILED}))
#: A run was cut off (a shutdown, or a crash found later): the job runs again.
REQUEUE = Move("requeue", frozenset({JobState.RUNNING}), frozenset({JobState.QUEUED}))
#: A client cancels a job that has not started.
CANCEL = Move("cancel", frozenset({JobState.QUEUED}), frozenset({JobState.CANCELLED}))

MOVES = (ADD, START, FINISH, REQUEUE, CANCEL)


def is_final(state: JobState) -> bool:
    """Whether nothing more will happen to a job in ``state``."""
    return state in FINAL


def can_move(src: JobState, dst: JobState) -> bool:
    """Whether some move takes a job from ``src`` to ``dst``."""
    return any(src in m.sources and dst in m.targets for m in MOVES)


def can_cancel(state: JobState) -> bool:
    """Only a job that has not started can be cancelled (a running task cannot be recalled)."""
    return state in CANCEL.sources


def after_interruption(attempts: int, max_attempts: int) -> JobState:
    """State of a job whose run was cut off (its process died or stopped) after ``attempts``."""
    return JobState.QUEUED if attempts < max_attempts else JobState.FAILED
