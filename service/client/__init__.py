"""jobpool's client: :class:`Client` for Python programs, and the ``jobpool`` command
(:mod:`service.client.cli`). It talks HTTP only and uses nothing of the server's code."""

from service.client.client import DEFAULT_URL, Client, Page, Result, Submitted
from service.client.errors import (
    ClientError,
    Conflict,
    NotFound,
    ProblemError,
    Refused,
    Unauthorized,
    Unavailable,
    Unreachable,
    WaitTimedOut,
)
from service.client.transport import RetryPolicy

__all__ = [
    "DEFAULT_URL",
    "Client",
    "ClientError",
    "Conflict",
    "NotFound",
    "Page",
    "ProblemError",
    "Refused",
    "Result",
    "RetryPolicy",
    "Submitted",
    "Unauthorized",
    "Unavailable",
    "Unreachable",
    "WaitTimedOut",
]
