"""One exception hierarchy for the service; the HTTP layer maps it to problem+json."""

from __future__ import annotations

from typing import Any


class ServiceError(Exception):
    """Base of every error jobpool raises on purpose."""

    title = "Service error"

    def __init__(self, detail: str, **extra: Any) -> None:
        super().__init__(detail)
        self.detail = detail
        #: Extension members of the problem document (e.g. ``errors`` of a validation).
        self.extra = extra


class ConfigError(ServiceError, ValueError):
    """A setting has an invalid value; start-up stops with this one line."""

    title = "Invalid setting"


class BadRequest(ServiceError, ValueError):
    """The request cannot be parsed (e.g. malformed JSON)."""

    title = "Bad request"


class IncompleteBody(BadRequest):
    """The body ended before its Content-Length, or its connection closed before its end."""

    title = "Incomplete body"


class RequestTimeout(ServiceError, TimeoutError):
    """The body did not arrive in time (``JOBPOOL_BODY_TIMEOUT_S``, ``JOBPOOL_BODY_MIN_RATE``)."""

    title = "Request timeout"


class Invalid(ServiceError, ValueError):
    """The request parses but its content is not acceptable."""

    title = "Invalid request"


class TooManyTasks(Invalid):
    """A job has more tasks than its pool can ever hold: retrying cannot help (not a 503)."""

    title = "Too many tasks"


class TooLarge(ServiceError, ValueError):
    """The request body is over its limit."""

    title = "Request body too large"


class UnsupportedMediaType(ServiceError, ValueError):
    """The request body is not of a type the route accepts."""

    title = "Unsupported media type"


class UriTooLong(ServiceError, ValueError):
    """The path and query are over their limit."""

    title = "URI too long"


class Unauthorized(ServiceError, PermissionError):
    """No API key, or one that is malformed or not valid (401 with ``WWW-Authenticate``).

    ``error`` is the RFC 6750 error code of the challenge (``invalid_token``), or None when
    no Bearer key was presented at all.
    """

    title = "Unauthorized"

    def __init__(self, detail: str, *, error: str | None = None) -> None:
        super().__init__(detail)
        self.error = error


class TooManyRequests(ServiceError):
    """A client is over one of its limits (429 with ``Retry-After``)."""

    title = "Too many requests"

    def __init__(self, detail: str, *, retry_after_s: int = 1) -> None:
        super().__init__(detail)
        self.retry_after_s = retry_after_s


class RateLimited(TooManyRequests):
    """A client sends requests faster than ``JOBPOOL_CLIENT_RATE``."""


class TooManyJobs(TooManyRequests):
    """A client has ``JOBPOOL_CLIENT_MAX_INFLIGHT`` jobs queued or running already."""


class JobNotFound(ServiceError, LookupError):
    """No such job, or not the caller's: the two look the same from outside."""

    title = "Job not found"


class Forbidden(ServiceError, PermissionError):
    """The caller is known but may not do this (a dashboard form from another site)."""

    title = "Forbidden"


class NotFound(ServiceError, LookupError):
    """No such resource (other than a job)."""

    title = "Not found"


class Conflict(ServiceError):
    """The job is in a state that does not allow the request (e.g. cancel a finished job)."""

    title = "Conflict"


class KeyInFlight(Conflict):
    """A request with the same ``Idempotency-Key`` is still being accepted (409): retry."""

    title = "Idempotency key in use"


class KeyReused(Invalid):
    """The ``Idempotency-Key`` was used before with another request (422)."""

    title = "Idempotency key reused"


class Overloaded(ServiceError):
    """A pool is full: the work is refused now, and may be retried later."""

    title = "Overloaded"

    def __init__(self, detail: str, *, retry_after_s: int = 1) -> None:
        super().__init__(detail)
        self.retry_after_s = retry_after_s


class StoreUnavailable(ServiceError):
    """The job store cannot take writes: nothing is accepted until it can."""

    title = "Job store unavailable"

    def __init__(self, detail: str, *, retry_after_s: int = 5) -> None:
        super().__init__(detail)
        self.retry_after_s = retry_after_s


class ShuttingDown(StoreUnavailable):
    """This worker is draining and accepts no new jobs."""

    title = "Shutting down"
