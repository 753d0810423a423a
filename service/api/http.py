"""Small HTTP helpers shared by the resources: a body read within its limit, a JSON body
decoded into a Struct (or explained when it does not fit), JSON answers. What a submit's
headers ask for (``Prefer: wait`` and the rest) is :mod:`service.api.submitting`'s."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar, overload

import falcon
import falcon.asgi
import msgspec
import orjson

from service.errors import BadRequest, IncompleteBody, Invalid, TooLarge, UnsupportedMediaType

JSON = "application/json"
_encode = msgspec.json.Encoder().encode
T = TypeVar("T")


def send_json(resp: falcon.asgi.Response, value: Any, status: int = 200) -> None:
    resp.status = status
    resp.content_type = JSON
    resp.data = orjson.dumps(value)


async def read_body(req: falcon.asgi.Request, limit: int, *, setting: str) -> bytes:
    """The whole body, refused with 413 as soon as it is known to be over ``limit``, and with
    400 if it ends short of its Content-Length (a body cut short is never taken for whole)."""
    length = req.content_length
    if length is not None and length > limit:
        raise TooLarge(f"the body has {length} bytes; the limit is {limit} ({setting})")
    if length is not None:
        body = await req.stream.read(length)
        if len(body) < length:
            raise IncompleteBody(
                f"the body ended after {len(body)} of the {length} bytes of its Content-Length"
            )
        return body
    chunks, size = [], 0
    async for chunk in req.stream:
        size += len(chunk)
        if size > limit:
            raise TooLarge(f"the body is over {limit} bytes ({setting})")
        chunks.append(chunk)
    return b"".join(chunks)


def require_json(req: falcon.asgi.Request) -> None:
    media = (req.content_type or "").split(";", 1)[0].strip().lower()
    if media != JSON and not (media.startswith("application/") and media.endswith("+json")):
        raise UnsupportedMediaType(
            f"this route takes {JSON}, not {media or 'a body without Content-Type'}"
        )


@overload
async def read_json(req: falcon.asgi.Request, limit: int) -> Any: ...
@overload
async def read_json(req: falcon.asgi.Request, limit: int, decode: Callable[[bytes], T]) -> T: ...
async def read_json(
    req: falcon.asgi.Request, limit: int, decode: Callable[[bytes], Any] | None = None
) -> Any:
    """A JSON body (415 for another type, 413 over ``limit``), parsed (400 if malformed) or
    given to ``decode`` (e.g. :func:`decode_struct`)."""
    require_json(req)
    body = await read_body(req, limit, setting="JOBPOOL_BODY_MAX")
    return parse_json(body) if decode is None else decode(body)


def parse_json(body: bytes) -> Any:
    """The JSON value of ``body``, or 400."""
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError as ex:
        raise BadRequest(f"the body is not valid JSON: {ex}") from None


def decode_struct(
    body: bytes, decoder: msgspec.json.Decoder[T], explain: Callable[[Any], object]
) -> T:
    """Decode and validate ``body`` in one pass (msgspec, in C).

    Only a body that fails is parsed again, as plain JSON (400 if it is not JSON, in
    orjson's words as ever), for ``explain`` to raise :class:`Invalid` with every problem it
    finds. Should ``explain`` find none (msgspec refused what orjson reads, e.g. nesting
    past msgspec's depth in a member the type ignores), the plain value is converted.
    """
    try:
        return decoder.decode(body)
    except (msgspec.DecodeError, RecursionError):  # ValidationError is a DecodeError
        pass
    value = parse_json(body)
    explain(value)
    try:
        converted: T = msgspec.convert(value, decoder.type)
    except msgspec.ValidationError as ex:
        raise Invalid(f"the body does not fit: {ex}") from None
    return converted


def send_struct(resp: falcon.asgi.Response, doc: msgspec.Struct, status: int = 200) -> None:
    """Answer with a document declared as a Struct (encoded by msgspec, in C)."""
    resp.status = status
    resp.content_type = JSON
    resp.data = _encode(doc)
