"""What the API shows of a job: its document, and the answer that it was submitted.

Declared once, as Structs: the routes encode them (msgspec, in C) and ``/openapi.json``
derives their schemas from them. ``JobRecord.document()`` fills a :class:`JobDocument`.
"""

from __future__ import annotations

from typing import Annotated, Literal

import msgspec

from service.ids import PATTERN as ID_PATTERN
from service.jobs.state import JobState

__all__ = [
    "AttemptDocument",
    "CallbackDocument",
    "CallbackState",
    "CancelDocument",
    "CancelHow",
    "Count",
    "ItemCounts",
    "JobDocument",
    "JobId",
    "JobPage",
    "ProgressDocument",
    "Submitted",
    "SubmittedState",
    "Timestamp",
]

JobId = Annotated[str, msgspec.Meta(pattern=ID_PATTERN)]
Count = Annotated[int, msgspec.Meta(ge=0)]
#: RFC 3339, UTC, milliseconds: ``2026-01-05T10:00:00.123Z``.
#: How a cancelled job was stopped (see :class:`CancelDocument`).
CancelHow = Literal["dequeued", "terminated", "stopped", "abandoned"]
#: A job just stored: scheduled (to start later), queued or running; a replayed submit
#: (the same Idempotency-Key) answers with the job's state now, whatever it is.
SubmittedState = Literal["scheduled", "queued", "running", "succeeded", "failed", "cancelled"]
Timestamp = Annotated[str, msgspec.Meta(extra_json_schema={"format": "date-time"})]
#: Where a job's callback is (see :class:`CallbackDocument`).
CallbackState = Literal["waiting", "pending", "delivered", "failed"]


class ItemCounts(msgspec.Struct, forbid_unknown_fields=True):
    """A batch's items: how many in all, how many ended well, how many failed."""

    total: Count
    done: Count
    failed: Count


class AttemptDocument(msgspec.Struct, forbid_unknown_fields=True):
    """An attempt that failed and was retried."""

    attempt: Annotated[int, msgspec.Meta(ge=1)]
    started_at: Timestamp
    finished_at: Timestamp
    error: str


class ProgressDocument(msgspec.Struct, forbid_unknown_fields=True):
    """How far the task said it got: ``done`` of ``total`` (when it knows), and a word."""

    done: Count
    total: Count | None
    message: str | None


class CancelDocument(msgspec.Struct, forbid_unknown_fields=True):
    """A cancel: when a running job was asked to stop, and how the job was stopped
    (``dequeued``: it had not started; ``terminated``: its cpu process was stopped;
    ``stopped``: its task saw the request; ``abandoned``: it did not stop within the grace
    period, its result is thrown away); ``how`` is null while a running job stops."""

    requested_at: Timestamp | None
    how: CancelHow | None


class CallbackDocument(msgspec.Struct, forbid_unknown_fields=True):
    """The job's completion callback (``Job-Callback``): ``waiting`` until the job ends,
    ``pending`` while it is being delivered (or waits for its next attempt), ``delivered``
    once the receiver answered 2xx, ``failed`` when it was given up (past
    ``JOBPOOL_CALLBACK_HORIZON_S``, or a URL the SSRF guard refused): ``POST
    /v1/jobs/{id}/callback`` sends it again. ``attempts`` POSTs so far, ``last_status``
    the last answer's HTTP status (null: none), ``last_error`` why the last attempt failed."""

    url: str
    state: CallbackState
    attempts: Count
    last_status: int | None
    last_error: str | None
    delivered_at: Timestamp | None


class JobDocument(msgspec.Struct, forbid_unknown_fields=True):
    """A job's state: ``job`` is its name (``parcel``, ...), ``attempts`` how many times it
    was started, ``error`` why its last attempt failed, ``next_attempt_at`` when a scheduled
    job starts (a delayed submit, or a retry), ``items`` a batch's counts,
    ``failed_attempts`` the attempts that failed and were retried, ``progress`` what a task
    said of how far it got, ``cancel`` how a cancel went, ``callback`` where its completion
    callback is."""

    id: JobId
    job: str
    state: JobState
    created_at: Timestamp
    started_at: Timestamp | None
    finished_at: Timestamp | None
    attempts: Count
    error: str | None
    next_attempt_at: Timestamp | None = None
    items: ItemCounts | msgspec.UnsetType = msgspec.UNSET
    failed_attempts: list[AttemptDocument] | msgspec.UnsetType = msgspec.UNSET
    progress: ProgressDocument | msgspec.UnsetType = msgspec.UNSET
    cancel: CancelDocument | msgspec.UnsetType = msgspec.UNSET
    callback: CallbackDocument | msgspec.UnsetType = msgspec.UNSET


class JobPage(msgspec.Struct, forbid_unknown_fields=True):
    """A page of the caller's jobs, newest first; ``next_cursor`` asks for the next page
    (null: this is the last)."""

    jobs: list[JobDocument]
    next_cursor: str | None


class Submitted(msgspec.Struct, forbid_unknown_fields=True):
    """A job stored, and started or queued (the 202 of a submit)."""

    job: JobId
    state: SubmittedState
    accepted: Annotated[int, msgspec.Meta(ge=0, description="Items of a batch.")] | (
        msgspec.UnsetType
    ) = msgspec.UNSET
