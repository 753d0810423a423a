"""Errors as application/problem+json (RFC 9457), mapped in one place."""

from __future__ import annotations

import logging
from typing import Annotated, Any

import falcon
import falcon.asgi
import msgspec

from service import errors

log = logging.getLogger(__name__)

PROBLEM = "application/problem+json"
REALM = 'Bearer realm="jobpool"'

STATUS: dict[type[errors.ServiceError], int] = {
    errors.BadRequest: 400,
    errors.RequestTimeout: 408,
    errors.Invalid: 422,
    errors.TooLarge: 413,
    errors.UnsupportedMediaType: 415,
    errors.UriTooLong: 414,
    errors.Unauthorized: 401,
    errors.Forbidden: 403,
    errors.TooManyRequests: 429,
    errors.JobNotFound: 404,
    errors.NotFound: 404,
    errors.Conflict: 409,
    errors.Overloaded: 503,
    errors.StoreUnavailable: 503,
}


def status_of(ex: errors.ServiceError) -> int:
    for cls in type(ex).__mro__:
        if cls in STATUS:
            return STATUS[cls]
    return 500


class FieldProblem(msgspec.Struct, forbid_unknown_fields=True):
    """What is wrong with one part of the body, found by its JSON pointer (RFC 6901)."""

    pointer: str
    detail: str


class Problem(msgspec.Struct):
    """An error (RFC 9457). ``errors`` lists what is wrong with the body, by JSON pointer
    (up to 20); ``param`` names the query parameter at fault."""

    type: str
    title: str
    status: Annotated[int, msgspec.Meta(ge=400, le=599)]
    detail: str
    errors: list[FieldProblem] | msgspec.UnsetType = msgspec.UNSET
    param: str | msgspec.UnsetType = msgspec.UNSET


_encode = msgspec.json.Encoder().encode


def problem_document(status: int, title: str, detail: str, **extra: Any) -> bytes:
    """A problem document; ``extra`` holds its extension members (``errors``, ``param``), as
    plain data. The HTTP server layer (service/server.py) answers with it too."""
    doc = {"type": "about:blank", "title": title, "status": status, "detail": detail, **extra}
    return _encode(msgspec.convert(doc, Problem))


def problem(resp: falcon.asgi.Response, status: int, title: str, detail: str, **extra: Any) -> None:
    """Answer with a problem document (see :func:`problem_document`)."""
    resp.status = status
    resp.content_type = PROBLEM
    resp.data = problem_document(status, title, detail, **extra)


async def handle_service_error(
    req: falcon.asgi.Request, resp: falcon.asgi.Response, ex: Exception, params: Any
) -> None:
    assert isinstance(ex, errors.ServiceError)
    retry_after = getattr(ex, "retry_after_s", None)
    if retry_after is not None:
        resp.set_header("Retry-After", str(retry_after))
    if isinstance(ex, errors.Unauthorized):  # RFC 6750 section 3
        error = f', error="{ex.error}"' if ex.error else ""
        resp.set_header("WWW-Authenticate", REALM + error)
    extra = getattr(ex, "extra", None) or {}
    problem(resp, status_of(ex), ex.title, ex.detail, **extra)


async def handle_http_error(
    req: falcon.asgi.Request, resp: falcon.asgi.Response, ex: Exception, params: Any
) -> None:
    assert isinstance(ex, falcon.HTTPError)
    resp.set_headers(ex.headers or {})
    status = ex.status_code
    problem(resp, status, ex.title or "Error", ex.description or ex.title or "")


async def handle_unexpected(
    req: falcon.asgi.Request, resp: falcon.asgi.Response, ex: Exception, params: Any
) -> None:
    log.exception("unhandled error on %s %s", req.method, req.path)
    problem(resp, 500, "Internal server error", "the server failed; the error is logged")


def install(app: falcon.asgi.App[Any, Any]) -> None:
    """Every error answered as problem+json, at once: what is left of a refused body is read
    and dropped by the HTTP server layer after the answer (service/server.py)."""
    app.add_error_handler(Exception, handle_unexpected)
    app.add_error_handler(falcon.HTTPError, handle_http_error)
    app.add_error_handler(errors.ServiceError, handle_service_error)
