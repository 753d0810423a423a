"""The job record: one row of the store, and its public document."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import msgspec

from service.jobs.document import ItemCounts, JobDocument
from service.jobs.state import JobState


@dataclass(frozen=True)
class JobRecord:
    """A job as the store keeps it. ``items`` is set for a batch (one task per item)."""

    id: str
    name: str
    owner: str
    state: JobState
    created_at: float
    args: dict[str, Any]
    items: list[Any] | None = None
    started_at: float | None = None
    finished_at: float | None = None
    attempts: int = 0
    error: str | None = None
    #: Its last run was cut off by a crash (the process running it is gone): it may be what
    #: crashed it, so it runs alone next time.
    interrupted: bool = False
    result: Any = None
    done: int = 0
    failed: int = 0

    @property
    def total(self) -> int | None:
        return None if self.items is None else len(self.items)

    def replace(self, **changes: Any) -> JobRecord:
        return dataclasses.replace(self, **changes)

    def document(self) -> JobDocument:
        """The document ``GET /v1/jobs/{id}`` answers with."""
        return JobDocument(
            id=self.id,
            job=self.name,
            state=self.state,
            created_at=_iso(self.created_at),
            started_at=None if self.started_at is None else _iso(self.started_at),
            finished_at=None if self.finished_at is None else _iso(self.finished_at),
            attempts=self.attempts,
            error=self.error,
            items=msgspec.UNSET
            if self.items is None
            else ItemCounts(total=len(self.items), done=self.done, failed=self.failed),
        )


def _iso(ts: float) -> str:
    import datetime as dt

    return (
        dt.datetime.fromtimestamp(ts, tz=dt.UTC)
        .isoformat(timespec="milliseconds")
        .replace("+00:00", "Z")
    )


@dataclass(frozen=True, slots=True)
class ItemRef:
    """A keyed item result that is the batch's own item number ``index``, unchanged.

    The item is already stored with its job, so a store keeps only this reference (no second
    copy of the value); reading the key resolves it to the job's item.
    """

    index: int


@dataclass(frozen=True)
class BatchProgress:
    """Items of a batch that ended since the last write, and the running totals."""

    done: int
    failed: int
    #: (key, value) of the items that succeeded and have a key, to store for look-up; a
    #: value may be an :class:`ItemRef` to the job's own item.
    keyed: list[tuple[str, Any]]


@dataclass(frozen=True, slots=True)
class JobEnd:
    """One job reaching a final state: what :meth:`Store.finish_many` writes for it."""

    record: JobRecord
    state: JobState
    result: Any = None
    error: str | None = None
    progress: BatchProgress | None = None
