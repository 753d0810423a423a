"""One HTTP exchange with jobpool, done carefully: timeouts, bounded retries, clear errors.

What is retried, and why it is safe:

- no answer (connection refused or reset, a timeout): every request the client sends is
  safe to send again (GET and DELETE by their nature; a submit because it carries an
  ``Idempotency-Key`` that stays the same across the retries, so the server answers a
  repeat with the job the first one made);
- 429 and 503: the server stored nothing; the client waits for their ``Retry-After``;
- 502 and 504: a load balancer's, for requests safe to repeat (as every one here is).

Each retry waits (``Retry-After``, else a doubling backoff), and all of them together stay
within :attr:`RetryPolicy.budget_s`: an answer asking for a longer wait is given up on at
once rather than slept through.
"""

from __future__ import annotations

import email.utils
import time
import urllib.parse
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import orjson
import urllib3

from service.client.errors import (
    Conflict,
    NotFound,
    ProblemError,
    Refused,
    Unauthorized,
    Unavailable,
    Unreachable,
)

__all__ = ["DEFAULT_RETRY", "NO_RETRIES", "Answer", "RetryPolicy", "Transport", "parse_retry_after"]

#: Statuses answered again after a wait: the request was not acted on (429, 503) or a
#: proxy could not reach a server (502, 504).
RETRIED_STATUSES = frozenset({429, 502, 503, 504})
#: The most of a non-JSON error body kept as the error's detail, in characters.
DETAIL_MAX = 200


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """How hard a request is tried before the client gives up."""

    #: Tries in all, the first included.
    attempts: int = 5
    #: Seconds all the waits between tries may add up to.
    budget_s: float = 60.0
    #: Seconds before the second try when the answer gave no ``Retry-After``; doubling.
    backoff_s: float = 0.25
    #: Longest such backoff, in seconds.
    backoff_max_s: float = 8.0

    def backoff(self, attempt: int) -> float:
        """Seconds to wait after failed try number ``attempt`` (1-based) without a hint."""
        return float(min(self.backoff_max_s, self.backoff_s * 2 ** (attempt - 1)))


#: What a client does unless told otherwise.
DEFAULT_RETRY = RetryPolicy()
#: One try, no waiting: for tests and callers that retry on their own.
NO_RETRIES = RetryPolicy(attempts=1, budget_s=0.0)


@dataclass(frozen=True, slots=True)
class Answer:
    """A response read whole, and how many tries it took."""

    status: int
    headers: Mapping[str, str]
    data: bytes
    attempts: int

    @property
    def content_type(self) -> str:
        """The media type, without parameters, lower case."""
        return self.headers.get("Content-Type", "").split(";", 1)[0].strip().lower()

    def json(self) -> Any:
        return orjson.loads(self.data)

    def check(self) -> Answer:
        """This answer, or the error its status stands for."""
        if self.status < 400:
            return self
        raise error_for(self)


def error_for(answer: Answer) -> ProblemError:
    """The error of an answer with an error status, its problem document read."""
    problem: dict[str, Any]
    try:
        body = orjson.loads(answer.data) if answer.data else {}
        problem = body if isinstance(body, dict) else {"detail": str(body)[:DETAIL_MAX]}
    except orjson.JSONDecodeError:
        text = answer.data.decode("utf-8", "replace").strip()
        problem = {"detail": text[:DETAIL_MAX]} if text else {}
    problem.setdefault("status", answer.status)
    retry_after = parse_retry_after(answer.headers.get("Retry-After"))
    kind: type[ProblemError]
    if answer.status == 404:
        kind = NotFound
    elif answer.status == 409:
        kind = Conflict
    elif answer.status in (401, 403):
        kind = Unauthorized
    elif answer.status == 429 or answer.status >= 500:
        kind = Unavailable
    elif answer.status >= 400:
        kind = Refused
    else:  # pragma: no cover - only error statuses get here
        kind = ProblemError
    return kind(answer.status, problem, retry_after)


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """Seconds a ``Retry-After`` asks for (delta-seconds or an HTTP date), or None."""
    if value is None:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:  # an HTTP date is GMT; a date without a zone is not one
        return None
    now = time.time() if now is None else now
    return max(0.0, when.timestamp() - now)


