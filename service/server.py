"""The HTTP server layer: gunicorn 27's asgi worker, with jobpool's deadlines and answers.

``gunicorn.conf.py`` names :class:`Worker` as its worker class. gunicorn still parses HTTP/1.1
(its pure Python parser, with the request line and header limits), keeps connections alive,
runs uvloop, the ASGI lifespan and the signal handling. On top of that:

- **Deadlines.** A request's line and headers must arrive within ``JOBPOOL_HEADER_TIMEOUT_S``
  of its first byte (of the connection's opening, for its first request): past it the
  answer is 408 and the connection closes (one that sent nothing is closed in silence).
  While a body is awaited, each ``JOBPOOL_BODY_TIMEOUT_S`` must bring
  ``JOBPOOL_BODY_MIN_RATE`` bytes a second (or the rest of the body, if less): else the
  app's next read raises :class:`~service.errors.RequestTimeout` (408). Idle keep-alive
  stays ``JOBPOOL_KEEPALIVE_S``.
- **A body is never taken for whole unless it is.** A read that finds the client gone, or
  the chunked framing broken, raises (400) instead of ending the body early, so a body
  short of its length never becomes a job.
- **The route decides before any body is read.** Falcon's first ``receive()`` (before any
  middleware) does not wait for a body that has not come, nor sends ``100 Continue``: that
  goes out when a resource reads, so a declared body over the route's limit gets its 413 at
  once, and a client still waiting for the 100 is told ``Connection: close``.
- **After the answer**, a body the app did not read is read and dropped, up to
  ``JOBPOOL_DRAIN_MAX`` bytes and under the body deadline, so the client reads the answer
  rather than a reset (and the connection is kept if the body ended).
- **Its own answers** (what the parser refuses: 400, 414, 431, 501; HTTP/1.1 without
  ``Host``: 400; the header deadline: 408) are application/problem+json with an
  ``X-Request-ID``, counted and logged by the app's :class:`~service.api.middleware.Telemetry`,
  which leaves its ``record`` in the lifespan state for this module.
- **Stopping.** A stop signal that comes while the worker boots is kept, not lost; on a
  stop, idle kept-alive connections close at once instead of holding the worker for the
  graceful timeout.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import signal
import time
from collections.abc import Callable
from http import HTTPStatus
from typing import Any

from gunicorn.arbiter import Arbiter
from gunicorn.asgi.lifespan import LifespanManager, LifespanStartupFailed
from gunicorn.asgi.parser import ParseError
from gunicorn.asgi.protocol import ASGIProtocol, BodyReceiver
from gunicorn.workers.gasgi import ASGIWorker

from service.api.middleware import TELEMETRY_STATE
from service.api.problems import PROBLEM, problem_document
from service.config import Settings
from service.errors import BadRequest, IncompleteBody, RequestTimeout, ServiceError

__all__ = ["Protocol", "Receiver", "Worker"]

_CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"
#: Characters of a parser's message, or of a path, kept in an answer or a log line.
_ECHO_MAX = 200
#: What each of the parser's statuses is about, with the setting behind it.
_DETAILS = {
    414: "the request line is over JOBPOOL_REQUEST_LINE_MAX bytes",
    431: "more header fields than JOBPOOL_HEADER_COUNT_MAX,"
    " or one over JOBPOOL_HEADER_BYTES_MAX bytes",
    501: "the request's Transfer-Encoding is not one this server decodes (only chunked)",
}


class MissingHost(ParseError):  # type: ignore[misc]  # gunicorn is untyped
    """RFC 9112 section 3.2: a server must answer 400 to an HTTP/1.1 request without Host."""


class Receiver(BodyReceiver):  # type: ignore[misc]
    """The ASGI ``receive`` of one HTTP/1 request: gunicorn's, with jobpool's body rules.

    gunicorn's own waits for a body at most ``cfg.timeout`` (then reports a disconnect, which
    Falcon takes for the end of the body); this one waits until bytes come, the protocol's
    body deadline fails it, or the client goes, and raises in the last two cases.
    """

    # gunicorn's, read and written here (its class is untyped).
    expect_continue: bool
    protocol: Protocol
    _chunks: Any
    _complete: bool
    _body_finished: bool
    _closed: bool
    _waiter: asyncio.Future[None] | None

    def __init__(self, request: Any, protocol: Protocol) -> None:
        super().__init__(request, protocol)
        #: The client holds its body back until it sees our 100 (none sent, none received).
        self.awaiting_continue: bool = self.expect_continue
        #: Why the body cannot be read to its end; raised by every later read.
        self.failure: ServiceError | None = None
        self.received = 0
        self.started = False  # the app has had its first answer

    def feed(self, chunk: bytes) -> None:
        if chunk:
            self.awaiting_continue = False
            self.received += len(chunk)
        super().feed(chunk)

    def fail(self, failure: ServiceError) -> None:
        """No read of this body can succeed any more: say why to the one waiting, if any."""
        if self.failure is None:
            self.failure = failure
        self._wake_waiter()

    async def receive(self) -> dict[str, Any]:
        if self._chunks:
            self.started = True
            return self._pop_chunk()  # type: ignore[no-any-return]
        if self._complete:
            self.started = True
            if self._body_finished:  # ASGI: after the body, wait for the client to leave
                await self._wait_for_disconnect()
                return {"type": "http.disconnect"}
            self._body_finished = True
            return {"type": "http.request", "body": b"", "more_body": False}
        if not self.started:
            # Falcon's first receive, before any middleware or route: a body that has not
            # come yet is not waited for here (nor asked for with a 100).
            self.started = True
            if self._client_gone:
                return {"type": "http.disconnect"}
            return {"type": "http.request", "body": b"", "more_body": True}
        while True:
            if self.failure is not None:
                raise self.failure
            if self._client_gone:
                raise IncompleteBody(
                    f"the connection closed after {self.received} bytes of the body"
                )
            if self.awaiting_continue:
                self.awaiting_continue = self.expect_continue = False
                self.protocol._safe_write(_CONTINUE)
            self.protocol.start_body_clock()
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None
            if self._chunks:
                return self._pop_chunk()  # type: ignore[no-any-return]
            if self._complete:
                self._body_finished = True
                return {"type": "http.request", "body": b"", "more_body": False}

    @property
    def _client_gone(self) -> bool:
        return bool(self._closed or self.protocol._closed)


class Protocol(ASGIProtocol):  # type: ignore[misc]
    """One connection: gunicorn's HTTP/1 protocol with jobpool's deadlines and answers."""

    # gunicorn's, read and written here (its class is untyped).
    worker: Worker
    _body_receiver: Any
    _current_request: Any
    _callback_parser: Any
    _closed: bool
    _reading_paused: bool

    def __init__(self, worker: Worker) -> None:
        super().__init__(worker)
        s: Settings = worker.settings
        self._header_timeout_s = s.header_timeout_s
        self._body_window_s = s.body_timeout_s
        self._body_window_bytes = s.body_min_rate * s.body_timeout_s
        self._drain_max = s.drain_max
        self._header_clock: asyncio.TimerHandle | None = None
        self._partial_request = False  # bytes of a request whose headers are not complete
        self._request_began = 0.0
        self._body_clock: asyncio.TimerHandle | None = None
        self._window_start_bytes = 0  # bytes of the body received when the window began
        self._paused_in_window = False

    # -- connection life -----------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        self.worker.connections.add(self)
        if self._callback_parser is not None:  # HTTP/1 (the only protocol jobpool serves)
            self._arm_header_clock()

    def connection_lost(self, exc: Exception | None) -> None:
        self.worker.connections.discard(self)
        self._stop_header_clock()
        self._stop_body_clock()
        super().connection_lost(exc)

    def close_if_idle(self) -> None:
        """Close the connection if it waits between requests (none begun, none in hand),
        as its keep-alive timeout would; one that is busy closes after its answer."""
        if not self._closed and self._current_request is None and not self._partial_request:
            self._close_transport()
            self._request_ready.set()  # the connection loop sees the close and ends

    # -- the header deadline -------------------------------------------------------------

    def _arm_header_clock(self) -> None:
        if self._header_clock is None:
            self._header_clock = self.worker.loop.call_later(
                self._header_timeout_s, self._header_deadline
            )

    def _stop_header_clock(self) -> None:
        if self._header_clock is not None:
            self._header_clock.cancel()
            self._header_clock = None

    def _header_deadline(self) -> None:
        self._header_clock = None
        if self._closed or self._current_request is not None:
            return
        if self._partial_request:
            self._send_error_response(
                408,
                f"the request line and headers did not arrive within {self._header_timeout_s}"
                " s (JOBPOOL_HEADER_TIMEOUT_S)",
            )
        self._close_transport()
        self._request_ready.set()  # the connection loop sees the close and ends

    def _arm_keepalive_timer(self) -> None:
        # Idle between requests: the keep-alive timeout, unless part of the next request
        # came already (pipelined behind the last one); its header deadline runs then.
        if self._header_clock is None:
            super()._arm_keepalive_timer()

    def _feed_callback_parser(self, data: bytes) -> bool:
        if self._current_request is None:
            # Bytes of a request whose headers are not all here: no longer idle.
            self._cancel_keepalive_timer()
            if not self._partial_request:
                self._partial_request = True
                self._request_began = time.perf_counter()
            go_on = bool(super()._feed_callback_parser(data))
            if go_on and self._current_request is None and not self._closed:
                self._arm_header_clock()  # the headers are not complete yet
            return go_on
        receiver = self._body_receiver
        if receiver is None or receiver._complete:
            return bool(super()._feed_callback_parser(data))
        # Within a body the app is reading: a broken chunk framing is the app's to answer
        # (400, counted and logged as usual); nothing more is read of this connection.
        try:
            self._callback_parser.feed(data)
        except Exception as ex:  # whichever parser (gunicorn_h1c raises classes of its own)
            receiver.fail(BadRequest(f"the body's chunked framing is broken: {_echo(str(ex))}"))
            self._pause_reading()
            return False
        return True

    def _on_headers_complete(self) -> bool:
        parser = self._callback_parser
        if parser.http_version >= (1, 1):
            for name, _ in parser.headers:
                if name == b"host" or name.lower() == b"host":
                    break
            else:
                raise MissingHost("an HTTP/1.1 request needs a Host header (RFC 9112 section 3.2)")
        self._stop_header_clock()
        self._partial_request = False
        skip = super()._on_headers_complete()
        # gunicorn's receiver, replaced before anything reads it: jobpool's rules.
        if self._body_receiver is not None:
            self._body_receiver = Receiver(self._current_request, self)
        return bool(skip)

    # -- the body deadline ---------------------------------------------------------------

    def start_body_clock(self) -> None:
        """Measure the body's rate from now, window after window, until it is complete."""
        receiver = self._body_receiver
        if self._body_clock is None and receiver is not None:
            self._window_start_bytes = receiver.received
            self._paused_in_window = self._reading_paused
            self._body_clock = self.worker.loop.call_later(
                self._body_window_s, self._body_window_end
            )

    def _stop_body_clock(self) -> None:
        if self._body_clock is not None:
            self._body_clock.cancel()
            self._body_clock = None

    def _body_window_end(self) -> None:
        self._body_clock = None
        receiver = self._body_receiver
        if receiver is None or receiver._complete or receiver.failure is not None or self._closed:
            return  # (the clock is not stopped when a body completes: it ends here)
        need = self._body_window_bytes
        length = self._current_request.content_length if self._current_request else 0
        if length:  # no more than the rest of the body
            need = min(need, length - self._window_start_bytes)
        came = receiver.received - self._window_start_bytes
        # A window in which we stopped reading (the app had not taken what came) is not
        # the client's fault: it counts as kept.
        if came >= max(need, 1) or self._paused_in_window or self._reading_paused:
            self.start_body_clock()
            return
        rate = self._body_window_bytes // self._body_window_s
        receiver.fail(
            RequestTimeout(
                f"the body stalled, or came slower than {rate} bytes/s over"
                f" {self._body_window_s} s (JOBPOOL_BODY_MIN_RATE, JOBPOOL_BODY_TIMEOUT_S):"
                f" {receiver.received} bytes came"
            )
        )

    def _pause_reading(self) -> None:
        self._paused_in_window = True
        super()._pause_reading()

    # -- after the answer ----------------------------------------------------------------

    def _will_close(self, request: Any, response_requires_close: bool) -> bool:
        receiver = self._body_receiver
        # RFC 9110 section 10.1.1: a final answer before the body says whether the
        # connection stays; here it does not if the body can no longer come whole.
        if (
            isinstance(receiver, Receiver)
            and not receiver._complete
            and (receiver.awaiting_continue or receiver.failure is not None)
        ):
            return True
        return bool(super()._will_close(request, response_requires_close))

    async def _serve_http_request(self, request: Any, sockname: Any, peername: Any) -> bool:
        keepalive = bool(await super()._serve_http_request(request, sockname, peername))
        receiver = self._body_receiver
        if not isinstance(receiver, Receiver) or receiver._complete or self._closed:
            if self._body_clock is not None:
                self._stop_body_clock()
            return keepalive
        whole = False
        if not receiver.awaiting_continue and receiver.failure is None:
            whole = await self._drop_rest(receiver)
        self._stop_body_clock()
        return keepalive and whole

    async def _drop_rest(self, receiver: Receiver) -> bool:
        """Read and drop what is left of a body the app did not read; True if it ended."""
        left = self._drain_max
        try:
            while left >= 0:
                event = await receiver.receive()
                if event["type"] != "http.request":
                    return False
                left -= len(event["body"])
                if not event.get("more_body"):
                    return left >= 0
        except ServiceError:  # the client went, broke the framing or missed the deadline
            return False
        return False

    # -- the HTTP layer's own answers ----------------------------------------------------

    def _send_error_response(self, status: int, message: str, extra_headers: Any = ()) -> None:
        if self._closed:
            return  # nobody to answer (the app's call ended after the client left)
        request_id = secrets.token_hex(8)
        try:
            title = HTTPStatus(status).phrase
        except ValueError:
            title = "Error"
        body = problem_document(status, title, _DETAILS.get(status) or _echo(message))
        extra = "".join(f"{name}: {value}\r\n" for name, value in extra_headers)
        head = (
            f"HTTP/1.1 {status} {title}\r\nContent-Type: {PROBLEM}\r\n"
            f"Content-Length: {len(body)}\r\nX-Request-ID: {request_id}\r\n{extra}"
            "Connection: close\r\n\r\n"
        )
        self._safe_write(head.encode("latin-1") + body)
        self._report(status, request_id)

    def _report(self, status: int, request_id: str) -> None:
        """Count and log an answer of this layer as the app's Telemetry does its own."""
        record: Callable[..., None] | None = self.worker.state.get(TELEMETRY_STATE)
        if record is None:
            return
        request = self._current_request
        if request is not None:
            method, path = request.method, request.path
        else:  # what the parser read of the request line, if anything
            parser = self._callback_parser
            method = (getattr(parser, "method", None) or b"").decode("latin-1")
            raw = getattr(parser, "path", None) or b""
            path = raw.split(b"?", 1)[0].decode("latin-1")
        seconds = time.perf_counter() - self._request_began if self._request_began else 0.0
        record(None, _echo(method), _echo(path), status, seconds, request_id)


