"""``POST /v1/images?op=…``: the image is the body; the work runs on the cpu pool."""

from __future__ import annotations

import falcon.asgi

from service.api.http import read_body
from service.api.submitting import (
    answer_submitted,
    callback_url,
    idempotency_key,
    requested_start,
)
from service.config import Settings
from service.errors import UnsupportedMediaType
from service.jobs.layer import JobLayer
from service.tasks.images.errors import BadParams
from service.tasks.images.probe import check_request, probe
from service.tasks.images.request import parse_request

ACCEPTED_TYPES = ("image/", "application/octet-stream")


class ImagesResource:
    """Check the request and the image's header here; decode only in the job."""

    def __init__(self, layer: JobLayer, settings: Settings) -> None:
        self.layer = layer
        self.settings = settings
        # Checked by security.BodyLimit before the body is read.
        self.body_max = settings.image_body_max
        self.body_max_setting = "JOBPOOL_IMAGE_BODY_MAX"

    async def on_post(self, req: falcon.asgi.Request, resp: falcon.asgi.Response) -> None:
        media = (req.content_type or "").split(";", 1)[0].strip().lower()
        if not media.startswith(ACCEPTED_TYPES):
            raise UnsupportedMediaType(
                f"send the image itself as the body (image/* or application/octet-stream), "
                f"not {media or 'a body without Content-Type'}"
            )
        s = self.settings
        params: dict[str, str] = {}
        for name, value in req.params.items():
            if not isinstance(value, str):
                raise BadParams(f"{name!r} is given more than once", param=name)
            params[name] = value
        request = parse_request(params, max_side=s.image_max_side)
        data = await read_body(req, s.image_body_max, setting="JOBPOOL_IMAGE_BODY_MAX")
        info = probe(data, max_pixels=s.image_max_pixels)
        check_request(request, info, max_pixels=s.image_max_pixels)
        start = requested_start(req, horizon_s=s.schedule_max_s)
        args = {"data": data, "request": request.to_dict(), "max_pixels": s.image_max_pixels}
        record = await self.layer.submit(
            "image",
            args,
            owner=req.context.owner,
            not_before=start,
            key=idempotency_key(req, s, "image", data, request.to_dict()),
            callback=callback_url(req, s),
        )
        await answer_submitted(self.layer, req, resp, record, s)
