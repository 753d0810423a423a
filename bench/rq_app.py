"""RQ peer: FastAPI enqueues each item of the seed batch as an RQ job, on a local Redis.

    BENCH_REDIS_URL=redis://127.0.0.1:6379/0 uvicorn bench.rq_app:app --workers 2 ...
    rq worker --url redis://127.0.0.1:6379/0 --logging_level WARNING

``app`` checks the batch with the FastAPI peer's pydantic model, enqueues one job per item
and answers 202 with their job ids once all are in Redis. One ``rq worker`` (which forks a
work horse for each job, as RQ does by default) runs them and keeps each result in Redis, so
a client can ask about a job as it can about a jobpool job.

Stores durably as far as its Redis does: ``bench.ingest`` runs that redis-server with an
append-only file fsynced every second, as it runs jobpool's fleet store. No auth, no rate
limits, no metrics. ``bench.ingest --peers rq`` starts both processes and counts the CPU
of both and of Redis.
"""

from __future__ import annotations

import os
from typing import Any

from fastapi import FastAPI
from redis import Redis
from rq import Queue

from bench.fastapi_app import Batch

REDIS_URL = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/0")

queue = Queue(connection=Redis.from_url(REDIS_URL))


def store_parcel(parcel: dict[str, Any]) -> dict[str, Any]:
    """One item's work: jobpool's parcel task returns its item, and so does this one."""
    return parcel


app = FastAPI()


@app.get("/readyz")
def ready() -> dict[str, str]:
    return {"status": "ok"}


# A sync endpoint: RQ's client blocks on Redis, so FastAPI runs it in its thread pool.
@app.post("/v1/parcels", status_code=202)
def submit(batch: Batch) -> dict[str, list[str]]:
    jobs = [queue.enqueue(store_parcel, p.model_dump(mode="json")) for p in batch.Data]
    return {"jobs": [j.id for j in jobs]}
