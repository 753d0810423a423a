"""``/v1/parcels``: the seed's JSON batch endpoint, and stored parcels by id."""

from __future__ import annotations

from functools import partial

import falcon.asgi
import msgspec

from service.api.http import decode_struct, parse_json, read_json, send_json
from service.api.submitting import (
    answer_submitted,
    callback_url,
    idempotency_key,
    requested_start,
)
from service.config import Settings
from service.errors import NotFound
from service.jobs.layer import JobLayer
from service.tasks.parcels import Batch, batch_items, parse_batch

_BATCH = msgspec.json.Decoder(Batch)


def decode_batch(body: bytes, *, max_items: int) -> list[dict[str, str]]:
    """The items of a batch body, checked: 400 if it is not JSON, else 422 with every
    problem (:func:`parse_batch`) unless it is a batch of at most ``max_items``."""
    explain = partial(parse_batch, max_items=max_items)
    batch = decode_struct(body, _BATCH, explain)
    items = batch_items(batch, max_items=max_items)
    if items is None:  # a time of the right shape that does not exist: say which
        explain(parse_json(body))
        raise AssertionError("the walk found nothing wrong with a batch the decoder refused")
    return items


class ParcelsResource:
    """POST a batch: one job, one io task per item; 202 once the job is stored."""

    def __init__(self, layer: JobLayer, settings: Settings) -> None:
        self.layer = layer
        self.settings = settings
        self.body_max = settings.body_max  # checked by security.BodyLimit before reading
        latency = settings.parcel_latency_ms
        self.options = {"latency_ms": list(latency)} if latency else {}

    async def on_post(self, req: falcon.asgi.Request, resp: falcon.asgi.Response) -> None:
        max_items = self.settings.batch_max
        items = await read_json(
            req, self.settings.body_max, partial(decode_batch, max_items=max_items)
        )
        start = requested_start(req, horizon_s=self.settings.schedule_max_s)
        key = idempotency_key(req, self.settings, "parcel", items)
        record = await self.layer.submit_batch(
            "parcel", items, owner=req.context.owner, options=self.options, not_before=start,
            key=key, callback=callback_url(req, self.settings),
        )  # fmt: skip
        await answer_submitted(self.layer, req, resp, record, self.settings, accepted=len(items))


class ParcelResource:
    """GET a stored parcel exactly as it was sent."""

    def __init__(self, layer: JobLayer) -> None:
        self.layer = layer

    async def on_get(
        self, req: falcon.asgi.Request, resp: falcon.asgi.Response, parcel_id: str
    ) -> None:
        parcel = await self.layer.item("parcel", req.context.owner, parcel_id)
        if parcel is None:
            raise NotFound(f"no parcel {parcel_id!r}")
        send_json(resp, parcel)
