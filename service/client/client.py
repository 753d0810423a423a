"""``Client``: jobpool's job API for Python programs, synchronous, over urllib3.

    with Client("http://127.0.0.1:8000", key) as jobs:
        submitted = jobs.submit_parcels({"Data": [...]})
        document = jobs.wait(submitted.job_id)
        result = jobs.result(submitted.job_id).json()

Every submit carries an ``Idempotency-Key`` (a new uuid4 unless the caller gives one),
the same on each retry of that submit, so a retried POST never makes a second job. Waiting
uses ``Prefer: wait=N`` long polls: the server holds each request until the job ends or N
seconds pass.
"""

from __future__ import annotations

import datetime as dt
import math
import os
import time
import urllib.parse
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import orjson

from service.client.errors import WaitTimedOut
from service.client.transport import (
    DEFAULT_RETRY,
    Answer,
    RetryPolicy,
    Transport,
    parse_retry_after,
)

__all__ = [
    "DEFAULT_URL",
    "FINAL_STATES",
    "LONG_POLL_S",
    "Client",
    "Page",
    "Result",
    "Submitted",
]

#: The server of the README's quick start.
DEFAULT_URL = "http://127.0.0.1:8000"
#: A job in one of these states will not change again.
FINAL_STATES = frozenset({"succeeded", "failed", "cancelled"})
#: Seconds one long poll asks the server to hold the request (it may cap it lower,
#: ``JOBPOOL_WAIT_MAX_S``).
LONG_POLL_S = 30
#: Seconds between polls when the server did not hold the request (no
#: ``Preference-Applied``: a server or proxy that ignores ``Prefer``) and said nothing.
UNHELD_POLL_S = 1.0


@dataclass(frozen=True, slots=True)
class Submitted:
    """A job the server stored: the answer to a submit."""

    job_id: str
    #: ``scheduled``, ``queued`` or ``running``.
    state: str
    #: Where its document is, e.g. ``/v1/jobs/{id}``.
    location: str
    #: The key the submit was sent with; give it again to repeat the submit safely.
    idempotency_key: str
    #: Whether the server answered with the job an earlier submit with this key made.
    replayed: bool
    #: The answer's body as it came (``job``, ``state``, ``accepted`` for a batch, ...).
    body: dict[str, Any] = field(repr=False)


@dataclass(frozen=True, slots=True)
class Result:
    """A finished job's result: JSON, or bytes of their own type (an image)."""

    content_type: str
    data: bytes = field(repr=False)

    @property
    def is_json(self) -> bool:
        return self.content_type == "application/json" or self.content_type.endswith("+json")

    def json(self) -> Any:
        return orjson.loads(self.data)


@dataclass(frozen=True, slots=True)
class Page:
    """One page of a listing, newest job first; ``next_cursor`` asks for the next."""

    jobs: list[dict[str, Any]]
    next_cursor: str | None


def is_final(document: Mapping[str, Any]) -> bool:
    """Whether the job of ``document`` has ended."""
    return document.get("state") in FINAL_STATES


