"""A finished job's result as an answer: binary results as themselves, the rest as JSON."""

from __future__ import annotations

import falcon.asgi

from service.api.http import send_json
from service.jobs.record import JobRecord


def result_body(resp: falcon.asgi.Response, record: JobRecord) -> None:
    """Answer with the result: binary results as themselves, the rest as JSON."""
    result = record.result
    if isinstance(result, dict) and isinstance(result.get("data"), bytes | bytearray):
        resp.status = 200
        resp.content_type = str(result.get("content_type") or "application/octet-stream")
        resp.data = bytes(result["data"])
        return
    send_json(resp, result)
