"""Middleware: request ids and the worker's life cycle (the owner: see security.py)."""

from __future__ import annotations

import re
import secrets
from collections.abc import Awaitable, Callable
from typing import Any

import falcon.asgi

REQUEST_ID = re.compile(r"[A-Za-z0-9._:=;/+-]{1,200}")


class RequestId:
    """Take ``X-Request-ID`` (or the ALB's ``X-Amzn-Trace-Id``), or make one; echo it."""

    async def process_request(self, req: falcon.asgi.Request, resp: falcon.asgi.Response) -> None:
        given = req.get_header("X-Request-ID") or req.get_header("X-Amzn-Trace-Id")
        rid = given if given and REQUEST_ID.fullmatch(given) else secrets.token_hex(8)
        req.context.request_id = rid
        resp.set_header("X-Request-ID", rid)


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
