"""``GET /metrics``: Prometheus text, aggregated over every worker of the host."""

from __future__ import annotations

import asyncio

import falcon.asgi

from service.metrics import CONTENT_TYPE, Metrics


class MetricsResource:
    """Every worker's metrics: this worker's counts are flushed first, the rest are files."""

    def __init__(self, metrics: Metrics) -> None:
        self.metrics = metrics

    async def on_get(self, req: falcon.asgi.Request, resp: falcon.asgi.Response) -> None:
        self.metrics.flush()
        resp.content_type = CONTENT_TYPE
        # Reading the files of every worker is file I/O: off the event loop.
        resp.data = await asyncio.to_thread(self.metrics.exposition)
