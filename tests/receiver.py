"""A real callback receiver on loopback: it verifies each POST with the ``standardwebhooks``
package's own verifier, records it, and answers as a test scripts it.

    with Receiver(secret) as rx:
        ...submit with Job-Callback: rx.url...
        (got,) = await rx.arrived(1)
        assert got.verified and got.json["state"] == "succeeded"

``answers`` is the statuses to answer in turn (then 200), with their headers; ``hold()``
keeps every request waiting for an answer until ``release()``; ``stop()`` and ``start()``
again keep the port (a receiver down for a while).
"""

from __future__ import annotations

import asyncio
import json
import socket
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any, Self

from standardwebhooks import Webhook
from standardwebhooks.webhooks import WebhookVerificationError

#: A bound so a broken test stops by itself, not a speed check.
WAIT_S = 60.0


@dataclass
class Received:
    """One POST as the receiver saw it."""

    headers: dict[str, str]
    body: bytes
    verified: bool
    #: The secrets (by position in ``Receiver.secrets``) whose verifier accepted it.
    verified_by: list[int] = field(default_factory=list)
    at: float = 0.0

    @property
    def json(self) -> Any:
        return json.loads(self.body)

    @property
    def id(self) -> str:
        return self.headers["webhook-id"]


class Receiver:
    """A ThreadingHTTPServer on 127.0.0.1 that verifies Standard Webhooks signatures."""

    def __init__(self, *secrets: str, port: int = 0) -> None:
        self.secrets = list(secrets)
        self.port = port
        self.received: list[Received] = []
        #: (status, headers) to answer in turn; 200 once they are used up.
        self.answers: list[tuple[int, dict[str, str]]] = []
        self._cond = threading.Condition()
        self._held = threading.Event()
        self._held.set()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hook"

    def start(self) -> Self:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length", "0"))
                body = self.rfile.read(length)
                headers = {k.lower(): v for k, v in self.headers.items()}
                receiver._record(headers, body)
                receiver._held.wait(WAIT_S)
                status, extra = receiver._next_answer()
                self.send_response(status)
                for name, value in extra.items():
                    self.send_header(name, value)
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"ok")

            def log_message(self, *args: Any) -> None:
                pass

        server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler, bind_and_activate=False)
        server.daemon_threads = True
        server.allow_reuse_address = True
        server.socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        server.server_bind()
        server.server_activate()
        self.port = server.server_address[1]
        self._server = server
        self._thread = threading.Thread(target=server.serve_forever, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Close the listening socket (connections are refused until :meth:`start`)."""
        self._held.set()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._thread is not None:
            self._thread.join(10)
            self._thread = None

    def hold(self) -> None:
        """Keep every request waiting for its answer until :meth:`release`."""
        self._held.clear()

    def release(self) -> None:
        self._held.set()

    def _record(self, headers: dict[str, str], body: bytes) -> None:
        verified_by = []
        for n, secret in enumerate(self.secrets):
            try:
                Webhook(secret).verify(body, headers, json_parse=False)
            except WebhookVerificationError:
                continue
            verified_by.append(n)
        got = Received(headers, body, bool(verified_by), verified_by, time.time())
        with self._cond:
            self.received.append(got)
            self._cond.notify_all()

    def _next_answer(self) -> tuple[int, dict[str, str]]:
        with self._cond:
            return self.answers.pop(0) if self.answers else (200, {})

    def wait_for(self, count: int, within: float = WAIT_S) -> list[Received]:
        """The first ``count`` POSTs, once they arrived; fail the test if they do not."""
        deadline = time.monotonic() + within
        with self._cond:
            while len(self.received) < count:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(f"{len(self.received)} of {count} callbacks arrived")
                self._cond.wait(left)
            return self.received[:count]

    async def arrived(self, count: int, within: float = WAIT_S) -> list[Received]:
        """:meth:`wait_for` from a coroutine: the event loop (an in-process app) runs on."""
        return await asyncio.to_thread(self.wait_for, count, within)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        kind: type[BaseException] | None,
        value: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
