"""The web dashboard (``JOBPOOL_UI=on``): server-rendered pages under ``/ui`` and a little
script of its own, served by the service itself; nothing fetched from elsewhere.

- :mod:`~service.ui.session`: logging in with an API key, the session cookie, form tokens;
- :mod:`~service.ui.pages`: the routes; :mod:`~service.ui.render`: templates, static files;
- :mod:`~service.ui.host`: what a host shows (pools, counts, processes);
- :mod:`~service.ui.fleet`: the hosts of a fleet (Redis), and the sessions' secret.

:func:`build` makes the dashboard for ``create_app``: its sessions go to the security
middleware (they say who asks for a page), :meth:`Ui.install` adds the routes and the
error pages.
"""

from __future__ import annotations

from typing import Any

import falcon
import falcon.asgi

from service import errors
from service.api import problems
from service.api.security import ANONYMOUS, ANONYMOUS_ROLE
from service.clients.limits import ClientLimits
from service.config import Settings
from service.jobs.layer import JobLayer
from service.jobs.slots import host_id
from service.keys import Keyring
from service.metrics import Metrics
from service.ui import fleet
from service.ui.host import HostView
from service.ui.pages import PREFIX, Dashboard, routes
from service.ui.session import LoginRequired, Sessions

__all__ = ["Ui", "build"]


class Ui:
    """The dashboard of one worker: its sessions, pages and the board of hosts."""

    def __init__(self, dashboard: Dashboard) -> None:
        self.dashboard = dashboard
        self.sessions = dashboard.sessions

    def install(self, app: falcon.asgi.App[Any, Any]) -> None:
        """The routes, and error pages for them (the API's errors stay problem+json)."""
        routes(app, self.dashboard)
        app.add_error_handler(errors.ServiceError, self._service_error)
        app.add_error_handler(falcon.HTTPError, self._http_error)

    async def start(self) -> None:
        await self.dashboard.board.start(self.dashboard.view.snapshot)

    async def stop(self) -> None:
        await self.dashboard.board.stop()

    # -- errors: pages for people, problem+json for the API and the figures ------------

    def _is_page(self, req: falcon.asgi.Request) -> bool:
        return self.sessions.covers(req.path) and not req.path.endswith(".json")

    async def _service_error(
        self, req: falcon.asgi.Request, resp: falcon.asgi.Response, ex: Exception, params: Any
    ) -> None:
        if not self._is_page(req):
            await problems.handle_service_error(req, resp, ex, params)
            return
        assert isinstance(ex, errors.ServiceError)
        if isinstance(ex, LoginRequired) and req.method in ("GET", "HEAD"):
            target = req.path + (f"?{req.query_string}" if req.query_string else "")
            resp.status = 303
            resp.location = f"{PREFIX}/login?" + falcon.to_query_str({"next": target})[1:]
            return
        retry_after = getattr(ex, "retry_after_s", None)
        if retry_after is not None:
            resp.set_header("Retry-After", str(retry_after))
        status = problems.status_of(ex)
        self._error_page(req, resp, status, ex.title, ex.detail)

    async def _http_error(
        self, req: falcon.asgi.Request, resp: falcon.asgi.Response, ex: Exception, params: Any
    ) -> None:
        assert isinstance(ex, falcon.HTTPError)
        if not self._is_page(req) or ex.status_code < 400:
            await problems.handle_http_error(req, resp, ex, params)
            return
        resp.set_headers(ex.headers or {})
        self._error_page(req, resp, ex.status_code, ex.title or "Error", ex.description or "")

    def _error_page(
        self, req: falcon.asgi.Request, resp: falcon.asgi.Response, status: int, title: str,
        detail: str,
    ) -> None:  # fmt: skip
        self.dashboard.page(req, resp, "error.html", status=status, title=title, detail=detail)


def build(
    settings: Settings,
    *,
    layer: JobLayer,
    keyring: Keyring | None,
    limits: ClientLimits,
    metrics: Metrics | None,
) -> Ui:
    """The dashboard for ``create_app`` (it is on: ``JOBPOOL_UI``)."""
    settings.state_dir.mkdir(parents=True, exist_ok=True)
    host = host_id(settings.state_dir)
    board = fleet.for_store(
        layer.store, state_dir=settings.state_dir, host_id=host, poll_s=settings.ui_poll_s
    )
    sessions = Sessions(
        keyring,
        board.secret,
        lifetime_s=settings.ui_session_s,
        prefix=PREFIX,
        open_paths=frozenset({f"{PREFIX}/login"}),
        anonymous=(ANONYMOUS, ANONYMOUS_ROLE),
    )
    # A snapshot serves a whole poll interval: however many pages are open, a worker makes
    # at most one per interval (its cost: bench/ui_cost.py).
    view = HostView(metrics, host_id=host, max_age_s=settings.ui_poll_s)
    dashboard = Dashboard(
        layer=layer, settings=settings, sessions=sessions, board=board, view=view,
        limits=limits, keyring=keyring,
    )  # fmt: skip
    return Ui(dashboard)