#: The signals that stop a worker (TERM: gracefully; INT, QUIT: at once).
_STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGQUIT)


class Worker(ASGIWorker):  # type: ignore[misc]
    """gunicorn's asgi worker, serving every listener with :class:`Protocol`."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # gunicorn.conf.py has read (and checked) the same environment already.
        self.settings = Settings.from_env()
        self._early_signals: list[int] = []
        #: Open connections: on a stop, the idle ones are closed at once.
        self.connections: set[Protocol] = set()

    def note_stop_signals(self) -> None:
        """Until the loop runs, Python's own handlers note the stop signals (from
        gunicorn.conf.py's post_fork on): uvloop drops a signal that arrives before its loop
        runs, and loading the app takes ~0.5 s. A SIGTERM then (a stop while a worker
        boots) was lost, and the master waited out its graceful timeout to SIGKILL the
        worker. :meth:`_serve` hands the noted ones to the loop's handlers."""
        for sig in _STOP_SIGNALS:
            signal.signal(sig, lambda signum, _frame: self._early_signals.append(signum))

    def init_signals(self) -> None:
        # gunicorn's, but the stop signals stay noted (never SIG_DFL: a stop while booting
        # would kill the worker rather than stop it gracefully) until _serve.
        for sig in self.SIGNALS:
            if sig not in _STOP_SIGNALS:
                signal.signal(sig, signal.SIG_DFL)
        self.loop.add_signal_handler(signal.SIGUSR1, self.handle_usr1_signal)
        self.loop.add_signal_handler(signal.SIGWINCH, self.handle_winch_signal)
        self.loop.add_signal_handler(signal.SIGABRT, self.handle_abort_signal)
        self.note_stop_signals()

    def _take_stop_signals(self) -> None:
        handlers = {
            signal.SIGTERM: self.handle_exit_signal,
            signal.SIGINT: self.handle_quit_signal,
            signal.SIGQUIT: self.handle_quit_signal,
        }
        for sig in _STOP_SIGNALS:
            self.loop.add_signal_handler(sig, handlers[sig])
        for signum in self._early_signals:
            handlers[signal.Signals(signum)]()

    async def _serve(self) -> None:
        # gunicorn's _serve, with this module's protocol: the lifespan, then one server per
        # listener, then the heartbeat until the worker is told to stop.
        self._take_stop_signals()
        if self.cfg.asgi_lifespan != "off":  # jobpool's pools and store start with it
            self.lifespan = LifespanManager(self.asgi, self.log, self.state)
            try:
                await self.lifespan.startup()
            except (LifespanStartupFailed, RuntimeError) as ex:
                self.log.error("ASGI lifespan startup failed: %s", ex)
                self.lifespan = None
                raise SystemExit(Arbiter.WORKER_BOOT_ERROR) from None
        ssl_context = self._get_ssl_context()
        for sock in self.sockets:
            server = await self.loop.create_server(
                lambda: Protocol(self), sock=sock.sock, ssl=ssl_context, start_serving=True
            )
            self.servers.append(server)
            self.log.info("ASGI server listening on %s", sock)
        try:
            while self.alive:
                self.notify()
                if self.ppid != os.getppid():
                    self.log.info("Parent changed, shutting down: %s", self)
                    break
                await asyncio.sleep(1.0)
        except asyncio.CancelledError:
            pass
        # gunicorn waits for every open connection to end, and an idle kept-alive one (a
        # load balancer holds many) would hold the stop for the whole graceful timeout,
        # ended by SIGKILL. The idle ones close now; the busy ones after their answer.
        for connection in list(self.connections):
            connection.close_if_idle()
        await self._shutdown()


def _echo(text: str) -> str:
    """Request text quoted in an answer or a log line, cut short."""
    return text if len(text) <= _ECHO_MAX else text[:_ECHO_MAX] + "…"
