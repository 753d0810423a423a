"""``/v1/jobs/{id}``: a job's state, its result, and cancelling it."""

from __future__ import annotations

from typing import Any

import falcon.asgi

from service import ids
from service.api.http import preferred_wait, send_json, send_struct
from service.errors import Conflict, JobNotFound
from service.jobs.document import Submitted, SubmittedState
from service.jobs.layer import JobLayer
from service.jobs.record import JobRecord
from service.jobs.state import JobState


async def find_job(layer: JobLayer, req: falcon.asgi.Request, job_id: str) -> JobRecord:
    """The caller's job, or 404: an unknown id and another client's job look the same."""
    record = await layer.get(job_id) if ids.is_valid(job_id) else None
    if record is None or record.owner != req.context.owner:
        raise JobNotFound(f"no job {job_id!r}")
    req.context.job_id = record.id  # for the access log
    return record


def result_body(resp: falcon.asgi.Response, record: JobRecord) -> None:
    """Answer with the result: binary results as themselves, the rest as JSON."""
    result = record.result
    if isinstance(result, dict) and isinstance(result.get("data"), bytes | bytearray):
        resp.status = 200
        resp.content_type = str(result.get("content_type") or "application/octet-stream")
        resp.data = bytes(result["data"])
        return
    send_json(resp, result)


class JobResource:
    """GET a job document (``Prefer: wait=N``: once it is final, or after N s); DELETE
    cancels a job that has not started. Any worker of any host answers for any job."""

    def __init__(self, layer: JobLayer, *, wait_max_s: int = 0) -> None:
        self.layer = layer
        self.wait_max_s = wait_max_s

    async def on_get(
        self, req: falcon.asgi.Request, resp: falcon.asgi.Response, job_id: str
    ) -> None:
        record = await find_job(self.layer, req, job_id)
        wait_s = preferred_wait(req, self.wait_max_s)
        if wait_s > 0:
            resp.set_header("Preference-Applied", f"wait={wait_s}")
            record = await self.layer.wait(job_id, wait_s) or record
        send_struct(resp, record.document())

    async def on_delete(
        self, req: falcon.asgi.Request, resp: falcon.asgi.Response, job_id: str
    ) -> None:
        await find_job(self.layer, req, job_id)
        state = await self.layer.cancel(job_id)
        if state is None:
            raise JobNotFound(f"no job {job_id!r}")
        if state is not JobState.CANCELLED:
            raise Conflict(f"job {job_id} is {state.value}; only a queued job can be cancelled")
        record = await self.layer.get(job_id)
        assert record is not None
        send_struct(resp, record.document())


class JobResultResource:
    """GET the result of a finished job."""

    def __init__(self, layer: JobLayer) -> None:
        self.layer = layer

    async def on_get(
        self, req: falcon.asgi.Request, resp: falcon.asgi.Response, job_id: str
    ) -> None:
        record = await find_job(self.layer, req, job_id)
        if record.result is None:
            why = f": {record.error}" if record.error else ""
            raise Conflict(f"job {job_id} is {record.state.value} and has no result{why}")
        result_body(resp, record)


def accepted(resp: falcon.asgi.Response, record: JobRecord, **extra: Any) -> None:
    """202 for a stored job, pointing at it."""
    resp.set_header("Location", f"/v1/jobs/{record.id}")
    state: SubmittedState = "running" if record.state is JobState.RUNNING else "queued"
    send_struct(resp, Submitted(job=record.id, state=state, **extra), status=202)


async def answer_submitted(
    layer: JobLayer,
    req: falcon.asgi.Request,
    resp: falcon.asgi.Response,
    record: JobRecord,
    wait_s: int,
    **extra: Any,
) -> None:
    """202 at once, or with ``Prefer: wait`` the finished job (200) if it ends in time."""
    req.context.job_id = record.id  # for the access log
    if wait_s > 0:
        final = await layer.wait(record.id, wait_s)
        resp.set_header("Preference-Applied", f"wait={wait_s}")
        if final is not None and final.state in (JobState.SUCCEEDED, JobState.FAILED,
                                                 JobState.CANCELLED):  # fmt: skip
            resp.set_header("Location", f"/v1/jobs/{record.id}")
            resp.set_header("X-Job-Id", record.id)
            if final.state is JobState.SUCCEEDED and final.result is not None:
                result_body(resp, final)
            else:
                send_struct(resp, final.document())
            return
    accepted(resp, record, **extra)
