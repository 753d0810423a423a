"""``GET /v1/jobs``: the caller's jobs, newest first, filtered, a page at a time.

The cursor is opaque to clients: the id of the last job of a page (ids sort by creation
time, so the next page is the ids below it) and a digest of the filters, so a cursor is
refused with other filters than its own. Jobs created while a client pages through arrive
above the cursor: a walk sees every job that existed when it began exactly once.
"""

from __future__ import annotations

import base64
import hashlib

import falcon.asgi

from service import ids
from service.api.http import send_struct
from service.config import Settings
from service.errors import Invalid
from service.jobs.document import JobPage
from service.jobs.layer import JobLayer
from service.jobs.record import JobQuery, JobRecord
from service.jobs.state import JobState
from service.rfc3339 import timestamp

DEFAULT_LIMIT = 50
FILTERS = ("state", "job", "created_after", "created_before")


def encode_cursor(last_id: str, digest: str) -> str:
    return base64.urlsafe_b64encode(f"{last_id}.{digest}".encode()).decode().rstrip("=")


def decode_cursor(cursor: str, digest: str) -> str:
    """The last id of the page before; Invalid for a cursor of another query, or none."""
    try:
        text = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        last_id, _, of = text.partition(".")
    except (ValueError, UnicodeDecodeError):
        raise Invalid('"cursor" is not one this service gave') from None
    if not ids.is_valid(last_id) or of != digest:
        raise Invalid('"cursor" is not one this service gave for these filters')
    return last_id


def filters_digest(owner: str | None, params: dict[str, str]) -> str:
    text = "\0".join([owner or "", *(params.get(name, "") for name in FILTERS)])
    return hashlib.sha256(text.encode()).hexdigest()[:12]


class JobsResource:
    """GET the caller's jobs (an operator's view of every client goes through the UI)."""

    def __init__(self, layer: JobLayer, settings: Settings) -> None:
        self.layer = layer
        self.settings = settings

    async def on_get(self, req: falcon.asgi.Request, resp: falcon.asgi.Response) -> None:
        page = await list_page(self.layer, req.context.owner, _params(req), self.settings)
        send_struct(resp, page)


def _params(req: falcon.asgi.Request) -> dict[str, str]:
    params: dict[str, str] = {}
    for name, value in req.params.items():
        if name not in (*FILTERS, "limit", "cursor"):
            raise Invalid(f"unknown query parameter {name!r}")
        if not isinstance(value, str):
            raise Invalid(f"{name!r} is given more than once")
        params[name] = value
    return params


async def list_page(
    layer: JobLayer, owner: str | None, params: dict[str, str], settings: Settings
) -> JobPage:
    """One page of ``owner``'s jobs (None: every client's) by the query ``params``."""
    records, cursor = await list_records(layer, owner, params, settings)
    return JobPage(jobs=[r.document() for r in records], next_cursor=cursor)


async def list_records(
    layer: JobLayer, owner: str | None, params: dict[str, str], settings: Settings
) -> tuple[list[JobRecord], str | None]:
    """The records of :func:`list_page` (the dashboard shows their owners too), and the
    cursor of the next page."""
    limit = _number(params.get("limit"), DEFAULT_LIMIT, settings.list_max)
    states = frozenset(_states(params.get("state")))
    id_from = _bound(params, "created_after")
    id_below = _bound(params, "created_before")
    digest = filters_digest(owner, params)
    if "cursor" in params:
        after = decode_cursor(params["cursor"], digest)
        id_below = after if id_below is None else min(after, id_below)
    query = JobQuery(
        owner=owner,
        limit=limit + 1,  # one more: whether a next page exists
        states=states,
        name=_name(params.get("job")),
        id_from=id_from,
        id_below=id_below,
    )
    records = await layer.list_jobs(query)
    more = len(records) > limit
    records = records[:limit]
    return records, encode_cursor(records[-1].id, digest) if more else None


def _states(raw: str | None) -> list[JobState]:
    if raw is None:
        return []
    try:
        return [JobState(part.strip()) for part in raw.split(",")]
    except ValueError:
        names = ", ".join(s.value for s in JobState)
        raise Invalid(f'"state" takes {names} (several comma-separated), not {raw!r}') from None


def _name(raw: str | None) -> str | None:
    if raw == "":
        raise Invalid('"job" names a job: it cannot be empty')
    return raw


def _bound(params: dict[str, str], name: str) -> str | None:
    raw = params.get(name)
    if raw is None:
        return None
    at = timestamp(raw)
    if at is None:
        raise Invalid(f'"{name}" must be an RFC 3339 date-time, not {raw!r}')
    return ids.id_floor(max(0.0, at))


def _number(raw: str | None, default: int, most: int) -> int:
    if raw is None:
        return min(default, most)
    if not raw.isdigit() or not 1 <= int(raw) <= most:
        raise Invalid(f'"limit" must be an integer from 1 to {most} (JOBPOOL_LIST_MAX)')
    return int(raw)
