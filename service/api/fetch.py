"""``POST /v1/fetch {"url", "method"}``: fetch a URL on the io pool, behind the SSRF guard."""

from __future__ import annotations

from typing import Any

import falcon.asgi

from service import netguard
from service.api.http import preferred_wait, read_json
from service.api.jobs import answer_submitted
from service.config import Settings
from service.errors import Invalid
from service.jobs.layer import JobLayer

METHODS = ("GET", "HEAD")


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
        body = await read_json(req, self.settings.body_max)
        if not isinstance(body, dict) or not isinstance(body.get("url"), str):
            raise Invalid('the body must be an object with a "url" string')
        method = body.get("method", "GET")
        if method not in METHODS:
            raise Invalid(f'"method" must be one of {", ".join(METHODS)}')
        extra = body.keys() - {"url", "method"}
        if extra:
            raise Invalid(f"unknown fields {sorted(extra)}")
        url: str = body["url"]
        try:
            netguard.precheck(
                url,
                allow_private=self.settings.fetch_allow_private,
                max_length=self.settings.fetch_max_url_length,
            )
        except (netguard.BadURL, netguard.BlockedAddress) as ex:
            raise Invalid(f"refused URL: {ex}") from None
        record = await self.layer.submit(
            "fetch", {"url": url, "method": method, "limits": self.limits},
            owner=req.context.owner,
        )  # fmt: skip
        wait_s = preferred_wait(req, self.settings.wait_max_s)
        await answer_submitted(self.layer, req, resp, record, wait_s)
