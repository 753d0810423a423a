"""jobpool stopped short after one stage of the seed-batch submit, for ``bench.ingest
--stages``: what each stage of the request path costs over the framework floor.

- ``validated``: the whole app (request id, auth, client limits, body limit, metrics,
  access log) and the batch's validation, then a 202 with no job behind it.
- ``accepted``: and the durable accept: the job row committed before the 202; its items
  never run.
- the full jobpool (``service.asgi:app``): and the items run, their results and the job's
  end written.

Each is jobpool's own app with its ``/v1/parcels`` route replaced, so everything else (the
settings, the lifespan, the store) is what production runs. Not for serving: a job of the
``accepted`` stage stays queued in the store.
"""

from __future__ import annotations

from functools import partial
from typing import Any

import falcon.asgi

from service import logs
from service.api.http import read_json
from service.api.parcels import decode_batch
from service.api.submitting import accepted as answer_accepted
from service.app import create_app
from service.config import Settings
from service.ids import new_id
from service.jobs.layer import JobLayer
from service.jobs.record import JobRecord
from service.jobs.state import JobState


class Validated:
    """Read and validate the batch, answer as jobpool would, store nothing."""

    def __init__(self, layer: JobLayer, settings: Settings) -> None:
        self.layer = layer
        self.settings = settings

    async def items(self, req: falcon.asgi.Request) -> list[Any]:
        decode = partial(decode_batch, max_items=self.settings.batch_max)
        return await read_json(req, self.settings.body_max, decode)

    def record(self, req: falcon.asgi.Request, items: list[Any]) -> JobRecord:
        now = self.layer.clock()
        return JobRecord(
            id=new_id(), name="parcel", owner=req.context.owner, state=JobState.QUEUED,
            created_at=now, args={}, items=items,
        )  # fmt: skip

    async def on_post(self, req: falcon.asgi.Request, resp: falcon.asgi.Response) -> None:
        items = await self.items(req)
        answer_accepted(resp, self.record(req, items), self.settings, accepted=len(items))


class Accepted(Validated):
    """And commit the job's row before answering (the 202's promise); run nothing."""

    async def on_post(self, req: falcon.asgi.Request, resp: falcon.asgi.Response) -> None:
        items = await self.items(req)
        record = self.record(req, items)
        await self.layer.store.add(record)
        answer_accepted(resp, record, self.settings, accepted=len(items))


def _app(resource: type[Validated]) -> falcon.asgi.App[Any, Any]:
    def extend(app: falcon.asgi.App[Any, Any], layer: JobLayer, settings: Settings) -> None:
        app.add_route("/v1/parcels", resource(layer, settings))  # replaces jobpool's

    settings = Settings.from_env()
    logs.configure(settings.log_level)
    return create_app(settings, extend=extend)


def validated() -> falcon.asgi.App[Any, Any]:
    return _app(Validated)


def accepted() -> falcon.asgi.App[Any, Any]:
    return _app(Accepted)
