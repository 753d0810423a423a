"""``/v1/jobs/{id}``: a job's state, its result, and cancelling it."""

from __future__ import annotations

import falcon.asgi

from service import ids
from service.api.http import send_struct
from service.api.results import result_body
from service.api.submitting import preferences, retry_after
from service.config import Settings
from service.errors import Conflict, JobNotFound
from service.jobs.layer import JobLayer
from service.jobs.record import JobRecord
from service.jobs.state import JobState, is_final


async def find_job(layer: JobLayer, req: falcon.asgi.Request, job_id: str) -> JobRecord:
    """The caller's job, or 404: an unknown id and another client's job look the same."""
    record = await layer.get(job_id) if ids.is_valid(job_id) else None
    if record is None or record.owner != req.context.owner:
        raise JobNotFound(f"no job {job_id!r}")
    req.context.job_id = record.id  # for the access log
    return record


#: Seconds a cancel waits for a running job to stop, past the io grace period: the worker
#: that runs it may be another, which notices within its stop poll.
STOP_WAIT_MARGIN_S = 2.0


class JobResource:
    """GET a job document (``Prefer: wait=N``: once it is final, or after N s); DELETE
    cancels it. Any worker of any host answers for any job."""

    def __init__(self, layer: JobLayer, settings: Settings) -> None:
        self.layer = layer
        self.settings = settings

    async def on_get(
        self, req: falcon.asgi.Request, resp: falcon.asgi.Response, job_id: str
    ) -> None:
        record = await find_job(self.layer, req, job_id)
        prefer = preferences(req, self.settings.wait_max_s)
        if prefer.wait_s > 0:
            resp.set_header("Preference-Applied", f"wait={prefer.wait_s}")
            record = await self.layer.wait(job_id, prefer.wait_s) or record
        self._document(resp, record)

    async def on_delete(
        self, req: falcon.asgi.Request, resp: falcon.asgi.Response, job_id: str
    ) -> None:
        """A job that has not started ends cancelled at once (200); a running one is asked
        to stop, and the answer waits for it a while: 200 once it ended cancelled, 202 while
        it still stops; a cancelled job answers the same again; one that had ended 409."""
        before = await find_job(self.layer, req, job_id)
        if before.state is JobState.CANCELLED:  # cancelled already: the same answer again
            self._document(resp, before)
            return
        if is_final(before.state):
            raise Conflict(f"job {job_id} is {before.state.value}; it has ended already")
        wait_s = self.settings.cancel_grace_s + STOP_WAIT_MARGIN_S
        record = await self.layer.cancel(job_id, stop_wait_s=wait_s)
        if record is None:
            raise JobNotFound(f"no job {job_id!r}")
        if record.state is JobState.CANCELLED:
            self._document(resp, record)
        elif is_final(record.state):
            raise Conflict(f"job {job_id} ended {record.state.value} before it could be stopped")
        else:
            self._document(resp, record, status=202)

    def _document(self, resp: falcon.asgi.Response, record: JobRecord, status: int = 200) -> None:
        hint = retry_after(record, self.settings.poll_hint_s)
        if hint is not None:
            resp.set_header("Retry-After", str(hint))
        send_struct(resp, record.document(), status=status)


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
