"""The job record: one row of the store; :meth:`JobRecord.document` fills its public
document (:mod:`service.jobs.document`)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Literal

import msgspec

from service.jobs.document import (
    AttemptDocument,
    CallbackDocument,
    CancelDocument,
    CancelHow,
    ItemCounts,
    JobDocument,
    ProgressDocument,
)
from service.jobs.state import JobState


@dataclass(frozen=True, slots=True)
class FailedAttempt:
    """One attempt of a job that failed and was retried."""

    attempt: int
    started_at: float
    finished_at: float
    error: str


@dataclass(frozen=True, slots=True)
class Progress:
    """How far a task said it got."""

    done: int
    total: int | None = None
    message: str | None = None

    def document(self) -> ProgressDocument:
        return ProgressDocument(done=self.done, total=self.total, message=self.message)


#: Where a job's callback is once its job has ended (before: ``waiting``, not stored).
DeliveryState = Literal["pending", "delivered", "failed"]


@dataclass(frozen=True, slots=True)
class CallbackStatus:
    """How the delivery of a job's callback goes (the outbox entry its end wrote)."""

    state: DeliveryState
    attempts: int = 0
    last_status: int | None = None
    last_error: str | None = None
    delivered_at: float | None = None


@dataclass(frozen=True, slots=True)
class Delivery:
    """An attempt at a job's callback, taken from the outbox by one worker: it holds the
    entry (a lease) until it records the outcome, ``attempt`` naming this attempt."""

    job_id: str
    owner: str
    url: str
    #: This attempt's number (1 for the first); an outcome for an older one is ignored.
    attempt: int
    #: When the job ended: the retries' horizon counts from here.
    first_at: float
    #: The W3C trace context of the submit, when it was traced.
    traceparent: str | None = None


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
    #: How many of its runs crashes cut off (bounded by JOBPOOL_MAX_ATTEMPTS).
    interruptions: int = 0
    result: Any = None
    done: int = 0
    failed: int = 0
    #: When a scheduled job may start (Unix seconds): its delay, or its next retry.
    not_before: float | None = None
    #: Its attempts that failed and were retried, oldest first.
    failed_attempts: tuple[FailedAttempt, ...] = ()
    #: When a client asked its run to stop (it was running then).
    cancel_requested_at: float | None = None
    #: How a cancelled job was stopped (see :class:`~service.jobs.document.CancelDocument`).
    cancelled_how: CancelHow | None = None
    #: What its task last said of how far it got.
    progress: Progress | None = None
    #: The URL its end is POSTed to (``Job-Callback``), and how that goes once it ended.
    callback: str | None = None
    delivery: CallbackStatus | None = None
    #: The W3C trace context (``traceparent``) of the request that submitted it, if traced.
    traceparent: str | None = None
    #: Not stored: this submit found the job an earlier one with its Idempotency-Key made.
    replayed: bool = False

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
            started_at=_maybe_iso(self.started_at),
            finished_at=_maybe_iso(self.finished_at),
            attempts=self.attempts,
            error=self.error,
            next_attempt_at=_maybe_iso(self.not_before)
            if self.state is JobState.SCHEDULED
            else None,
            items=msgspec.UNSET
            if self.items is None
            else ItemCounts(total=len(self.items), done=self.done, failed=self.failed),
            failed_attempts=[
                AttemptDocument(
                    attempt=a.attempt,
                    started_at=_iso(a.started_at),
                    finished_at=_iso(a.finished_at),
                    error=a.error,
                )
                for a in self.failed_attempts
            ]
            if self.failed_attempts
            else msgspec.UNSET,
            progress=msgspec.UNSET if self.progress is None else self.progress.document(),
            cancel=msgspec.UNSET
            if self.cancel_requested_at is None and self.cancelled_how is None
            else CancelDocument(
                requested_at=_maybe_iso(self.cancel_requested_at), how=self.cancelled_how
            ),
            callback=msgspec.UNSET if self.callback is None else self._callback(),
        )

    def _callback(self) -> CallbackDocument:
        assert self.callback is not None
        status = self.delivery
        if status is None:  # nothing in the outbox yet: the job has not ended
            return CallbackDocument(self.callback, "waiting", 0, None, None, None)
        return CallbackDocument(
            url=self.callback,
            state=status.state,
            attempts=status.attempts,
            last_status=status.last_status,
            last_error=status.last_error,
            delivered_at=_maybe_iso(status.delivered_at),
        )


def _maybe_iso(ts: float | None) -> str | None:
    return None if ts is None else _iso(ts)


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
    #: How a cancelled job was stopped.
    how: CancelHow | None = None
    #: What its task last said of how far it got, if it has not been written yet.
    reported: Progress | None = None


def encode_attempts(attempts: tuple[FailedAttempt, ...]) -> bytes | None:
    """The failed attempts as the stores keep them (JSON); None for none."""
    if not attempts:
        return None
    return msgspec.json.encode([
        [a.attempt, a.started_at, a.finished_at, a.error] for a in attempts
    ])  # fmt: skip


def decode_attempts(blob: bytes | None) -> tuple[FailedAttempt, ...]:
    if not blob:
        return ()
    return tuple(FailedAttempt(*entry) for entry in msgspec.json.decode(blob))


def encode_progress(progress: Progress | None) -> bytes | None:
    if progress is None:
        return None
    return msgspec.json.encode([progress.done, progress.total, progress.message])


def decode_progress(blob: bytes | None) -> Progress | None:
    if not blob:
        return None
    done, total, message = msgspec.json.decode(blob)
    return Progress(done, total, message)


@dataclass(frozen=True, slots=True)
class JobQuery:
    """Which jobs a listing wants: newest first, ``limit`` of them at most."""

    #: Whose jobs (None: every client's, for operators).
    owner: str | None
    limit: int
    #: Jobs in one of these states (empty: any).
    states: frozenset[JobState] = frozenset()
    #: Jobs of this name (``parcel``, ``fetch``, ...), or any.
    name: str | None = None
    #: Ids (time-ordered) at least this, and below that: the creation time bounds and the
    #: cursor of the page before.
    id_from: str | None = None
    id_below: str | None = None


@dataclass(frozen=True, slots=True)
class IdempotencyKey:
    """A client's ``Idempotency-Key`` on a submit: the same key with the same request
    (``fingerprint``) is the same job, kept until ``expires_at``."""

    owner: str
    key: str
    fingerprint: bytes
    expires_at: float

    @property
    def name(self) -> str:
        """One text for owner and key (length-prefixed: no two pairs share it)."""
        return f"{len(self.owner)}:{self.owner}{self.key}"
