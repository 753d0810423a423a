"""Routes added the way the README shows: a job (in jobs_for_tests) plus a small resource.

``POST /test/jobs/{name}`` submits any test job with the JSON body as its arguments, for the
reliability tests. Every answer names the worker process that gave it (``X-Test-Worker``),
so tests can tell that host-wide limits hold across workers.
"""

from __future__ import annotations

import os
from typing import Any

import falcon
import falcon.asgi

from service.api.http import read_json
from service.api.submitting import (
    answer_submitted,
    callback_url,
    idempotency_key,
    requested_start,
)
from service.config import Settings
from service.jobs.layer import JobLayer
from tests import jobs_for_tests  # noqa: F401 - registers the test jobs


class Echo:
    """POST /v1/echo: the body comes back as the job's result."""

    def __init__(self, layer: JobLayer, settings: Settings) -> None:
        self.layer = layer
        self.settings = settings

    async def on_post(self, req: falcon.asgi.Request, resp: falcon.asgi.Response) -> None:
        body = await read_json(req, 4096)
        record = await self.layer.submit("test.echo", {"body": body}, owner=req.context.owner)
        await answer_submitted(self.layer, req, resp, record, self.settings)


class AnyTestJob:
    """POST /test/jobs/{name}: a test job, with the body as its keyword arguments."""

    def __init__(self, layer: JobLayer, settings: Settings) -> None:
        self.layer = layer
        self.settings = settings

    async def on_post(
        self, req: falcon.asgi.Request, resp: falcon.asgi.Response, name: str
    ) -> None:
        if not name.startswith("test."):
            raise falcon.HTTPNotFound()
        args: dict[str, Any] = await read_json(req, 1 << 20)
        start = requested_start(req, horizon_s=self.settings.schedule_max_s)
        key = idempotency_key(req, self.settings, name, args)
        record = await self.layer.submit(
            name, args, owner=req.context.owner, not_before=start, key=key,
            callback=callback_url(req, self.settings),
        )  # fmt: skip
        await answer_submitted(self.layer, req, resp, record, self.settings)


class AnyTestBatch:
    """POST /test/batch/{name}: ``{"items": [...], "options": {...}}`` as a batch job."""

    def __init__(self, layer: JobLayer, settings: Settings) -> None:
        self.layer = layer
        self.settings = settings

    async def on_post(
        self, req: falcon.asgi.Request, resp: falcon.asgi.Response, name: str
    ) -> None:
        if not name.startswith("test."):
            raise falcon.HTTPNotFound()
        body: dict[str, Any] = await read_json(req, 1 << 20)
        start = requested_start(req, horizon_s=self.settings.schedule_max_s)
        record = await self.layer.submit_batch(
            name, body["items"], owner=req.context.owner, options=body.get("options"),
            not_before=start, callback=callback_url(req, self.settings),
        )  # fmt: skip
        await answer_submitted(self.layer, req, resp, record, self.settings)


class WorkerPid:
    """Adds ``X-Test-Worker: <pid>`` to every answer."""

    async def process_response(
        self, req: falcon.asgi.Request, resp: falcon.asgi.Response, resource: Any, ok: bool
    ) -> None:
        resp.set_header("X-Test-Worker", str(os.getpid()))


def extend(app: falcon.asgi.App[Any, Any], layer: JobLayer, settings: Settings) -> None:
    app.add_middleware(WorkerPid())
    app.add_route("/v1/echo", Echo(layer, settings))
    app.add_route("/test/jobs/{name}", AnyTestJob(layer, settings))
    app.add_route("/test/batch/{name}", AnyTestBatch(layer, settings))
