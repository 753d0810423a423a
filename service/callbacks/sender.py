"""The POST of one callback: signed, behind the SSRF guard, bounded in time.

The URL is parsed and its name resolved once, every address checked
(:mod:`service.netguard`); the request goes to a checked address itself
(:func:`service.outbound.open_pinned`), and a redirect is an answer like any other, never
followed. The body is the job's document; the headers are Standard Webhooks'
(``webhook-id``: the job's id, the same on every attempt; ``webhook-timestamp``;
``webhook-signature``, see :mod:`.signing`), and ``traceparent`` when the submit was traced.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Callable

import urllib3
from urllib3.exceptions import ConnectTimeoutError, HTTPError, NewConnectionError

from service import tracing
from service.callbacks.secrets import SETTING, CallbackSecrets
from service.callbacks.signing import sign
from service.jobs.deliveries import Answer
from service.jobs.record import Delivery
from service.netguard import (
    BadURL,
    BlockedAddress,
    IPAddress,
    ParsedURL,
    Resolver,
    parse_url,
    resolve_checked,
)
from service.outbound import ADDRESSES_TRIED, discard, open_pinned, retry_after_s

USER_AGENT = "jobpool-callback/0.1"
#: Answers whose Retry-After puts off the next attempt.
BUSY = frozenset({429, 503})


class CallbackSender:
    """A :class:`~service.jobs.deliveries.Sender` for the callbacks of the settings."""

    def __init__(
        self,
        secrets: CallbackSecrets,
        *,
        timeout_s: float,
        allow_private: bool,
        url_max: int,
        resolver: Resolver = socket.getaddrinfo,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.secrets = secrets
        self.timeout_s = timeout_s
        self.allow_private = allow_private
        self.url_max = url_max
        self.resolver = resolver
        self.clock = clock

    def signs_for(self, owner: str) -> bool:
        return bool(self.secrets.of(owner))

    def __call__(self, delivery: Delivery, body: bytes) -> Answer:
        keys = self.secrets.of(delivery.owner)
        if not keys:  # removed since the submit: retried, the operator may add it back
            return Answer(error=f"client {delivery.owner!r} has no callback secret ({SETTING})")
        try:
            hop = parse_url(delivery.url, max_length=self.url_max)
            addresses = resolve_checked(
                hop.host, hop.port, allow_private=self.allow_private, resolver=self.resolver
            )
        except (BadURL, BlockedAddress) as ex:
            return Answer(error=f"refused URL: {ex}", final=True)
        except OSError as ex:  # socket.gaierror and whatever else the resolver raises
            return Answer(error=f"cannot resolve the callback's host: {ex}")
        timestamp = int(self.clock())
        headers = {
            "Content-Type": "application/json",
            "User-Agent": USER_AGENT,
            "webhook-id": delivery.job_id,
            "webhook-timestamp": str(timestamp),
            "webhook-signature": sign(keys, delivery.job_id, timestamp, body),
        }
        with tracing.outgoing("POST callback", delivery.traceparent) as carrier:
            headers.update(carrier)  # traceparent: the receiver joins the submit's trace
            return self._post(hop, addresses, headers, body)

    def _post(
        self, hop: ParsedURL, addresses: list[IPAddress], headers: dict[str, str], body: bytes
    ) -> Answer:
        timeout = urllib3.Timeout(total=self.timeout_s)
        failure = ""
        for address in addresses[:ADDRESSES_TRIED]:
            try:
                response = open_pinned(
                    hop, address, "POST", headers=headers, body=body, timeout=timeout
                )
            except (NewConnectionError, ConnectTimeoutError) as ex:
                failure = f"cannot connect to {hop.authority} ({address}): {type(ex).__name__}"
                continue
            except HTTPError as ex:
                return Answer(error=f"POST to {hop.authority} failed: {type(ex).__name__}")
            status = response.status
            wait = response.headers.get("retry-after") if status in BUSY else None
            discard(response)
            return Answer(status=status, retry_after_s=retry_after_s(wait) if wait else None)
        return Answer(error=failure)
