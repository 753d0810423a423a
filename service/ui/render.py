"""Pages as HTML: the Jinja2 templates of this package, its static files, and the headers
every page carries.

Templates escape everything they are given (autoescape), so a job's error, a client's name
or a fetched page's text shows as text. The Content-Security-Policy lets a page run only
this package's own script and style (no inline script, nothing from another origin), and
no other site frame it.
"""

from __future__ import annotations

import datetime as dt
import hashlib
from importlib import resources
from typing import Any

import falcon.asgi
import jinja2

__all__ = ["Renderer", "StaticFiles", "iso", "page_headers"]

CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
)
#: A result shown by the dashboard gets no rights at all if a browser renders it.
RESULT_CSP = "default-src 'none'; img-src 'self'; style-src 'unsafe-inline'; sandbox"
STATIC_TYPES = {".css": "text/css; charset=utf-8", ".js": "text/javascript; charset=utf-8",
                ".svg": "image/svg+xml"}  # fmt: skip


def page_headers(resp: falcon.asgi.Response) -> None:
    """The headers of every dashboard answer: its policy, and nothing kept or leaked."""
    resp.set_header("Content-Security-Policy", CSP)
    resp.set_header("X-Content-Type-Options", "nosniff")
    resp.set_header("Referrer-Policy", "no-referrer")
    resp.set_header("Cache-Control", "no-store")


def iso(ts: float | None) -> str:
    """A Unix time as the dashboard writes it: UTC, to the second."""
    if ts is None:
        return "—"
    return dt.datetime.fromtimestamp(ts, tz=dt.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def seconds(value: float | None) -> str:
    """A duration for people: 850 ms, 3.2 s, 4 min 10 s."""
    if value is None:
        return "—"
    if value < 1:
        return f"{value * 1000:.0f} ms"
    if value < 60:
        return f"{value:.1f} s"
    minutes, rest = divmod(int(value), 60)
    return f"{minutes} min {rest} s"


class StaticFiles:
    """The package's static files, read once; each URL carries its content's hash, so a
    browser keeps a file until it changes."""

    def __init__(self) -> None:
        self.files: dict[str, tuple[bytes, str]] = {}
        folder = resources.files("service.ui") / "static"
        for item in folder.iterdir():
            suffix = "." + item.name.rsplit(".", 1)[-1]
            if item.is_file() and suffix in STATIC_TYPES:
                data = item.read_bytes()
                self.files[item.name] = (data, hashlib.sha256(data).hexdigest()[:12])

    def url(self, name: str) -> str:
        return f"/ui/static/{name}?v={self.files[name][1]}"


class Renderer:
    """Renders the package's templates into answers."""

    def __init__(self, static: StaticFiles, **globals_: Any) -> None:
        self.env = jinja2.Environment(
            loader=jinja2.PackageLoader("service.ui", "templates"),
            autoescape=True,
            undefined=jinja2.StrictUndefined,
            trim_blocks=True,
            lstrip_blocks=True,
        )
        self.env.globals.update(static=static.url, **globals_)
        self.env.filters.update(iso=iso, seconds=seconds)

    def page(
        self, resp: falcon.asgi.Response, template: str, *, status: int = 200, **context: Any
    ) -> None:
        page_headers(resp)
        resp.status = status
        resp.content_type = "text/html; charset=utf-8"
        resp.text = self.env.get_template(template).render(**context)
