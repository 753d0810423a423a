"""Fetch one user-supplied URL safely: the domain work behind ``POST /v1/fetch``.

:func:`fetch_url` is a plain blocking function meant to run on the io thread pool. Every hop
(the first URL and each redirect) is parsed and resolved once by :mod:`service.netguard`;
the connection goes to the checked address itself (urllib3 pool keyed by that address, a
Host header, TLS SNI and certificate check on the original name), so DNS cannot be asked
twice and answer differently. Redirects are followed here, one checked hop at a time.
"""

from __future__ import annotations

import base64
import hashlib
import socket
import time
from dataclasses import dataclass, field
from typing import Any, Final
from urllib.parse import urljoin

import urllib3
from urllib3.exceptions import (
    ConnectTimeoutError,
    HTTPError,
    NewConnectionError,
    ProtocolError,
    ReadTimeoutError,
    SSLError,
)

from service.jobs.context import current
from service.jobs.registry import job
from service.jobs.retry import Backoff, RetryAfter
from service.netguard import (
    DEFAULT_MAX_URL_LENGTH,
    BadURL,
    BlockedAddress,
    IPAddress,
    ParsedURL,
    Resolver,
    parse_url,
    resolve_checked,
)
from service.outbound import ADDRESSES_TRIED, discard, open_pinned, retry_after_s

__all__ = ["SELECTED_HEADERS", "FetchError", "FetchLimits", "fetch_url"]

SELECTED_HEADERS: Final = (
    "content-type",
    "content-length",
    "etag",
    "last-modified",
    "cache-control",
    "retry-after",
)
_REDIRECTS: Final = frozenset({301, 302, 303, 307, 308})
_METHODS: Final = frozenset({"GET", "HEAD"})
_CHUNK: Final = 64 * 1024
_DEADLINE_MESSAGE: Final = "the fetch took longer than its total deadline"
_DEADLINE_SLACK_S: Final = 0.05  # a read timeout this close to the deadline is the deadline
#: Failures another attempt may not repeat: they are retried (the job's policy).
RETRYABLE_KINDS: Final = frozenset({"connection", "timeout"})
#: How often a fetch is tried again, and how long it waits between tries.
FETCH_RETRIES: Final = 3
FETCH_BACKOFF: Final = Backoff(base_s=1.0, factor=2.0, max_s=60.0)


class FetchError(RuntimeError):
    """The fetch failed; ``str(err)`` is a message for the user, ``kind`` a stable code.

    kinds: ``bad_request`` (method), ``bad_url`` (URL or redirect target malformed or not
    http/https), ``blocked`` (refused address or name; ``__cause__`` is the
    :class:`~service.netguard.BlockedAddress`), ``dns`` (name does not resolve),
    ``too_many_redirects``, ``too_large`` (over ``max_bytes``), ``timeout`` (connect, read or
    total deadline), ``tls``, ``connection`` (refused, reset, protocol error).
    """

    def __init__(self, message: str, kind: str = "error") -> None:
        super().__init__(message, kind)
        self.message = message
        self.kind = kind

    def __str__(self) -> str:
        return self.message

    @property
    def retryable(self) -> bool:
        """Whether another attempt may fare better (the job's retry policy reads this):
        a connection that failed or timed out, not a URL the guard refused."""
        return self.kind in RETRYABLE_KINDS


class UpstreamBusy(RetryAfter):
    """The upstream answered 429 or 5xx on an attempt that is not the last: try again,
    no sooner than its ``Retry-After``."""


