"""Liveness and readiness, as named pings collected into one answer."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import falcon.asgi

from service.api.http import send_json

Ping = Callable[[], Awaitable[None]]


class Healthz:
    """Liveness: the worker's event loop answers. Touches no pool and no store."""

    async def on_get(self, req: falcon.asgi.Request, resp: falcon.asgi.Response) -> None:
        send_json(resp, {"status": "ok"})


class Readyz:
    """Readiness: every ping passes (as create_app wires them: the store answers, the worker
    is not draining)."""

    def __init__(self, pings: dict[str, Ping]) -> None:
        self.pings = pings

    async def on_get(self, req: falcon.asgi.Request, resp: falcon.asgi.Response) -> None:
        ok: list[str] = []
        failing: dict[str, str] = {}
        for name, ping in self.pings.items():
            try:
                await ping()
            except Exception as ex:
                failing[name] = str(ex) or type(ex).__name__
            else:
                ok.append(name)
        send_json(resp, {"ok": ok, "failing": failing}, status=503 if failing else 200)
