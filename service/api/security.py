"""Security middleware: request-shape limits, API keys (who is asking), per-client limits.

In order, for every request (1 and 2 in one middleware, :class:`Gate`: each middleware call
costs an await per request):

1. :class:`RequestLimits` refuses a path and query over ``JOBPOOL_URL_MAX`` (414) or with
   more than ``JOBPOOL_QUERY_PARAMS_MAX`` parameters (400). Header sizes and counts are
   gunicorn's, before the app sees anything (``gunicorn.conf.py``).
2. :class:`Authenticate` finds the client of the ``Authorization: Bearer`` key (401 with
   ``WWW-Authenticate`` otherwise), sets ``req.context.owner`` to its name and
   ``req.context.role`` to its key's role, and takes one token of the client's request rate
   (429 with ``Retry-After``): host-wide, or fleet-wide with the Redis store. The health
   routes stay open: the load balancer checks them without a key. The dashboard's pages
   (``JOBPOOL_UI``) are the one place where a session cookie stands for the key instead
   (:class:`PageAuth`); the API never reads cookies, so no other site can act through them.
3. :class:`BodyLimit`, once the route is known, refuses a declared body over the route's
   limit (413) before anything reads it: a resource's ``body_max`` attribute (named in the
   answer by its ``body_max_setting``), else ``JOBPOOL_BODY_MAX``; GET, HEAD, DELETE and
   OPTIONS take no body.

The per-client cap on jobs in flight is the job layer's (it knows when a job ends); see
:mod:`service.clients.limits`.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any, Protocol

import falcon.asgi

from service.clients.limits import ClientLimits
from service.config import Settings
from service.errors import BadRequest, TooLarge, UriTooLong
from service.keys import Keyring, Role

log = logging.getLogger(__name__)

#: Routes answered without a key: liveness and readiness, for the load balancer.
OPEN_PATHS = frozenset({"/healthz", "/readyz", "/openapi.json"})  # the LB; the API's doc
#: The owner of every job when ``JOBPOOL_AUTH=off``.
ANONYMOUS = "anonymous"
#: Its role: with no keys, whoever reaches the service may see everything (local use).
ANONYMOUS_ROLE: Role = "operator"
BODYLESS = frozenset({"GET", "HEAD", "DELETE", "OPTIONS"})


class RequestLimits:
    """Path plus query within ``url_max`` bytes; at most ``params_max`` query parameters."""

    def __init__(self, *, url_max: int, params_max: int) -> None:
        self.url_max = url_max
        self.params_max = params_max

    def check(self, req: falcon.asgi.Request) -> None:
        scope = req.scope
        query: bytes = scope.get("query_string", b"")
        path = scope.get("raw_path") or req.path.encode()
        if len(path) + len(query) > self.url_max:
            raise UriTooLong(
                f"the path and query have {len(path) + len(query)} bytes;"
                f" the limit is {self.url_max} (JOBPOOL_URL_MAX)"
            )
        if query and query.count(b"&") >= self.params_max:
            raise BadRequest(
                f"more than {self.params_max} query parameters (JOBPOOL_QUERY_PARAMS_MAX)"
            )


class PageAuth(Protocol):
    """Who is asking for a page of the dashboard: its session, not a Bearer header."""

    def covers(self, path: str) -> bool:
        """Whether ``path`` is one of the dashboard's."""

    async def identify(self, req: falcon.asgi.Request) -> tuple[str, Role] | None:
        """(client, role) of the request's session; None for a page open to all (the login
        form, static files); raises :class:`~service.errors.Unauthorized` otherwise."""


class Authenticate:
    """``req.context.owner``: the client whose key the request carries; then its rate."""

    def __init__(
        self,
        keyring: Keyring | None,
        limits: ClientLimits,
        *,
        open_paths: Iterable[str] = OPEN_PATHS,
        pages: PageAuth | None = None,
    ) -> None:
        self.keyring = keyring
        self.limits = limits
        self.open_paths = frozenset(open_paths)
        self.pages = pages

    async def check(self, req: falcon.asgi.Request) -> None:
        if req.path in self.open_paths:
            return
        role: Role
        if self.pages is not None and self.pages.covers(req.path):
            who = await self.pages.identify(req)
            if who is None:
                return
            owner, role = who
        elif self.keyring is None:
            owner, role = ANONYMOUS, ANONYMOUS_ROLE
        else:
            entry = self.keyring.identify(req.get_header("Authorization"))
            owner, role = entry.client, entry.role
        req.context.owner = owner
        req.context.role = role
        await self.limits.take(owner)


class Gate:
    """The checks of every request, in order: its shape, then its key and its client's
    rate (one middleware call for both: each call costs an await per request)."""

    def __init__(self, limits: RequestLimits, authenticate: Authenticate) -> None:
        self.limits = limits
        self.authenticate = authenticate

    async def process_request(self, req: falcon.asgi.Request, resp: falcon.asgi.Response) -> None:
        self.limits.check(req)
        await self.authenticate.check(req)


class BodyLimit:
    """A body declared larger than its route takes is refused before it is read."""

    def __init__(self, *, default_max: int) -> None:
        self.default_max = default_max

    async def process_resource(
        self,
        req: falcon.asgi.Request,
        resp: falcon.asgi.Response,
        resource: object,
        params: dict[str, Any],
    ) -> None:
        length = req.content_length
        if not length or resource is None:
            return
        if not hasattr(resource, f"on_{req.method.lower()}"):
            return  # the route has no such method: falcon answers 405, whatever the body
        if req.method in BODYLESS:
            raise TooLarge(f"{req.method} takes no body; this one has {length} bytes")
        limit: int = getattr(resource, "body_max", self.default_max)
        if length > limit:
            setting = getattr(resource, "body_max_setting", "JOBPOOL_BODY_MAX")
            raise TooLarge(f"the body has {length} bytes; the limit is {limit} ({setting})")


def middleware(
    settings: Settings,
    keyring: Keyring | None,
    limits: ClientLimits,
    *,
    pages: PageAuth | None = None,
) -> list[object]:
    """The security middleware, in order, for ``create_app`` (``pages``: the dashboard's
    sessions, when it is on)."""
    if keyring is None:
        log.warning(
            "JOBPOOL_AUTH=off: every request is served without an API key, as client %r;"
            " for local use only",
            ANONYMOUS,
        )
    return [
        Gate(
            RequestLimits(url_max=settings.url_max, params_max=settings.query_params_max),
            # With a metrics listener of its own (not on the load balancer), Prometheus
            # scrapes it without a key; on the API port /metrics is then 404.
            Authenticate(
                keyring,
                limits,
                open_paths=OPEN_PATHS | ({"/metrics"} if settings.metrics_bind else set()),
                pages=pages,
            ),
        ),
        BodyLimit(default_max=settings.body_max),
    ]
