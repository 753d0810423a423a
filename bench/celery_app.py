"""Celery peer: FastAPI hands each item of the seed batch to Celery, on a local Redis.

    BENCH_REDIS_URL=redis://127.0.0.1:6379/0 uvicorn bench.celery_app:app --workers 2 ...
    BENCH_REDIS_URL=... celery -A bench.celery_app worker --pool solo --loglevel WARNING

``app`` checks the batch with the FastAPI peer's pydantic model, sends one task message per
item to Redis (the broker) and answers 202 with their task ids once all are sent;
``batch_app`` sends one message carrying the whole batch instead (a chunked task). One
worker process (the solo pool) runs the tasks and writes each result to Redis (the result
backend), so a client can ask about a task as it can about a jobpool job.

Stores durably as far as its Redis does: ``bench.ingest`` runs that redis-server with an
append-only file fsynced every second, as it runs jobpool's fleet store. No auth, no rate
limits, no metrics, no job state beyond Celery's own. ``bench.ingest --peers celery``
starts both processes and counts the CPU of both and of Redis.
"""

from __future__ import annotations

import os
from typing import Any

from celery import Celery
from fastapi import FastAPI

from bench.fastapi_app import Batch

REDIS_URL = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/0")

celery = Celery("bench", broker=REDIS_URL, backend=REDIS_URL)
celery.conf.update(broker_connection_retry_on_startup=True, worker_hijack_root_logger=False)


@celery.task(name="store_parcel")
def store_parcel(parcel: dict[str, Any]) -> dict[str, Any]:
    """One item's work: jobpool's parcel task returns its item, and so does this one."""
    return parcel


@celery.task(name="store_batch")
def store_batch(parcels: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """A whole batch's work in one task."""
    return parcels


def _ready() -> dict[str, str]:
    return {"status": "ok"}


# Sync endpoints: Celery's client blocks on Redis, so FastAPI runs them in its thread pool
# rather than on the event loop.
app = FastAPI()
app.get("/readyz")(_ready)


@app.post("/v1/parcels", status_code=202)
def submit(batch: Batch) -> dict[str, list[str]]:
    tasks = [store_parcel.delay(p.model_dump(mode="json")) for p in batch.Data]
    return {"tasks": [t.id for t in tasks]}


batch_app = FastAPI()
batch_app.get("/readyz")(_ready)


@batch_app.post("/v1/parcels", status_code=202)
def submit_batch(batch: Batch) -> dict[str, list[str]]:
    task = store_batch.delay([p.model_dump(mode="json") for p in batch.Data])
    return {"tasks": [task.id]}
