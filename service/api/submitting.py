"""What every route that submits a job shares: the request headers that shape a submit, and
the answer.

- ``Prefer`` (RFC 7240): ``wait=N`` holds the answer up to N seconds for the job to end
  (200 with its result, or its document if it failed); ``respond-async`` asks for the 202
  at once. ``Preference-Applied`` names what was honoured.
- ``Job-Delay: <seconds>`` or ``Job-Not-Before: <RFC 3339 date-time>``: the job starts no
  sooner (it is ``scheduled`` until then), at most ``JOBPOOL_SCHEDULE_MAX_S`` ahead.
- ``Idempotency-Key`` (draft-ietf-httpapi-idempotency-key-header): a submit retried with
  the same key and the same request gets the job the first one made (same id and
  ``Location``, ``Idempotent-Replayed: true``), never a second job; the same key with
  another request is 422, and one while the first is still being accepted 409. Keys are
  the client's own, kept ``JOBPOOL_IDEMPOTENCY_TTL_S``.
- ``Job-Callback: <url>``: once the job ends, its document is POSTed there, signed per
  Standard Webhooks with the client's secret (see :mod:`service.jobs.deliveries`). A URL
  the SSRF guard refuses without DNS is 422.
- The 202 carries ``Location`` and ``Retry-After`` (when to look again).
"""

from __future__ import annotations

import hashlib
import math
import re
import time
from dataclasses import dataclass
from typing import Any

import falcon.asgi
import msgspec

from service import netguard
from service.api.http import send_struct
from service.api.results import result_body
from service.config import Settings
from service.errors import BadRequest, Invalid
from service.jobs.document import Submitted, SubmittedState
from service.jobs.layer import JobLayer
from service.jobs.record import IdempotencyKey, JobRecord
from service.jobs.state import JobState, is_final
from service.rfc3339 import timestamp

_WAIT = re.compile(r"(?:^|[;,\s])wait\s*=\s*\"?(\d{1,6})\"?", re.IGNORECASE)
_ASYNC = re.compile(r"(?:^|[,\s])respond-async\b", re.IGNORECASE)
#: ``Job-Delay``: seconds, a decimal fraction allowed.
_DELAY = re.compile(r"[0-9]{1,10}(?:\.[0-9]{1,6})?")
DELAY_HEADER = "Job-Delay"
NOT_BEFORE_HEADER = "Job-Not-Before"
KEY_HEADER = "Idempotency-Key"
CALLBACK_HEADER = "Job-Callback"
#: A key sent bare: visible ASCII without quotes, backslashes or spaces.
_BARE = r"[\x21\x23-\x5b\x5d-\x7e]"
#: A character inside a Structured Fields string (RFC 8941): printable ASCII, \" and \\
#: escaped.
_SF_CHAR = r'(?:[\x20\x21\x23-\x5b\x5d-\x7e]|\\["\\])'
_BARE_KEY = re.compile(f"{_BARE}+")
_SF_STRING = re.compile(f"{_SF_CHAR}*")
#: The whole header, for the OpenAPI document (its length is checked apart).
KEY_PATTERN = f'^(?:"{_SF_CHAR}+"|{_BARE}+)$'


@dataclass(frozen=True, slots=True)
class Preferences:
    """What a ``Prefer`` header asked for."""

    wait_s: int = 0
    respond_async: bool = False

    def applied(self, *, waited: bool) -> str | None:
        """The ``Preference-Applied`` value of an answer that ``waited`` or not."""
        names = [f"wait={self.wait_s}"] if waited and self.wait_s else []
        if self.respond_async and not (waited and self.wait_s):
            names.append("respond-async")
        return ", ".join(names) or None


def preferences(req: falcon.asgi.Request, wait_max_s: int) -> Preferences:
    """``Prefer: wait=N`` (capped at ``wait_max_s``) and ``respond-async``."""
    prefer = req.get_header("Prefer")
    if not prefer:
        return Preferences()
    match = _WAIT.search(prefer)
    wait_s = min(int(match.group(1)), wait_max_s) if match else 0
    return Preferences(wait_s=wait_s, respond_async=_ASYNC.search(prefer) is not None)


def requested_start(
    req: falcon.asgi.Request, *, horizon_s: int, now: float | None = None
) -> float | None:
    """When the client asked the job to start (``Job-Delay`` or ``Job-Not-Before``), or
    None: at once. Malformed is 400, both at once 400, past the horizon 422."""
    delay = req.get_header(DELAY_HEADER)
    not_before = req.get_header(NOT_BEFORE_HEADER)
    if delay is None and not_before is None:
        return None
    if delay is not None and not_before is not None:
        raise BadRequest(f"give {DELAY_HEADER} or {NOT_BEFORE_HEADER}, not both")
    now = time.time() if now is None else now
    if delay is not None:
        if not _DELAY.fullmatch(delay.strip()):
            raise BadRequest(f"{DELAY_HEADER} must be a number of seconds, not {delay!r}")
        start = now + float(delay)
    else:
        assert not_before is not None
        at = timestamp(not_before.strip())
        if at is None:
            raise BadRequest(
                f"{NOT_BEFORE_HEADER} must be an RFC 3339 date-time, not {not_before!r}"
            )
        start = at
    if start - now > horizon_s:
        raise Invalid(
            f"the job would start {start - now:.0f} s from now; at most {horizon_s} s ahead"
            " (JOBPOOL_SCHEDULE_MAX_S)"
        )
    return start if start > now else None


