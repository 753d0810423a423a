"""What can go wrong talking to jobpool, as one hierarchy a program can catch at any level.

``ClientError`` is the base. An answer with an error status is a :class:`ProblemError`
carrying the server's problem document (RFC 9457); no answer at all is :class:`Unreachable`.
"""

from __future__ import annotations

from typing import Any

__all__ = [
    "ClientError",
    "Conflict",
    "NotFound",
    "ProblemError",
    "Refused",
    "Unauthorized",
    "Unavailable",
    "Unreachable",
    "WaitTimedOut",
]


class ClientError(Exception):
    """Base of every error the client raises."""


class Unreachable(ClientError, ConnectionError):
    """No answer from the server (refused, reset, timed out), after the retries."""


class ProblemError(ClientError):
    """The server answered with an error status; ``problem`` is its problem document
    (or what could be made of a body that was not one)."""

    def __init__(self, status: int, problem: dict[str, Any], retry_after_s: float | None) -> None:
        self.status = status
        self.problem = problem
        self.title = str(problem.get("title") or f"HTTP {status}")
        self.detail = str(problem.get("detail") or "")
        #: The answer's ``Retry-After`` in seconds, if it had one.
        self.retry_after_s = retry_after_s
        super().__init__(f"{status} {self.title}: {self.detail}" if self.detail else self.title)


class Refused(ProblemError, ValueError):
    """A 4xx: the request itself was not accepted; sending it again will not help."""


class NotFound(Refused, LookupError):
    """404: no such job (or another client's: the server does not tell them apart)."""


class Conflict(Refused):
    """409: the job is not in a state that allows it (no result yet, already ended)."""


class Unauthorized(Refused, PermissionError):
    """401 or 403: no key, a wrong key, or one without the right."""


class Unavailable(ProblemError):
    """429, or a 5xx, still after the retries (or its ``Retry-After`` was past the time
    the client allows itself): try again later."""


class WaitTimedOut(ClientError, TimeoutError):
    """The job had not ended when the wait's time ran out; ``document`` is its last."""

    def __init__(self, job_id: str, document: dict[str, Any]) -> None:
        self.job_id = job_id
        self.document = document
        super().__init__(f"job {job_id} is still {document.get('state')}")
