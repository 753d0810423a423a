"""``POST /v1/fetch {"url", "method"}``: fetch a URL on the io pool, behind the SSRF guard."""

from __future__ import annotations

from typing import Annotated, Any, Literal, get_args

import falcon.asgi
import msgspec

from service import netguard
from service.api.http import decode_struct, read_json
from service.api.submitting import (
    answer_submitted,
    callback_url,
    idempotency_key,
    requested_start,
)
from service.config import Settings
from service.errors import Invalid
from service.jobs.layer import JobLayer

Method = Literal["GET", "HEAD"]
METHODS: tuple[str, ...] = get_args(Method)


class Fetch(msgspec.Struct, forbid_unknown_fields=True):
    """A URL to fetch on the io pool, behind the SSRF guard."""

    url: Annotated[
        str,
        msgspec.Meta(
            min_length=1,
            description="http or https; private, loopback and metadata addresses are "
            "refused (422 at submit, or the job fails after DNS).",
        ),
    ]
    method: Method = "GET"


_FETCH = msgspec.json.Decoder(Fetch)


def decode_fetch(body: bytes) -> Fetch:
    """The fetch request in ``body``: 400 if it is not JSON, 422 if it is not one."""
    return decode_struct(body, _FETCH, explain)


def explain(body: Any) -> None:
    """Raise :class:`Invalid` saying why ``body`` is not a :class:`Fetch`."""
    if not isinstance(body, dict) or not isinstance(body.get("url"), str):
        raise Invalid('the body must be an object with a "url" string')
    if body.get("method", "GET") not in METHODS:
        raise Invalid(f'"method" must be one of {", ".join(METHODS)}')
    extra = body.keys() - set(Fetch.__struct_encode_fields__)
    if extra:
        raise Invalid(f"unknown fields {sorted(extra)}")
    if not body["url"]:
        raise Invalid('"url" is empty')


def fetch_limits(s: Settings) -> dict[str, Any]:
    """The FetchLimits of these settings, as plain data stored with each job."""
    return {
        "connect_timeout_s": s.fetch_connect_timeout_ms / 1000,
        "read_timeout_s": s.fetch_read_timeout_ms / 1000,
        "deadline_s": s.fetch_deadline_ms / 1000,
        "max_bytes": s.fetch_max_bytes,
        "max_redirects": s.fetch_max_redirects,
        "store_body_max": s.fetch_store_body_max,
        "allow_private": s.fetch_allow_private,
        "max_url_length": s.fetch_max_url_length,
    }


class FetchResource:
    """Refuse at submit what can be decided without DNS (422); the job checks the rest."""

    def __init__(self, layer: JobLayer, settings: Settings) -> None:
        self.layer = layer
        self.settings = settings
        self.limits = fetch_limits(settings)

    async def on_post(self, req: falcon.asgi.Request, resp: falcon.asgi.Response) -> None:
        fetch = await read_json(req, self.settings.body_max, decode_fetch)
        url, method = fetch.url, fetch.method
        try:
            netguard.precheck(
                url,
                allow_private=self.settings.fetch_allow_private,
                max_length=self.settings.fetch_max_url_length,
            )
        except (netguard.BadURL, netguard.BlockedAddress) as ex:
            raise Invalid(f"refused URL: {ex}") from None
        start = requested_start(req, horizon_s=self.settings.schedule_max_s)
        key = idempotency_key(req, self.settings, "fetch", url, method)
        record = await self.layer.submit(
            "fetch", {"url": url, "method": method, "limits": self.limits},
            owner=req.context.owner, not_before=start, key=key,
            callback=callback_url(req, self.settings),
        )  # fmt: skip
        await answer_submitted(self.layer, req, resp, record, self.settings)