def idempotency_key(
    req: falcon.asgi.Request, settings: Settings, *request: Any
) -> IdempotencyKey | None:
    """The request's ``Idempotency-Key`` (a Structured Fields string, or bare), with the
    fingerprint of what it submits: ``request`` (the job and its arguments, as stored) and
    the headers that shape it. None without one; 400 when it is malformed or too long."""
    raw = req.get_header(KEY_HEADER)
    if raw is None:
        return None
    text = raw.strip()
    if len(text) >= 2 and text[0] == text[-1] == '"' and _SF_STRING.fullmatch(text[1:-1]):
        key = re.sub(r"\\(.)", r"\1", text[1:-1])
    elif _BARE_KEY.fullmatch(text):
        key = text
    else:
        raise BadRequest(
            f"{KEY_HEADER} must be a string of printable ASCII, quoted (RFC 8941) or bare"
        )
    if not key or len(text) > settings.idempotency_key_max:
        raise BadRequest(
            f"{KEY_HEADER} must have 1 to {settings.idempotency_key_max} characters, quotes"
            " included (JOBPOOL_IDEMPOTENCY_KEY_MAX)"
        )
    shaping = [
        req.method,
        req.get_header(DELAY_HEADER),
        req.get_header(NOT_BEFORE_HEADER),
        req.get_header(CALLBACK_HEADER),
    ]
    fingerprint = hashlib.sha256(msgspec.msgpack.encode([*shaping, *request])).digest()
    owner: str = req.context.owner
    return IdempotencyKey(owner, key, fingerprint, time.time() + settings.idempotency_ttl_s)


def callback_url(req: falcon.asgi.Request, settings: Settings) -> str | None:
    """The request's ``Job-Callback`` URL, or None. What the SSRF guard refuses without DNS
    (not http(s), credentials, a private or metadata address, ``localhost``, ...) and a URL
    over ``JOBPOOL_CALLBACK_URL_MAX`` characters are 422; the rest is checked again, after
    DNS, at each attempt."""
    raw = req.get_header(CALLBACK_HEADER)
    if raw is None:
        return None
    url = raw.strip()
    try:
        netguard.precheck(
            url,
            allow_private=settings.callback_allow_private,
            max_length=settings.callback_url_max,
        )
    except (netguard.BadURL, netguard.BlockedAddress) as ex:
        raise Invalid(f"{CALLBACK_HEADER} refused: {ex}") from None
    return url


def retry_after(record: JobRecord, hint_s: int, now: float | None = None) -> int | None:
    """Seconds to wait before reading an unfinished job again (a scheduled one: until its
    time, at least ``hint_s``); None for a finished job."""
    if is_final(record.state):
        return None
    if record.state is JobState.SCHEDULED and record.not_before is not None:
        now = time.time() if now is None else now
        return max(hint_s, math.ceil(record.not_before - now))
    return hint_s


def accepted(
    resp: falcon.asgi.Response, record: JobRecord, settings: Settings, **extra: Any
) -> None:
    """202 for a stored job, pointing at it."""
    resp.set_header("Location", f"/v1/jobs/{record.id}")
    if record.replayed:
        resp.set_header("Idempotent-Replayed", "true")
    hint = retry_after(record, settings.poll_hint_s)
    if hint is not None:
        resp.set_header("Retry-After", str(hint))
    state: SubmittedState = record.state.value
    send_struct(resp, Submitted(job=record.id, state=state, **extra), status=202)


async def answer_submitted(
    layer: JobLayer,
    req: falcon.asgi.Request,
    resp: falcon.asgi.Response,
    record: JobRecord,
    settings: Settings,
    **extra: Any,
) -> None:
    """202 at once, or with ``Prefer: wait`` the finished job (200) if it ends in time."""
    req.context.job_id = record.id  # for the access log
    prefer = preferences(req, settings.wait_max_s)
    if prefer.wait_s > 0 and record.state is not JobState.SCHEDULED:
        final = await layer.wait(record.id, prefer.wait_s)
        if final is not None and is_final(final.state):
            if applied := prefer.applied(waited=True):
                resp.set_header("Preference-Applied", applied)
            resp.set_header("Location", f"/v1/jobs/{record.id}")
            resp.set_header("X-Job-Id", record.id)
            if record.replayed:
                resp.set_header("Idempotent-Replayed", "true")
            if final.state is JobState.SUCCEEDED and final.result is not None:
                result_body(resp, final)
            else:
                send_struct(resp, final.document())
            return
        waited = True
    else:
        waited = False
    if applied := prefer.applied(waited=waited):
        resp.set_header("Preference-Applied", applied)
    accepted(resp, record, settings, **extra)
