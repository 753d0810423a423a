"""``GET /v1/search?q=…``: ask every provider in parallel, merge within one deadline."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import falcon.asgi

from service.api.http import send_struct
from service.api.search_answer import ProviderStatus, SearchAnswer, SearchItem
from service.config import Settings
from service.errors import Invalid
from service.jobs.cpu_pool import TaskTimeout
from service.jobs.layer import JobLayer, describe
from service.tasks.search import ProviderTimeout, merge

DEFAULT_LIMIT = 20
#: What a query may not consist of alone; the same rule, as a pattern, in /openapi.json.
BLANKS = " \t\r\n"
BLANK_FREE_PATTERN = "[^ \t\r\n]"
MAX_LIMIT = 100


class SearchResource:
    """A slow or failing provider never fails the answer, and the answer never waits past
    ``JOBPOOL_SEARCH_DEADLINE_MS``."""

    def __init__(self, layer: JobLayer, settings: Settings) -> None:
        self.layer = layer
        self.settings = settings

    def _query(self, req: falcon.asgi.Request) -> tuple[str, int]:
        q = req.get_param("q") or ""
        if not q.strip(BLANKS):
            raise Invalid('the query parameter "q" is required')
        if len(q) > self.settings.search_query_max:
            raise Invalid(f'"q" is over {self.settings.search_query_max} characters '
                          "(JOBPOOL_SEARCH_QUERY_MAX)")  # fmt: skip
        raw = req.get_param("limit")
        if raw is None:  # absent; an empty value is refused below
            raw = str(DEFAULT_LIMIT)
        if not raw.isdigit() or not 1 <= int(raw) <= MAX_LIMIT:
            raise Invalid(f'"limit" must be an integer from 1 to {MAX_LIMIT}')
        return q, int(raw)

    async def on_get(self, req: falcon.asgi.Request, resp: falcon.asgi.Response) -> None:
        q, limit = self._query(req)
        s = self.settings
        started = time.perf_counter()
        timeout_s = s.search_provider_timeout_ms / 1000
        calls = {
            name: asyncio.ensure_future(self._ask(url, q, limit, timeout_s))
            for name, url in s.search_providers
        }
        if calls:
            await asyncio.wait(calls.values(), timeout=s.search_deadline_ms / 1000)
        statuses: list[ProviderStatus] = []
        found: list[tuple[str, list[dict[str, Any]]]] = []
        for name, call in calls.items():
            if not call.done():
                call.cancel()  # the thread finishes on its own; nobody waits for it
                status = ProviderStatus(name, "timeout", elapsed_ms=s.search_deadline_ms)
            elif (ex := call.exception()) is not None:
                timed_out = isinstance(ex, ProviderTimeout | TaskTimeout)
                status = ProviderStatus(
                    name,
                    "timeout" if timed_out else "error",
                    error=str(ex) if timed_out else describe(ex),
                    elapsed_ms=None,
                )
            else:
                items, elapsed_ms = call.result()
                status = ProviderStatus(name, "ok", count=len(items), elapsed_ms=elapsed_ms)
                found.append((name, items))
            statuses.append(status)
        send_struct(resp, SearchAnswer(
            query=q,
            items=[SearchItem(**item) for item in merge(found, limit)],
            providers=statuses,
            elapsed_ms=round((time.perf_counter() - started) * 1000),
        ))  # fmt: skip

    async def _ask(
        self, url: str, q: str, limit: int, timeout_s: float
    ) -> tuple[list[dict[str, Any]], int]:
        started = time.perf_counter()
        items = await self.layer.call(
            "search.provider",
            {"url": url, "q": q, "limit": limit, "timeout_s": timeout_s,
             "max_bytes": self.settings.search_max_bytes},
        )  # fmt: skip
        return items, round((time.perf_counter() - started) * 1000)