@dataclass(frozen=True, slots=True, kw_only=True)
class FetchLimits:
    """The limits of one fetch, plain values taken from the settings.

    ``connect_timeout_s`` and ``read_timeout_s`` bound each connect and each socket read;
    ``deadline_s`` (None: none) bounds the whole fetch, redirects included, checked before
    each hop and after each chunk (so it can be overrun by at most one read timeout).
    ``max_bytes`` caps the body read (one byte more is read to tell "exactly at the cap"
    from "over it"); ``store_body_max`` is the largest body returned in the result.
    ``allow_private`` lifts the address and name checks (never the URL checks);
    ``allowed_addresses`` lifts them for exact addresses only (a test server, a known
    internal upstream). ``ca_file`` replaces the system CA store for https.
    """

    connect_timeout_s: float = 5.0
    read_timeout_s: float = 15.0
    deadline_s: float | None = 60.0
    max_bytes: int = 10 * 1024 * 1024
    max_redirects: int = 5
    store_body_max: int = 1024 * 1024
    allow_private: bool = False
    user_agent: str = "jobpool-fetch/0.1"
    max_url_length: int = DEFAULT_MAX_URL_LENGTH
    allowed_addresses: frozenset[IPAddress] = field(default_factory=frozenset)
    ca_file: str | None = None

    def __post_init__(self) -> None:
        for name in ("connect_timeout_s", "read_timeout_s"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be > 0")
        if self.deadline_s is not None and not self.deadline_s > 0:
            raise ValueError("deadline_s must be > 0 or None")
        if self.max_bytes < 0 or self.store_body_max < 0 or self.max_redirects < 0:
            raise ValueError("max_bytes, store_body_max and max_redirects must be >= 0")
        if self.max_url_length < 16:
            raise ValueError("max_url_length must be >= 16")
        if not self.user_agent or any(c in self.user_agent for c in "\r\n\0"):
            raise ValueError("user_agent must be one non-empty line")


def fetch_url(
    url: str,
    method: str = "GET",
    *,
    limits: FetchLimits,
    resolver: Resolver = socket.getaddrinfo,
) -> dict[str, Any]:
    """Fetch ``url`` with ``method`` (GET or HEAD) within ``limits``; return the result.

    The result (JSON-able values, plus bytes under "body"):

    - ``url``: the final URL (normalised), ``method``, ``status`` (int),
      ``address``: the IP address the final response came from,
    - ``headers``: the selected response headers present, lower-case names
      (content-type, content-length, etag, last-modified, cache-control),
    - ``size``: body bytes read, ``sha256``: hex digest of those bytes (for HEAD: 0 and the
      digest of b""); the body is the bytes as sent (``Accept-Encoding: identity`` is asked
      for and no content coding is undone),
    - ``elapsed_ms`` (int, whole fetch), ``redirects``: the URLs followed, in order,
    - ``body``: the body if ``size <= store_body_max``, else None, and
      ``body_truncated``: True exactly when the body was read in full (``size`` and
      ``sha256`` cover all of it) but not kept because it is over ``store_body_max``.

    Raises :class:`FetchError` (see its kinds); ``resolver`` replaces
    :func:`socket.getaddrinfo` (tests).
    """
    started = time.monotonic()
    deadline = None if limits.deadline_s is None else started + limits.deadline_s
    method = method.upper() if isinstance(method, str) else ""
    if method not in _METHODS:
        raise FetchError("method must be GET or HEAD", "bad_request")
    try:
        hop = parse_url(url, max_length=limits.max_url_length)
    except BadURL as exc:
        raise FetchError(f"bad URL: {exc}", "bad_url") from exc
    redirects: list[str] = []
    while True:
        addresses = _resolve(hop, limits, resolver, redirected=bool(redirects))
        response, address = _open(hop, addresses, method, limits, deadline)
        location = response.headers.get("location") if response.status in _REDIRECTS else None
        if location is None:
            return _read_result(
                response, hop, address, method, limits, deadline, started, redirects
            )
        discard(response)
        if len(redirects) >= limits.max_redirects:
            raise FetchError(
                f"too many redirects (more than {limits.max_redirects})", "too_many_redirects"
            )
        try:
            hop = parse_url(_join(hop.url, location), max_length=limits.max_url_length)
        except BadURL as exc:
            raise FetchError(f"redirect to {location!r} refused: {exc}", "bad_url") from exc
        redirects.append(hop.url)


def _join(base: str, location: str) -> str:
    """``location`` resolved against ``base`` (raises BadURL when it cannot be)."""
    try:
        return urljoin(base, location)
    except ValueError as exc:
        raise BadURL(f"malformed URL: {exc}") from None


def _resolve(
    hop: ParsedURL, limits: FetchLimits, resolver: Resolver, *, redirected: bool
) -> list[IPAddress]:
    prefix = f"redirect to {hop.url} refused: " if redirected else ""
    try:
        return resolve_checked(
            hop.host,
            hop.port,
            allow_private=limits.allow_private,
            resolver=resolver,
            allowed_addresses=limits.allowed_addresses,
        )
    except BlockedAddress as exc:
        raise FetchError(f"{prefix}{exc}", "blocked") from exc
    except BadURL as exc:
        raise FetchError(f"{prefix}{exc}", "bad_url") from exc
    except OSError as exc:  # socket.gaierror and whatever else the resolver raises
        raise FetchError(f"{prefix}cannot resolve {hop.host}: {exc}", "dns") from exc


def _remaining(deadline: float | None) -> float | None:
    if deadline is None:
        return None
    left = deadline - time.monotonic()
    if left <= 0:
        raise FetchError(_DEADLINE_MESSAGE, "timeout")
    return left


def _open(
    hop: ParsedURL,
    addresses: list[IPAddress],
    method: str,
    limits: FetchLimits,
    deadline: float | None,
) -> tuple[urllib3.BaseHTTPResponse, IPAddress]:
    """Send the request to the first address that accepts a connection."""
    headers = {
        "User-Agent": limits.user_agent,
        "Accept": "*/*",
        "Accept-Encoding": "identity",
    }
    failure: FetchError | None = None
    for address in addresses[:ADDRESSES_TRIED]:
        left = _remaining(deadline)
        timeout = urllib3.Timeout(
            connect=_cap(limits.connect_timeout_s, left), read=_cap(limits.read_timeout_s, left)
        )
        where = _where(hop, address)
        try:
            response = open_pinned(
                hop, address, method, headers=headers, timeout=timeout, ca_file=limits.ca_file
            )
        except NewConnectionError as exc:  # before ConnectTimeoutError: it subclasses it
            failure = FetchError(f"cannot connect to {where}: {_why(exc)}", "connection")
            failure.__cause__ = exc
            continue
        except ConnectTimeoutError as exc:
            failure = FetchError(f"connecting to {where} timed out", "timeout")
            failure.__cause__ = exc
            continue
        except HTTPError as exc:
            raise _http_failure(exc, where, deadline) from exc
        return response, address
    assert failure is not None  # resolve_checked never returns an empty list
    raise failure


def _where(hop: ParsedURL, address: IPAddress) -> str:
    """``host[:port]`` for messages, with the address connected to when it was a name."""
    return hop.authority if hop.ip is not None else f"{hop.authority} ({address})"


def _cap(value: float, left: float | None) -> float:
    return value if left is None else min(value, left)


def _why(exc: BaseException) -> str:
    text = str(exc)
    return text.split(": ", 1)[1] if ": " in text else text


def _http_failure(exc: HTTPError, where: str, deadline: float | None) -> FetchError:
    if isinstance(exc, ReadTimeoutError):
        if deadline is not None and time.monotonic() >= deadline - _DEADLINE_SLACK_S:
            return FetchError(_DEADLINE_MESSAGE, "timeout")
        return FetchError(f"reading from {where} timed out", "timeout")
    if isinstance(exc, SSLError):
        return FetchError(f"TLS with {where} failed: {_why(exc)}", "tls")
    if isinstance(exc, ProtocolError):
        return FetchError(f"connection to {where} failed: {_why(exc)}", "connection")
    return FetchError(f"request to {where} failed: {exc}", "connection")


def _tighten(
    response: urllib3.BaseHTTPResponse, read_timeout: float, deadline: float | None
) -> None:
    """Make the next socket read wait no longer than what is left of the deadline."""
    if deadline is None:
        return
    sock = getattr(response.connection, "sock", None)
    if isinstance(sock, socket.socket):
        sock.settimeout(_cap(read_timeout, _remaining(deadline)))


def _read_result(
    response: urllib3.BaseHTTPResponse,
    hop: ParsedURL,
    address: IPAddress,
    method: str,
    limits: FetchLimits,
    deadline: float | None,
    started: float,
    redirects: list[str],
) -> dict[str, Any]:
    where = _where(hop, address)
    headers = {
        name: str(response.headers[name]) for name in SELECTED_HEADERS if name in response.headers
    }
    digest = hashlib.sha256()
    kept: list[bytes] | None = []
    size = 0
    complete = False
    try:
        declared = headers.get("content-length", "")
        if method != "HEAD" and declared.isdigit() and int(declared) > limits.max_bytes:
            raise FetchError(
                f"response is {int(declared)} bytes, over the limit of {limits.max_bytes}",
                "too_large",
            )
        while method != "HEAD":
            _tighten(response, limits.read_timeout_s, deadline)
            chunk = response.read1(min(_CHUNK, limits.max_bytes + 1 - size))
            if not chunk:
                break
            size += len(chunk)
            if size > limits.max_bytes:
                raise FetchError(
                    f"response is over the limit of {limits.max_bytes} bytes", "too_large"
                )
            digest.update(chunk)
            if kept is not None:
                kept.append(chunk)
                if size > limits.store_body_max:
                    kept = None
            _remaining(deadline)
        complete = True
    except HTTPError as exc:
        raise _http_failure(exc, where, deadline) from exc
    finally:
        if not complete:
            response.close()
        response.release_conn()
    body = None if kept is None else b"".join(kept)
    return {
        "url": hop.url,
        "method": method,
        "status": response.status,
        "address": str(address),
        "headers": headers,
        "size": size,
        "sha256": digest.hexdigest(),
        "elapsed_ms": round((time.monotonic() - started) * 1000),
        "redirects": redirects,
        "body": body,
        "body_truncated": kept is None,
    }


#: Backstop only: FetchLimits.deadline_s bounds a fetch; app.py sets it from the settings.
FETCH_JOB_TIMEOUT_S = 120.0


@job("fetch", pool="io", timeout=FETCH_JOB_TIMEOUT_S, retries=FETCH_RETRIES, backoff=FETCH_BACKOFF)
def fetch_job(url: str, method: str, limits: dict[str, Any]) -> dict[str, Any]:
    """The ``fetch`` job: the body travels as base64 so the result is plain JSON.

    A connection that fails and an upstream answering 429 or 5xx are tried again (up to
    ``FETCH_RETRIES`` times, honouring its ``Retry-After``); the answer of the last attempt
    is the result, whatever its status. A URL the guard refuses is never tried again."""
    result = fetch_url(url, method, limits=FetchLimits(**limits))
    status = result["status"]
    if (status == 429 or status >= 500) and not current().final:
        wait = retry_after_s(result["headers"].get("retry-after"))
        raise UpstreamBusy(f"the upstream answered HTTP {status}", seconds=wait)
    body = result.pop("body", None)
    result["body_base64"] = None if body is None else base64.b64encode(body).decode("ascii")
    return result