def check_base_url(url: str) -> str:
    """``url`` without a trailing slash: http or https, a host, no query or credentials;
    otherwise ValueError saying what is wrong."""
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("http", "https"):
        raise ValueError(f"the server URL must start with http:// or https://, not {url!r}")
    if not parts.hostname:
        raise ValueError(f"the server URL has no host: {url!r}")
    if parts.username or parts.password:
        raise ValueError("the server URL must not carry credentials; give the key apart")
    if parts.query or parts.fragment:
        raise ValueError(f"the server URL must not have a query or fragment: {url!r}")
    try:
        parts.port  # noqa: B018 - raises ValueError for a port out of range
    except ValueError:
        raise ValueError(f"the server URL has a bad port: {url!r}") from None
    return url.rstrip("/")


class Transport:
    """Requests to one server with one key: ``request(...)`` answers or raises.

    ``sleep`` and ``clock`` are passed in so that tests decide how time passes.
    """

    def __init__(
        self,
        base_url: str,
        key: str | None = None,
        *,
        timeout_s: float = 30.0,
        connect_timeout_s: float = 5.0,
        retry: RetryPolicy = DEFAULT_RETRY,
        user_agent: str = "jobpool-client",
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.base_url = check_base_url(base_url)
        self.timeout_s = timeout_s
        self.connect_timeout_s = connect_timeout_s
        self.retry = retry
        self.sleep = sleep
        self.clock = clock
        self._headers = {"User-Agent": user_agent}
        if key:
            self._headers["Authorization"] = f"Bearer {key}"
        # Redirects are not followed: a submit must not be re-sent elsewhere behind the
        # caller's back, and jobpool answers none.
        self._pool = urllib3.PoolManager(retries=False)

    def close(self) -> None:
        self._pool.clear()

    def url(self, path: str, query: Mapping[str, str] | None = None) -> str:
        tail = f"?{urllib.parse.urlencode(query)}" if query else ""
        return f"{self.base_url}{path}{tail}"

    def request(
        self,
        method: str,
        path: str,
        *,
        query: Mapping[str, str] | None = None,
        body: bytes | None = None,
        headers: Mapping[str, str] | None = None,
        read_timeout_s: float | None = None,
        retry_also: Callable[[Answer], bool] | None = None,
    ) -> Answer:
        """The answer to ``method path`` once it is not one to retry (any status: callers
        :meth:`Answer.check` it), or the error of the last try when the retries are spent.
        ``retry_also`` names answers to retry besides those of :data:`RETRIED_STATUSES`.
        Every request sent here must be safe to repeat."""
        url = self.url(path, query)
        sent = {**self._headers, **(headers or {})}
        timeout = urllib3.Timeout(
            connect=self.connect_timeout_s,
            read=self.timeout_s if read_timeout_s is None else read_timeout_s,
        )
        deadline = self.clock() + self.retry.budget_s
        attempt = 0
        while True:
            attempt += 1
            failure: Exception
            try:
                r = self._pool.request(
                    method, url, body=body, headers=sent, timeout=timeout, redirect=False
                )
            except urllib3.exceptions.HTTPError as ex:
                failure = Unreachable(f"no answer from {self.base_url}: {reason(ex)}")
                wait = self.retry.backoff(attempt)
            else:
                answer = Answer(r.status, r.headers, r.data, attempt)
                if answer.status not in RETRIED_STATUSES and not (
                    retry_also is not None and retry_also(answer)
                ):
                    return answer
                problem = error_for(answer)
                failure, hint = problem, problem.retry_after_s
                wait = self.retry.backoff(attempt) if hint is None else hint
            if attempt >= self.retry.attempts or self.clock() + wait > deadline:
                raise failure
            self.sleep(wait)


def reason(ex: urllib3.exceptions.HTTPError) -> str:
    """Why a request got no answer, in a few words (urllib3 wraps the OS error)."""
    if isinstance(ex, urllib3.exceptions.NewConnectionError):
        cause = str(ex).rsplit(": ", 1)[-1]
        return f"cannot connect ({cause})"
    if isinstance(ex, urllib3.exceptions.ConnectTimeoutError):
        return "connect timed out"
    if isinstance(ex, urllib3.exceptions.ReadTimeoutError):
        return "no answer in time (read timed out)"
    if isinstance(ex, urllib3.exceptions.ProtocolError):
        return f"the connection broke ({ex.args[-1] if ex.args else ex})"
    return str(ex) or type(ex).__name__
