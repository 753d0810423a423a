"""Middleware: request ids, timing and access log, the worker's life cycle (the owner of a
request: see security.py)."""

from __future__ import annotations

import itertools
import logging
import re
import secrets
import time
from collections.abc import Awaitable, Callable
from typing import Any

import falcon
import falcon.asgi

from service.logs import ACCESS_LOGGER, LightRecord
from service.metrics import METHODS, UNMATCHED, Metrics

REQUEST_ID = re.compile(r"[A-Za-z0-9._:=;/+-]{1,200}")
#: Where :class:`Telemetry` leaves its ``record`` in the ASGI lifespan state: the HTTP server
#: layer (service/server.py) reports there the answers it gives without the app.
TELEMETRY_STATE = "jobpool.telemetry"


access_log = logging.getLogger(ACCESS_LOGGER)


class Telemetry:
    """Gives each request its id, times it, counts it in the metrics and writes its
    access-log line.

    The request id is the client's ``X-Request-ID`` (or the ALB's ``X-Amzn-Trace-Id``) when
    well formed, else a new one, echoed in the answer. First of the middleware (it never
    refuses a request, but on the metrics listener), so it times every request and its
    line has the request id, even when a later middleware refuses the request (falcon runs
    every ``process_response``). With ``metrics_port``
    (``JOBPOOL_METRICS_BIND``) the listener on that port answers ``/metrics`` alone, and
    the API's listener does not answer it.
    """

    def __init__(
        self,
        metrics: Metrics | None,
        *,
        metrics_port: int | None = None,
        clock: Callable[[], float] = time.perf_counter,
    ) -> None:
        self.metrics = metrics
        self.metrics_port = metrics_port
        self.clock = clock
        # A new request id: this worker's random prefix and a count (unique, and far cheaper
        # than fresh random bytes per request; it is an id for logs, not a secret).
        self._prefix = secrets.token_hex(4)
        self._count = itertools.count(1)

    async def process_request(self, req: falcon.asgi.Request, resp: falcon.asgi.Response) -> None:
        req.context.started = self.clock()
        given = req.get_header("X-Request-ID") or req.get_header("X-Amzn-Trace-Id")
        if given and REQUEST_ID.fullmatch(given):
            rid = given
        else:
            rid = f"{self._prefix}{next(self._count):08x}"
        req.context.request_id = rid
        resp.set_header("X-Request-ID", rid)
        if self.metrics_port is not None:
            server = req.scope.get("server")
            on_metrics_port = server is not None and server[1] == self.metrics_port
            if on_metrics_port != (req.path == "/metrics"):
                raise falcon.HTTPNotFound()

    async def process_startup(self, scope: dict[str, Any], event: dict[str, Any]) -> None:
        state = scope.get("state")
        if state is not None:  # a server that keeps lifespan state (gunicorn's does)
            state[TELEMETRY_STATE] = self.record

    async def process_response(
        self,
        req: falcon.asgi.Request,
        resp: falcon.asgi.Response,
        resource: object,
        req_succeeded: bool,
    ) -> None:
        started = getattr(req.context, "started", None)
        self.record(
            req.uri_template,
            req.method,
            req.path,
            resp.status_code,
            0.0 if started is None else self.clock() - started,
            getattr(req.context, "request_id", None),
            getattr(req.context, "job_id", None),
            getattr(req.context, "owner", None),  # set once its key was known
        )

    def record(
        self,
        route: str | None,
        method: str,
        path: str,
        status: int,
        seconds: float,
        request_id: str | None,
        job_id: str | None = None,
        client: str | None = None,
    ) -> None:
        """Count one answer and write its access-log line (``route`` None: no route;
        ``client`` None: its key was not known)."""
        route = route or UNMATCHED
        if self.metrics is not None:
            method_label = method if method in METHODS else "other"
            self.metrics.request(route, method_label, status, seconds, client)
        if access_log.isEnabledFor(logging.INFO):
            line = LightRecord(
                ACCESS_LOGGER, logging.INFO, "%s %s %d", (method, path, status),
                {
                    "route": route,
                    "method": method,
                    "path": path,
                    "status": status,
                    "duration_ms": round(seconds * 1000, 3),
                    "request_id": request_id,
                    "job_id": job_id,
                },
            )  # fmt: skip
            access_log.handle(line)


class Lifecycle:
    """Runs the worker's start-up and shutdown through the ASGI lifespan."""

    def __init__(
        self,
        startup: Callable[[], Awaitable[None]],
        shutdown: Callable[[], Awaitable[None]],
    ) -> None:
        self._startup = startup
        self._shutdown = shutdown

    async def process_startup(self, scope: dict[str, Any], event: dict[str, Any]) -> None:
        await self._startup()

    async def process_shutdown(self, scope: dict[str, Any], event: dict[str, Any]) -> None:
        await self._shutdown()
