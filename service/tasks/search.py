"""Fan-out search: one call per configured upstream provider, merged in one order.

The provider contract (README, "Search providers"): ``GET {url}?q={query}&limit={n}``
answers 200 with ``application/json`` ``{"items": [{"id": str, "title": str,
"url": str, "score": number}, ...]}``. Providers are configured by the operator, so they
are trusted addresses (often private ones): the SSRF guard is for user-given URLs only.

A provider call is a coroutine job: it waits on a socket on the event loop, so the layer's
fan-out (:mod:`service.jobs.fanout`) can cancel it for real at the answer's deadline — its
connection is closed, nothing is left running.
"""

from __future__ import annotations

import asyncio
import math
import weakref
from typing import Any

import httpx
import orjson

from service.jobs.registry import job

MAX_ITEMS_PER_PROVIDER = 100
#: Kept-alive connections per provider host, per worker.
CONNECTIONS_PER_HOST = 8
_clients: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, httpx.AsyncClient] = (
    weakref.WeakKeyDictionary()
)


class ProviderError(RuntimeError):
    """A provider answered something outside the contract, or not at all."""


class ProviderTimeout(ProviderError):
    """A provider did not answer within its timeout."""


def _http() -> httpx.AsyncClient:
    """This event loop's client: connections to each provider are kept alive."""
    loop = asyncio.get_running_loop()
    client = _clients.get(loop)
    if client is None:
        client = httpx.AsyncClient(
            limits=httpx.Limits(max_keepalive_connections=CONNECTIONS_PER_HOST * 4),
            follow_redirects=False,
            trust_env=False,  # an operator's proxy variables are not for the providers
        )
        _clients[loop] = client
    return client


def parse_items(payload: bytes) -> list[dict[str, Any]]:
    """The items of a provider's answer, checked against the contract."""
    try:
        doc = orjson.loads(payload)
    except orjson.JSONDecodeError as ex:
        raise ProviderError(f"not JSON: {ex}") from None
    items = doc.get("items") if isinstance(doc, dict) else None
    if not isinstance(items, list):
        raise ProviderError('no "items" array')
    out = []
    for i, item in enumerate(items[:MAX_ITEMS_PER_PROVIDER]):
        if not isinstance(item, dict):
            raise ProviderError(f"item {i} is not an object")
        score = item.get("score", 0)
        if (
            isinstance(score, bool)
            or not isinstance(score, int | float)
            or not math.isfinite(score)
        ):
            raise ProviderError(f"item {i}: score is not a number")
        fields = {k: item.get(k) for k in ("id", "title", "url")}
        if not all(isinstance(v, str) for v in fields.values()):
            raise ProviderError(f"item {i}: id, title and url must be strings")
        out.append({**fields, "score": float(score)})
    return out


@job("search.provider", pool="io", timeout=10)
async def query_provider(
    url: str, q: str, limit: int, timeout_s: float, max_bytes: int
) -> list[Any]:
    """Ask one provider; raise ProviderError with the reason when it fails the contract."""
    try:
        async with _http().stream(
            "GET", url, params={"q": q, "limit": str(limit)}, timeout=timeout_s
        ) as response:
            if response.status_code != 200:
                raise ProviderError(f"HTTP {response.status_code}")
            payload = bytearray()
            async for chunk in response.aiter_bytes():
                payload += chunk
                if len(payload) > max_bytes:
                    raise ProviderError(f"answer over {max_bytes} bytes")
    except httpx.TimeoutException:
        raise ProviderTimeout(f"no answer within {timeout_s:g} s") from None
    except httpx.HTTPError as ex:
        raise ProviderError(f"unreachable: {type(ex).__name__}") from None
    return parse_items(bytes(payload))


def merge(per_provider: list[tuple[str, list[dict[str, Any]]]], limit: int) -> list[Any]:
    """One order: score (highest first), then provider order, then the provider's order.

    The same URL from two providers is kept once, where it ranks highest.
    """
    ranked = [
        (-item["score"], p, i, name, item)
        for p, (name, items) in enumerate(per_provider)
        for i, item in enumerate(items)
    ]
    ranked.sort(key=lambda r: r[:3])
    seen: set[str] = set()
    merged = []
    for _, _, _, name, item in ranked:
        if item["url"] in seen:
            continue
        seen.add(item["url"])
        merged.append({**item, "provider": name})
        if len(merged) == limit:
            break
    return merged
