"""The dashboard's routes: each a noun with ``on_get``/``on_post``, given what it needs.

Every route is under ``/ui``, behind the same middleware as the API (request limits, the
client's rate, the access log); who asks comes from the session (``service.ui.session``).
A client sees its own jobs; an operator every client's, and the host's panels.
"""

from __future__ import annotations

import inspect
import json
import re
import urllib.parse
from typing import Any

import falcon
import falcon.asgi
import orjson

from service import ids
from service.api.listing import FILTERS, list_records
from service.api.results import result_body
from service.clients.limits import ClientLimits
from service.config import Settings
from service.errors import Conflict, Invalid, JobNotFound, NotFound, Unauthorized
from service.jobs.layer import JobLayer
from service.jobs.record import JobRecord
from service.jobs.state import JobState, is_final
from service.keys import Keyring
from service.ui.fleet import Board
from service.ui.host import HostView
from service.ui.render import RESULT_CSP, STATIC_TYPES, Renderer, StaticFiles, page_headers
from service.ui.session import Sessions, Visitor

__all__ = ["PREFIX", "Dashboard", "routes"]

PREFIX = "/ui"
#: Characters of a JSON result the job page shows (the whole result is a link away).
RESULT_SHOWN_MAX = 20_000
#: Seconds a cancel from the dashboard waits for a running job to stop before the page
#: comes back (it then shows "stopping", and refreshes until the job has ended).
CANCEL_WAIT_S = 2.0
#: What a job page may say after a form: ``?note=...``.
NOTES = {
    "cancelled": "The job was cancelled.",
    "stopping": "The job was asked to stop; this page follows it until it ends.",
    "retried": "A new job was submitted with the same arguments: this one.",
}
#: ``<input type=datetime-local>`` sends minutes (or seconds) without an offset: UTC here.
LOCAL_TIME = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d(:\d\d(\.\d+)?)?")
IMAGE_TYPES = ("image/png", "image/jpeg", "image/webp", "image/gif")


def _visitor(req: falcon.asgi.Request) -> Visitor:
    visitor: Visitor = req.context.visitor
    return visitor


def _as_rfc3339(value: str) -> str:
    """A time from the form's date-time field (UTC, no offset) in RFC 3339; anything else
    as given, for the listing to accept or refuse."""
    if LOCAL_TIME.fullmatch(value):
        return (value + ":00" if len(value) == 16 else value) + "Z"
    return value


def _safe_next(raw: object) -> str:
    """Where to go after the login: a dashboard path of this site, nothing else."""
    ok = isinstance(raw, str) and raw.startswith(PREFIX) and "//" not in raw and "\\" not in raw
    return raw if ok and isinstance(raw, str) else PREFIX


class Dashboard:
    """What the pages share."""

    def __init__(
        self,
        *,
        layer: JobLayer,
        settings: Settings,
        sessions: Sessions,
        board: Board,
        view: HostView,
        limits: ClientLimits,
        keyring: Keyring | None,
    ) -> None:
        self.layer = layer
        self.settings = settings
        self.sessions = sessions
        self.board = board
        self.view = view
        self.limits = limits
        self.keyring = keyring
        self.static = StaticFiles()
        self.render = Renderer(self.static, poll_s=settings.ui_poll_s, prefix=PREFIX)

    def page(
        self,
        req: falcon.asgi.Request,
        resp: falcon.asgi.Response,
        template: str,
        *,
        status: int = 200,
        **context: Any,
    ) -> None:
        visitor = getattr(req.context, "visitor", None)
        logins = self.keyring is not None
        self.render.page(resp, template, status=status, visitor=visitor, logins=logins,
                         path=req.path, **context)  # fmt: skip

    async def find(self, req: falcon.asgi.Request, job_id: str) -> JobRecord:
        """The visitor's job (any job, for an operator), or 404 as for an unknown id."""
        record = await self.layer.get(job_id) if ids.is_valid(job_id) else None
        visitor = _visitor(req)
        if record is None or not (visitor.is_operator or record.owner == visitor.client):
            raise JobNotFound(f"no job {job_id!r}")
        req.context.job_id = record.id
        return record

    async def inflight(self, client: str) -> int:
        """Jobs of ``client`` in flight where its limits hold (host, or fleet: asks Redis)."""
        count = self.limits.inflight(client)
        return int(await count) if inspect.isawaitable(count) else int(count)

    async def form(self, req: falcon.asgi.Request) -> dict[str, Any]:
        media = await req.get_media()
        return media if isinstance(media, dict) else {}


