"""Search providers for tests: real HTTP servers on loopback that follow (or break) the
provider contract of the README."""

from __future__ import annotations

import contextlib
import http.server
import threading
import time
import urllib.parse
from typing import Any

import orjson


class Provider:
    """``with Provider("ok", items=[...]) as p: p.url``; kinds: ok, slow, error, garbage,
    and hang (never answers; ``p.hung_up`` is set once the client closes the connection)."""

    def __init__(self, kind: str, *, items: list[dict[str, Any]] | None = None,
                 delay_s: float = 0.0) -> None:  # fmt: skip
        self.kind = kind
        self.items = items or []
        self.delay_s = delay_s
        self.queries: list[dict[str, list[str]]] = []
        self.hung_up = threading.Event()
        provider = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                provider.queries.append(
                    urllib.parse.parse_qs(urllib.parse.urlsplit(self.path).query)
                )
                if provider.delay_s:
                    time.sleep(provider.delay_s)
                if provider.kind == "hang":
                    self._hang()
                elif provider.kind == "error":
                    self._send(500, b"upstream exploded")
                elif provider.kind == "garbage":
                    self._send(200, b"{not json")
                else:
                    self._send(200, orjson.dumps({"items": provider.items}))

            def _send(self, status: int, body: bytes) -> None:
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                # The client may have given up on a slow answer: that is the point.
                with contextlib.suppress(BrokenPipeError):
                    self.wfile.write(body)

            def _hang(self) -> None:
                """Say nothing until the client closes the connection (60 s at most)."""
                self.connection.settimeout(60)
                with contextlib.suppress(OSError):
                    while self.connection.recv(1024):
                        pass
                    provider.hung_up.set()
                self.close_connection = True

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/search"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> Provider:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()
