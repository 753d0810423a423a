"""``GET /v1/search?q=…``: ask every provider in parallel, merge within one deadline."""

from __future__ import annotations

import time
from typing import Any

import falcon.asgi

from service.api.http import send_struct
from service.api.search_answer import ProviderStatus, SearchAnswer, SearchItem
from service.config import Settings
from service.errors import Invalid
from service.jobs.failures import TaskTimeout, describe
from service.jobs.layer import JobLayer
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
        calls = [
            {"url": url, "q": q, "limit": limit, "timeout_s": s.search_provider_timeout_ms / 1000,
             "max_bytes": s.search_max_bytes}
            for _, url in s.search_providers
        ]  # fmt: skip
        outcomes = await self.layer.fan_out("search.provider", calls, s.search_deadline_ms / 1000)
        statuses: list[ProviderStatus] = []
        found: list[tuple[str, list[dict[str, Any]]]] = []
        for (name, _), outcome in zip(s.search_providers, outcomes, strict=True):
            if outcome.cut_off:
                status = ProviderStatus(name, "timeout", elapsed_ms=s.search_deadline_ms)
            elif (ex := outcome.error) is not None:
                timed_out = isinstance(ex, ProviderTimeout | TaskTimeout)
                status = ProviderStatus(
                    name,
                    "timeout" if timed_out else "error",
                    error=str(ex) if timed_out else describe(ex),
                    elapsed_ms=None,
                )
            else:
                elapsed_ms = round(outcome.elapsed_s * 1000)
                status = ProviderStatus(name, "ok", count=len(outcome.value), elapsed_ms=elapsed_ms)
                found.append((name, outcome.value))
            statuses.append(status)
        send_struct(resp, SearchAnswer(
            query=q,
            items=[SearchItem(**item) for item in merge(found, limit)],
            providers=statuses,
            elapsed_ms=round((time.perf_counter() - started) * 1000),
        ))  # fmt: skip
