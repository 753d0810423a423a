"""An outbound request pinned to an address the SSRF guard checked: the one piece of
connection code the fetch job and the callbacks share.

:mod:`service.netguard` parses the URL and resolves its name once, checking every address;
:func:`open_pinned` then sends the request to one of those addresses itself (a urllib3 pool
keyed by that address, the original name in the Host header, TLS SNI and the certificate
check), never to the name, so a second DNS answer cannot move the connection. It never
retries and never follows a redirect: a caller that follows one checks the next hop again.
:func:`discard` lets go of an unwanted body, :func:`retry_after_s` reads a ``Retry-After``.
"""

from __future__ import annotations

import email.utils
import os
import threading
import time
from typing import Any, Final

import urllib3
from urllib3.exceptions import HTTPError

from service.netguard import IPAddress, ParsedURL

__all__ = ["ADDRESSES_TRIED", "discard", "open_pinned", "pool_manager", "retry_after_s"]

#: Addresses of a name tried, in resolver order, when connecting fails.
ADDRESSES_TRIED: Final = 3

#: A body up to this size is read so its connection is reused; a larger one is dropped.
DRAIN_MAX: Final = 64 * 1024

# One PoolManager per process, made on first use (and again in a forked child): it keeps a
# connection pool per (scheme, address, port, TLS name), so keep-alive connections are reused
# only for the very name their certificate was checked against.
_manager: tuple[int, urllib3.PoolManager] | None = None
_manager_lock = threading.Lock()


def pool_manager() -> urllib3.PoolManager:
    """This process's PoolManager."""
    global _manager
    pid = os.getpid()
    current = _manager
    if current is not None and current[0] == pid:
        return current[1]
    with _manager_lock:
        if _manager is None or _manager[0] != pid:
            _manager = (pid, urllib3.PoolManager(num_pools=64, maxsize=8, block=False))
        return _manager[1]


def open_pinned(
    hop: ParsedURL,
    address: IPAddress,
    method: str,
    *,
    headers: dict[str, str],
    timeout: urllib3.Timeout,
    body: bytes | None = None,
    ca_file: str | None = None,
) -> urllib3.BaseHTTPResponse:
    """Send ``method hop.target`` to ``address`` (checked by the caller) as ``hop.host``;
    the response's body is left unread. urllib3's errors are raised as they are."""
    pool_kwargs: dict[str, Any] = {}
    if hop.scheme == "https":
        pool_kwargs = {"server_hostname": hop.host, "assert_hostname": hop.host}
        if ca_file is not None:
            pool_kwargs["ca_certs"] = ca_file
    pool = pool_manager().connection_from_host(
        str(address), hop.port, hop.scheme, pool_kwargs=pool_kwargs
    )
    return pool.urlopen(
        method,
        hop.target,
        body=body,
        headers={"Host": hop.authority, **headers},
        retries=False,
        redirect=False,
        timeout=timeout,
        preload_content=False,
        decode_content=False,
        assert_same_host=False,
    )


def discard(response: urllib3.BaseHTTPResponse) -> None:
    """Let go of a response whose body is not wanted (a redirect's, a callback's answer):
    read it to reuse the connection only if it is small."""
    declared = str(response.headers.get("content-length", ""))
    try:
        if declared.isdigit() and int(declared) <= DRAIN_MAX:
            response.read()  # to the end (bounded by Content-Length), so it can be reused
        else:
            response.close()
    except HTTPError:
        response.close()
    finally:
        response.release_conn()


def retry_after_s(value: str | None, now: float | None = None) -> float:
    """Seconds a ``Retry-After`` value (RFC 9110: seconds, or an HTTP date) asks to wait;
    0 when it is absent or not understood."""
    if not value:
        return 0.0
    text = value.strip()
    if text.isdigit():
        return float(text)
    try:
        when = email.utils.parsedate_to_datetime(text)
    except (TypeError, ValueError):
        return 0.0
    now = time.time() if now is None else now
    return max(0.0, when.timestamp() - now)