class Login:
    """GET the form; POST a key: a session cookie, and on to the page asked for."""

    def __init__(self, ui: Dashboard) -> None:
        self.ui = ui

    async def on_get(self, req: falcon.asgi.Request, resp: falcon.asgi.Response) -> None:
        target = _safe_next(req.get_param("next"))
        if self.ui.keyring is None or await self.ui.sessions.visitor(req) is not None:
            raise falcon.HTTPSeeOther(target)
        self.ui.page(req, resp, "login.html", target=target, error=None)

    async def on_post(self, req: falcon.asgi.Request, resp: falcon.asgi.Response) -> None:
        self.ui.sessions.check_origin(req)
        form = await self.ui.form(req)
        target = _safe_next(form.get("next"))
        key = form.get("key")
        try:
            _, cookie = await self.ui.sessions.login(key if isinstance(key, str) else "")
        except Unauthorized:
            self.ui.page(req, resp, "login.html", status=401, target=target,
                         error="That key is not valid.")  # fmt: skip
            return
        self.ui.sessions.set_cookie(resp, cookie)
        raise falcon.HTTPSeeOther(target)


class Logout:
    """POST: the session cookie is cleared."""

    def __init__(self, ui: Dashboard) -> None:
        self.ui = ui

    async def on_post(self, req: falcon.asgi.Request, resp: falcon.asgi.Response) -> None:
        form = await self.ui.form(req)
        self.ui.sessions.check_form(req, form.get("csrf"), _visitor(req))
        self.ui.sessions.clear_cookie(resp)
        raise falcon.HTTPSeeOther(f"{PREFIX}/login")


class Overview:
    """GET the live panels (the figures come from :class:`Live`)."""

    def __init__(self, ui: Dashboard) -> None:
        self.ui = ui

    async def on_get(self, req: falcon.asgi.Request, resp: falcon.asgi.Response) -> None:
        self.ui.page(req, resp, "overview.html", title="Overview")


class Live:
    """GET the figures an open overview polls: every host's (operators) and the clients'."""

    def __init__(self, ui: Dashboard) -> None:
        self.ui = ui

    async def on_get(self, req: falcon.asgi.Request, resp: falcon.asgi.Response) -> None:
        visitor = _visitor(req)
        mine = await self.ui.view.snapshot()
        # A client's counts too are the fleet's (its requests land on any host).
        hosts = await self.ui.board.hosts(mine)
        if visitor.is_operator:
            names = set(self.ui.keyring.clients()) if self.ui.keyring else {visitor.client}
            for host in hosts:
                names.update(host.get("clients", {}))
        else:
            names = {visitor.client}
        clients = []
        for name in sorted(names):
            counts = [h.get("clients", {}).get(name, {}) for h in hosts]
            clients.append({
                "client": name,
                "requests": sum(c.get("requests", 0) for c in counts),
                "throttled": sum(c.get("throttled", 0) for c in counts),
                "inflight": await self.ui.inflight(name),
            })  # fmt: skip
        answer: dict[str, Any] = {"at": mine["at"], "clients": clients}
        if visitor.is_operator:
            answer["hosts"] = hosts
        page_headers(resp)
        resp.content_type = "application/json"
        resp.data = orjson.dumps(answer)


