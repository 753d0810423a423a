"""Small HTTP helpers shared by the resources: JSON bodies, JSON answers, Prefer: wait."""

from __future__ import annotations

import re
from typing import Any

import falcon
import falcon.asgi
import orjson

from service.errors import BadRequest, TooLarge, UnsupportedMediaType

JSON = "application/json"
READ_CHUNK = 64 * 1024
_WAIT = re.compile(r"(?:^|[;,\s])wait\s*=\s*\"?(\d{1,6})\"?", re.IGNORECASE)


def send_json(resp: falcon.asgi.Response, value: Any, status: int = 200) -> None:
    resp.status = status
    resp.content_type = JSON
    resp.data = orjson.dumps(value)


async def read_body(req: falcon.asgi.Request, limit: int, *, setting: str) -> bytes:
    """The whole body, refused with 413 as soon as it is known to be over ``limit``."""
    length = req.content_length
    if length is not None and length > limit:
        raise TooLarge(f"the body has {length} bytes; the limit is {limit} ({setting})")
    if length is not None:
        return await req.stream.read(length)
    chunks, size = [], 0
    async for chunk in req.stream:
        size += len(chunk)
        if size > limit:
            raise TooLarge(f"the body is over {limit} bytes ({setting})")
        chunks.append(chunk)
    return b"".join(chunks)


async def drain(req: falcon.asgi.Request, max_bytes: int) -> None:
    """Read and discard what is left of a refused request's body, up to ``max_bytes``.

    Closing a connection with unread request bytes makes the kernel reset it, and the
    client then never reads the error it was sent. Past ``max_bytes`` the reset is the
    lesser evil.
    """
    stream = req.stream
    if stream.eof:
        return
    left = max_bytes
    while left > 0:
        chunk = await stream.read(min(READ_CHUNK, left))
        if not chunk:
            return
        left -= len(chunk)


def require_json(req: falcon.asgi.Request) -> None:
    media = (req.content_type or "").split(";", 1)[0].strip().lower()
    if media != JSON and not (media.startswith("application/") and media.endswith("+json")):
        raise UnsupportedMediaType(
            f"this route takes {JSON}, not {media or 'a body without Content-Type'}"
        )


async def read_json(req: falcon.asgi.Request, limit: int) -> Any:
    """Parse a JSON body (415 for another type, 413 over ``limit``, 400 if malformed)."""
    require_json(req)
    body = await read_body(req, limit, setting="JOBPOOL_BODY_MAX")
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError as ex:
        raise BadRequest(f"the body is not valid JSON: {ex}") from None


def preferred_wait(req: falcon.asgi.Request, wait_max_s: int) -> int:
    """Seconds of ``Prefer: wait=N`` (RFC 7240), capped at ``wait_max_s``; 0 if absent."""
    prefer = req.get_header("Prefer")
    if not prefer:
        return 0
    match = _WAIT.search(prefer)
    return min(int(match.group(1)), wait_max_s) if match else 0