def rfc3339(when: dt.datetime | str) -> str:
    """``when`` as an RFC 3339 date-time (a string is sent as it is, for the server to
    judge); a datetime must carry its time zone."""
    if isinstance(when, str):
        return when
    if when.tzinfo is None:
        raise ValueError("a datetime without a time zone is ambiguous; give one (UTC?)")
    return when.astimezone(dt.UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def delay_header(seconds: float) -> str:
    """``Job-Delay``'s value: seconds with at most six decimals."""
    if not math.isfinite(seconds) or seconds < 0:
        raise ValueError(f"a delay is a number of seconds, at least 0, not {seconds!r}")
    return f"{seconds:.6f}".rstrip("0").rstrip(".")


def sf_string(text: str) -> str:
    """``text`` as a Structured Fields string (RFC 8941), as ``Idempotency-Key`` takes it;
    ValueError if it is empty or not printable ASCII."""
    if not text or not all(" " <= c <= "~" for c in text):
        raise ValueError(f"an idempotency key is printable ASCII, not {text!r}")
    escaped = text.replace("\\", "\\\\").replace('"', '\\"')
    return f'"{escaped}"'


def job_path(job_id: str, tail: str = "") -> str:
    """``/v1/jobs/{id}{tail}``, the id quoted so that it can only name a job."""
    return f"/v1/jobs/{urllib.parse.quote(job_id, safe='')}{tail}"


class Client:
    """jobpool's API: submit jobs, read and wait for them, fetch results, cancel, list.

    Errors are those of :mod:`service.client.errors`: :class:`NotFound` for an unknown id
    (or another client's), :class:`Refused` for a request the server will not take,
    :class:`Unavailable` and :class:`Unreachable` when it cannot answer, past the retries.
    """

    def __init__(
        self,
        url: str = DEFAULT_URL,
        key: str | None = None,
        *,
        timeout_s: float = 30.0,
        retry: RetryPolicy = DEFAULT_RETRY,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.monotonic,
        new_key: Callable[[], str] = lambda: str(uuid.uuid4()),
    ) -> None:
        self.transport = Transport(
            url, key, timeout_s=timeout_s, retry=retry, sleep=sleep, clock=clock
        )
        self.new_key = new_key

    @classmethod
    def from_env(
        cls,
        environ: Mapping[str, str] | None = None,
        *,
        url: str | None = None,
        key: str | None = None,
        **kw: Any,
    ) -> Client:
        """A client of ``JOBPOOL_URL`` with ``JOBPOOL_KEY`` (``url``/``key`` win over them)."""
        env = os.environ if environ is None else environ
        return cls(
            url or env.get("JOBPOOL_URL") or DEFAULT_URL,
            key or env.get("JOBPOOL_KEY") or None,
            **kw,
        )

    def close(self) -> None:
        self.transport.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- submitting --------------------------------------------------------------------

    def submit(
        self,
        path: str,
        body: bytes,
        content_type: str,
        *,
        query: Mapping[str, str] | None = None,
        delay_s: float | None = None,
        not_before: dt.datetime | str | None = None,
        idempotency_key: str | None = None,
    ) -> Submitted:
        """POST a job to any submit route; the answer once it is stored.

        ``delay_s`` or ``not_before`` starts it later (``Job-Delay``, ``Job-Not-Before``).
        """
        if delay_s is not None and not_before is not None:
            raise ValueError("give a delay or a time to start at, not both")
        key = idempotency_key or self.new_key()
        headers = {
            "Content-Type": content_type,
            "Idempotency-Key": sf_string(key),
            "Prefer": "respond-async",
        }
        if delay_s is not None:
            headers["Job-Delay"] = delay_header(delay_s)
        if not_before is not None:
            headers["Job-Not-Before"] = rfc3339(not_before)
        answer = self.transport.request(
            "POST", path, query=query, body=body, headers=headers,
            # 409 to a retry: the server still works on an earlier try with this key.
            retry_also=lambda a: a.status == 409 and a.attempts > 1,
        )  # fmt: skip
        answer.check()
        doc = answer.json()
        return Submitted(
            job_id=str(doc["job"]),
            state=str(doc.get("state", "")),
            location=answer.headers.get("Location", job_path(str(doc["job"]))),
            idempotency_key=key,
            replayed=answer.headers.get("Idempotent-Replayed", "").strip().lower() == "true",
            body=doc,
        )

    def submit_parcels(self, batch: Mapping[str, Any] | bytes, **kw: Any) -> Submitted:
        """A batch of parcels, ``{"Data": [{"id", "time", "data"}, ...]}`` (or its JSON)."""
        body = batch if isinstance(batch, bytes) else orjson.dumps(batch)
        return self.submit("/v1/parcels", body, "application/json", **kw)

    def submit_image(
        self,
        image: bytes,
        op: str,
        *,
        params: Mapping[str, str | int] | None = None,
        content_type: str = "application/octet-stream",
        **kw: Any,
    ) -> Submitted:
        """An image operation (``thumbnail``, ``resize``, ...) with its parameters
        (``width``, ``height``, ``format``, ...) as ``POST /v1/images`` takes them."""
        query = {"op": op, **{name: str(value) for name, value in (params or {}).items()}}
        return self.submit("/v1/images", image, content_type, query=query, **kw)

    def fetch(self, url: str, method: str = "GET", **kw: Any) -> Submitted:
        """A URL fetch on the server's io pool (behind its SSRF guard)."""
        body = orjson.dumps({"url": url, "method": method})
        return self.submit("/v1/fetch", body, "application/json", **kw)

    # -- reading -----------------------------------------------------------------------

    def job(self, job_id: str, *, wait_s: int = 0) -> dict[str, Any]:
        """The job's document; with ``wait_s`` once it has ended, or after that long."""
        return dict(self._job(job_id, wait_s).check().json())

    def _job(self, job_id: str, wait_s: int) -> Answer:
        if wait_s <= 0:
            return self.transport.request("GET", job_path(job_id))
        return self.transport.request(
            "GET", job_path(job_id), headers={"Prefer": f"wait={wait_s}"},
            read_timeout_s=wait_s + self.transport.timeout_s,
        )  # fmt: skip

    def wait(
        self,
        job_id: str,
        *,
        timeout_s: float | None = None,
        poll_s: int = LONG_POLL_S,
        on_update: Callable[[dict[str, Any]], None] | None = None,
    ) -> dict[str, Any]:
        """The job's document once it has ended (any final state: check ``state``).

        Each request is a long poll of at most ``poll_s`` seconds; ``on_update`` sees every
        document read (a short ``poll_s`` refreshes it more often). Past ``timeout_s``:
        :class:`WaitTimedOut`.
        """
        clock = self.transport.clock
        deadline = None if timeout_s is None else clock() + timeout_s
        while True:
            hold = poll_s
            if deadline is not None:
                hold = min(hold, math.ceil(deadline - clock()))
            answer = self._job(job_id, max(1, hold)).check()
            doc: dict[str, Any] = dict(answer.json())
            if on_update is not None:
                on_update(doc)
            if is_final(doc):
                return doc
            if deadline is not None and clock() >= deadline:
                raise WaitTimedOut(job_id, doc)
            if "Preference-Applied" not in answer.headers:
                # Not held: whatever answered ignores Prefer; poll at its pace, not in a loop.
                pause = parse_retry_after(answer.headers.get("Retry-After")) or UNHELD_POLL_S
                if deadline is not None:
                    pause = max(0.0, min(pause, deadline - clock()))
                self.transport.sleep(pause)

    def result(self, job_id: str) -> Result:
        """The result of a job that succeeded (:class:`Conflict` while it has none)."""
        answer = self.transport.request("GET", job_path(job_id, "/result")).check()
        return Result(answer.content_type or "application/octet-stream", answer.data)

    # -- cancelling --------------------------------------------------------------------

    def cancel(self, job_id: str) -> dict[str, Any]:
        """Cancel the job; its document after. A running job is stopped first: the
        document's ``state`` is still ``running`` if it had not stopped in the server's
        time (it will end cancelled). A cancelled job answers the same again (so a retry
        is safe); :class:`Conflict` if it had ended otherwise."""
        return dict(self.transport.request("DELETE", job_path(job_id)).check().json())

    # -- listing -----------------------------------------------------------------------

    def jobs(
        self,
        *,
        state: str | Iterable[str] | None = None,
        job: str | None = None,
        created_after: dt.datetime | str | None = None,
        created_before: dt.datetime | str | None = None,
        limit: int | None = None,
        cursor: str | None = None,
    ) -> Page:
        """One page of the caller's jobs, newest first, filtered as the arguments say."""
        query: dict[str, str] = {}
        if state is not None:
            query["state"] = state if isinstance(state, str) else ",".join(state)
        if job is not None:
            query["job"] = job
        if created_after is not None:
            query["created_after"] = rfc3339(created_after)
        if created_before is not None:
            query["created_before"] = rfc3339(created_before)
        if limit is not None:
            query["limit"] = str(limit)
        if cursor is not None:
            query["cursor"] = cursor
        doc = self.transport.request("GET", "/v1/jobs", query=query).check().json()
        return Page(jobs=list(doc["jobs"]), next_cursor=doc.get("next_cursor"))

    def iter_jobs(self, **filters: Any) -> Iterator[dict[str, Any]]:
        """Every job :meth:`jobs` would list, page after page."""
        cursor = filters.pop("cursor", None)
        while True:
            page = self.jobs(cursor=cursor, **filters)
            yield from page.jobs
            if not page.next_cursor:
                return
            cursor = page.next_cursor