class Jobs:
    """GET the visitor's jobs (an operator's: everyone's, or one client's), filtered."""

    def __init__(self, ui: Dashboard) -> None:
        self.ui = ui

    async def on_get(self, req: falcon.asgi.Request, resp: falcon.asgi.Response) -> None:
        visitor = _visitor(req)
        shown, params = self._params(req)
        owner: str | None = visitor.client
        if visitor.is_operator:
            owner = shown.get("client") or None
        error, cursor, status = None, None, 200
        records: list[JobRecord] = []
        try:
            records, cursor = await list_records(self.ui.layer, owner, params, self.ui.settings)
        except Invalid as ex:
            error, status = ex.detail, 422
        clients = sorted(self.ui.keyring.clients()) if self.ui.keyring else []
        self.ui.page(
            req, resp, "jobs.html", status=status, title="Jobs", jobs=records, error=error,
            shown=shown, states=[s.value for s in JobState], clients=clients,
            next_url=self._next_url(req, cursor), live=not params.get("cursor"),
        )  # fmt: skip

    @staticmethod
    def _params(req: falcon.asgi.Request) -> tuple[dict[str, Any], dict[str, str]]:
        """What the form shows, and the listing's query parameters."""
        states = req.get_param_as_list("state") or []
        shown: dict[str, Any] = {"state": [s for part in states for s in part.split(",") if s]}
        for name in ("job", "client", "created_after", "created_before", "cursor"):
            shown[name] = (req.get_param(name) or "").strip()
        params: dict[str, str] = {}
        if shown["state"]:
            params["state"] = ",".join(shown["state"])
        for name in FILTERS[1:]:
            if shown[name]:
                params[name] = _as_rfc3339(shown[name])
        if shown["cursor"]:
            params["cursor"] = shown["cursor"]
        params["limit"] = "50"
        return shown, params

    @staticmethod
    def _next_url(req: falcon.asgi.Request, cursor: str | None) -> str | None:
        if cursor is None:
            return None
        query = [(k, v) for k, v in urllib.parse.parse_qsl(req.query_string) if k != "cursor"]
        return f"{PREFIX}/jobs?" + urllib.parse.urlencode([*query, ("cursor", cursor)])


class Job:
    """GET a job's page; POST ``/cancel`` or ``/retry`` from its buttons."""

    def __init__(self, ui: Dashboard) -> None:
        self.ui = ui

    async def on_get(
        self, req: falcon.asgi.Request, resp: falcon.asgi.Response, job_id: str
    ) -> None:
        await self._show(req, resp, await self.ui.find(req, job_id))

    async def _show(
        self,
        req: falcon.asgi.Request,
        resp: falcon.asgi.Response,
        record: JobRecord,
        *,
        error: str | None = None,
        status: int = 200,
    ) -> None:
        result_kind, result_text = "none", None
        result = record.result
        if isinstance(result, dict) and isinstance(result.get("data"), bytes | bytearray):
            kind = str(result.get("content_type") or "")
            result_kind = "image" if kind in IMAGE_TYPES else "binary"
        elif result is not None:
            text = json.dumps(result, indent=2, ensure_ascii=False, default=repr)
            result_kind = "json"
            result_text = text[:RESULT_SHOWN_MAX]
            if len(text) > RESULT_SHOWN_MAX:
                result_text += "\n…"
        note = NOTES.get(req.get_param("note") or "")
        doc = record.document()
        self.ui.page(
            req, resp, "job.html", status=status, title=f"Job {record.id}", job=record, doc=doc,
            final=is_final(record.state), result_kind=result_kind, result_text=result_text,
            note=note, error=error,
        )  # fmt: skip

    async def on_post_cancel(
        self, req: falcon.asgi.Request, resp: falcon.asgi.Response, job_id: str
    ) -> None:
        record = await self._checked(req, job_id)
        if is_final(record.state):
            await self._show(req, resp, record, status=409,
                             error=f"The job had already ended {record.state.value}.")  # fmt: skip
            return
        after = await self.ui.layer.cancel(job_id, stop_wait_s=CANCEL_WAIT_S)
        if after is None:
            raise JobNotFound(f"no job {job_id!r}")
        note = "cancelled" if after.state is JobState.CANCELLED else "stopping"
        if is_final(after.state) and after.state is not JobState.CANCELLED:
            note = ""
        raise falcon.HTTPSeeOther(f"{PREFIX}/jobs/{job_id}?note={note}")

    async def on_post_retry(
        self, req: falcon.asgi.Request, resp: falcon.asgi.Response, job_id: str
    ) -> None:
        record = await self._checked(req, job_id)
        try:
            again = await self.ui.layer.rerun(job_id)
        except Conflict as ex:
            await self._show(req, resp, record, error=ex.detail, status=409)
            return
        if again is None:
            raise JobNotFound(f"no job {job_id!r}")
        raise falcon.HTTPSeeOther(f"{PREFIX}/jobs/{again.id}?note=retried")

    async def _checked(self, req: falcon.asgi.Request, job_id: str) -> JobRecord:
        form = await self.ui.form(req)
        self.ui.sessions.check_form(req, form.get("csrf"), _visitor(req))
        return await self.ui.find(req, job_id)


