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
    "Count",
    "ItemCounts",
    "JobDocument",
    "JobId",
    "Submitted",
    "SubmittedState",
    "Timestamp",
]

JobId = Annotated[str, msgspec.Meta(pattern=ID_PATTERN)]
Count = Annotated[int, msgspec.Meta(ge=0)]
#: RFC 3339, UTC, milliseconds: ``2026-01-05T10:00:00.123Z``.
#: A job just stored is either.
SubmittedState = Literal["queued", "running"]
Timestamp = Annotated[str, msgspec.Meta(extra_json_schema={"format": "date-time"})]


class ItemCounts(msgspec.Struct, forbid_unknown_fields=True):
    """A batch's items: how many in all, how many ended well, how many failed."""

    total: Count
    done: Count
    failed: Count


class JobDocument(msgspec.Struct, forbid_unknown_fields=True):
    """A job's state: ``job`` is its name (``parcel``, ...), ``attempts`` how many times it
    was started (a run cut off by a crash is started again), ``error`` why it failed, and
    ``items`` a batch's counts."""

    id: JobId
    job: str
    state: JobState
    created_at: Timestamp
    started_at: Timestamp | None
    finished_at: Timestamp | None
    attempts: Count
    error: str | None
    items: ItemCounts | msgspec.UnsetType = msgspec.UNSET


class Submitted(msgspec.Struct, forbid_unknown_fields=True):
    """A job stored, and started or queued (the 202 of a submit)."""

    job: JobId
    state: SubmittedState
    accepted: Annotated[int, msgspec.Meta(ge=0, description="Items of a batch.")] | (
        msgspec.UnsetType
    ) = msgspec.UNSET
