"""``POST /v1/jobs/{id}/callback``: send an ended job's callback again."""

from __future__ import annotations

import falcon.asgi

from service.api.http import send_struct
from service.api.jobs import find_job
from service.errors import Conflict
from service.jobs.layer import JobLayer
from service.jobs.state import is_final


class CallbackResource:
    """A callback that was given up (or delivered, and lost by its receiver) is sent again,
    its horizon starting over: 202 with the job's document. 409 for a job without a
    callback, or one that has not ended (its callback goes when it does)."""

    def __init__(self, layer: JobLayer) -> None:
        self.layer = layer

    async def on_post(
        self, req: falcon.asgi.Request, resp: falcon.asgi.Response, job_id: str
    ) -> None:
        record = await find_job(self.layer, req, job_id)
        if record.callback is None:
            raise Conflict(f"job {job_id} has no callback (Job-Callback at its submit)")
        if not is_final(record.state) or not await self.layer.resend_callback(job_id):
            raise Conflict(f"job {job_id} has not ended: its callback is sent when it does")
        record = await self.layer.get(job_id) or record
        send_struct(resp, record.document(), status=202)