class JobResult:
    """GET a finished job's result: an image as itself (the job page shows it), anything
    else as JSON; never given rights to run in the dashboard's origin."""

    def __init__(self, ui: Dashboard) -> None:
        self.ui = ui

    async def on_get(
        self, req: falcon.asgi.Request, resp: falcon.asgi.Response, job_id: str
    ) -> None:
        record = await self.ui.find(req, job_id)
        if record.result is None:
            raise Conflict(f"job {job_id} is {record.state.value} and has no result")
        result_body(resp, record)
        page_headers(resp)
        resp.set_header("Content-Security-Policy", RESULT_CSP)
        inline = resp.content_type in IMAGE_TYPES or resp.content_type == "application/json"
        disposition = "inline" if inline else "attachment"
        resp.set_header("Content-Disposition", f'{disposition}; filename="{record.id}"')


class Static:
    """GET the dashboard's own CSS and script (no login needed: they hold no data)."""

    def __init__(self, ui: Dashboard) -> None:
        self.ui = ui

    async def on_get(self, req: falcon.asgi.Request, resp: falcon.asgi.Response, name: str) -> None:
        found = self.ui.static.files.get(name)
        if found is None:
            raise NotFound(f"no static file {name!r}")
        data, digest = found
        resp.content_type = STATIC_TYPES["." + name.rsplit(".", 1)[-1]]
        resp.set_header("X-Content-Type-Options", "nosniff")
        resp.etag = digest
        if req.get_param("v") == digest:
            resp.cache_control = ["public", "max-age=31536000", "immutable"]
        else:
            resp.cache_control = ["no-cache"]
        if req.get_header("If-None-Match") == f'"{digest}"':
            resp.status = 304
            return
        resp.data = data


def routes(app: falcon.asgi.App[Any, Any], ui: Dashboard) -> None:
    """Every route of the dashboard."""
    job = Job(ui)
    app.add_route(PREFIX, Overview(ui))
    app.add_route(f"{PREFIX}/live.json", Live(ui))
    app.add_route(f"{PREFIX}/login", Login(ui))
    app.add_route(f"{PREFIX}/logout", Logout(ui))
    app.add_route(f"{PREFIX}/jobs", Jobs(ui))
    app.add_route(f"{PREFIX}/jobs/{{job_id}}", job)
    app.add_route(f"{PREFIX}/jobs/{{job_id}}/cancel", job, suffix="cancel")
    app.add_route(f"{PREFIX}/jobs/{{job_id}}/retry", job, suffix="retry")
    app.add_route(f"{PREFIX}/jobs/{{job_id}}/result", JobResult(ui))
    app.add_route(f"{PREFIX}/static/{{name}}", Static(ui))
