"""FastAPI peer: the seed batch as a Python user would take it without a job service.

    uvicorn bench.fastapi_app:app --workers 2 --loop uvloop --http httptools \
        --log-level warning --no-access-log --timeout-keep-alive 75

A pydantic model checks the batch (each item's ``id``, RFC 3339-ish ``time`` and ``data``,
no other fields, at most jobpool's default ``JOBPOOL_BATCH_MAX`` items); each item becomes
an async background task that runs after the 202 goes out, in the same worker process.

Stores nothing: a worker that dies, or a restart, loses the batches it had not run, and
there is no job to ask about afterwards. No auth, no rate limits, no metrics. It is the
framework peer of ``bench.ingest``, not a service: it only shows what jobpool's promises
cost over the usual FastAPI shape. The durable peers (:mod:`bench.celery_app`,
:mod:`bench.rq_app`) reuse its :class:`Batch`.
"""

from __future__ import annotations

from datetime import datetime

from fastapi import BackgroundTasks, FastAPI
from pydantic import BaseModel, ConfigDict, Field

#: jobpool's JOBPOOL_BATCH_MAX default, so both refuse the same batches.
BATCH_MAX = 1000


class Parcel(BaseModel):
    model_config = ConfigDict(extra="forbid")

    id: str = Field(min_length=1)
    time: datetime
    data: str


class Batch(BaseModel):
    model_config = ConfigDict(extra="forbid")

    Data: list[Parcel] = Field(min_length=1, max_length=BATCH_MAX)


async def store_parcel(parcel: Parcel) -> Parcel:
    """The item's work: jobpool's parcel task returns its item, and so does this one."""
    return parcel


app = FastAPI()


@app.post("/v1/parcels", status_code=202)
async def submit(batch: Batch, background: BackgroundTasks) -> dict[str, int]:
    for parcel in batch.Data:
        background.add_task(store_parcel, parcel)
    return {"accepted": len(batch.Data)}


@app.get("/readyz")
async def ready() -> dict[str, str]:
    return {"status": "ok"}
