"""The framework floor: a bare Falcon ASGI app that decodes the seed batch and queues the
items in memory (a bounded deque), answering 202. No validation, no auth, no store, no
pools: a worker that stops loses its queue.

Run under the same gunicorn settings as jobpool: ``gunicorn -c gunicorn.conf.py
bench.floor_app:app`` (the ``floor`` peer), or with uvicorn's worker class, ``gunicorn -c
python:bench.gunicorn_uvicorn bench.floor_app:app`` (``floor-uvicorn``).
"""

from __future__ import annotations

import collections
from typing import Any

import falcon
import falcon.asgi
import orjson

QUEUE_MAX = 100_000


class Parcels:
    def __init__(self) -> None:
        self.queue: collections.deque[Any] = collections.deque(maxlen=QUEUE_MAX)

    async def on_post(self, req: falcon.asgi.Request, resp: falcon.asgi.Response) -> None:
        body = orjson.loads(await req.stream.read())
        for item in body["Data"]:
            self.queue.append(item)
        resp.status = 202
        resp.content_type = "application/json"
        resp.data = orjson.dumps({"accepted": len(body["Data"])})


class Health:
    async def on_get(self, req: falcon.asgi.Request, resp: falcon.asgi.Response) -> None:
        resp.data = b'{"status":"ok"}'


app = falcon.asgi.App()
app.add_route("/v1/parcels", Parcels())
app.add_route("/healthz", Health())
app.add_route("/readyz", Health())
