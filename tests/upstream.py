"""A real HTTP/1.1 test server on loopback: the upstream that fetch tests talk to.

Use it as a context manager (or through a pytest fixture built on one)::

    with UpstreamServer() as up:
        fetch(up.url("/ok"))
        assert up.requests[-1].path == "/ok"

It binds 127.0.0.1 (or ``host="::1"``) on a free port, serves each connection on its own
thread (keep-alive included), records every request, and on exit closes the listening socket
and every open connection and joins its threads. Pass ``ssl_context`` (see
:func:`make_test_certs`) for https; the SNI names clients send are recorded in ``sni_names``.

Routes (GET and HEAD; a HEAD answer has the GET headers and no body):

``/ok``                      200, :attr:`UpstreamServer.OK_BODY`, with content-type, etag,
                             last-modified, cache-control and an extra ``x-upstream`` header
``/big?n=N&chunked=1``       200, N bytes of :meth:`UpstreamServer.big_body` (default 1 MiB),
                             with Content-Length, or chunked without it when ``chunked=1``
``/slow?s=S``                sleeps S seconds (default 5) before answering 200 ``b"slow"``
``/drip?n=N&interval=S``     Content-Length N, then one byte every S seconds
``/redirect?to=URL&status=C``  redirect (default 302) to URL, relative or absolute
``/redirect-chain/N``        302 to ``/redirect-chain/N-1``; ``/redirect-chain/0`` is 200
``/head``                    200 with Content-Length 1234 (GET sends those 1234 bytes)
``/echo``                    200, JSON of the request: method, path, headers (lower-case)
``/status/C``                status C with a short body
``/truncated``               announces 100 bytes, sends 10, closes the connection
anything else                404
"""

from __future__ import annotations

import contextlib
import json
import shutil
import socket
import ssl
import subprocess
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import TracebackType
from typing import Any, ClassVar, Self
from urllib.parse import parse_qs, urlsplit

__all__ = ["CertFiles", "RecordedRequest", "StaticResolver", "UpstreamServer", "make_test_certs"]

_CHUNK = 64 * 1024
_PATTERN = bytes(range(251)) * 262  # 65762 bytes; a prime period so chunks differ


@dataclass
class RecordedRequest:
    """One request as the server saw it; ``bytes_sent`` counts body bytes written so far."""

    method: str
    path: str
    headers: dict[str, str]
    client: tuple[str, int]
    bytes_sent: int = 0
    disconnected: bool = False


@dataclass(frozen=True)
class CertFiles:
    """Files of a throwaway CA and of a server certificate it signed (PEM)."""

    ca_file: Path
    cert_file: Path
    key_file: Path
    names: tuple[str, ...] = field(default=())

    def server_context(self) -> ssl.SSLContext:
        """A server-side TLS context presenting the certificate."""
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(self.cert_file, self.key_file)
        return context


def make_test_certs(directory: Path, names: tuple[str, ...] = ("upstream.test",)) -> CertFiles:
    """Make a CA and a server certificate for ``names`` (DNS names) in ``directory``.

    Uses the ``openssl`` command (EC P-256 keys, valid for two days).
    """
    openssl = shutil.which("openssl")
    if openssl is None:
        raise RuntimeError("make_test_certs needs the openssl command")
    directory.mkdir(parents=True, exist_ok=True)
    ca_key, ca_pem = directory / "ca.key", directory / "ca.pem"
    key, csr, pem = directory / "server.key", directory / "server.csr", directory / "server.pem"
    ext = directory / "server.ext"
    ext.write_text(
        "subjectAltName=" + ",".join(f"DNS:{n}" for n in names) + "\n"
        "basicConstraints=critical,CA:FALSE\n"
        "keyUsage=critical,digitalSignature\n"
        "extendedKeyUsage=serverAuth\n"
        "subjectKeyIdentifier=hash\n"
        "authorityKeyIdentifier=keyid,issuer\n"
    )
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]

    def run(*args: str | Path) -> None:
        subprocess.run([openssl, *map(str, args)], check=True, capture_output=True)

    run("req", "-x509", *ec, "-keyout", ca_key, "-out", ca_pem, "-days", "2",
        "-subj", "/CN=jobpool test CA",
        "-addext", "basicConstraints=critical,CA:TRUE",
        "-addext", "keyUsage=critical,keyCertSign,cRLSign")  # fmt: skip
    run("req", *ec, "-keyout", key, "-out", csr, "-subj", f"/CN={names[0]}")
    run("x509", "-req", "-in", csr, "-CA", ca_pem, "-CAkey", ca_key, "-CAcreateserial",
        "-out", pem, "-days", "2", "-extfile", ext)  # fmt: skip
    return CertFiles(ca_file=ca_pem, cert_file=pem, key_file=key, names=names)


class StaticResolver:
    """A stand-in for :func:`socket.getaddrinfo` that answers from a fixed table.

    ``StaticResolver({"upstream.test": ["127.0.0.1"]})`` makes test names point at the test
    server without touching DNS; an unknown name raises :class:`socket.gaierror` like a real
    lookup. ``calls`` lists the names asked for, in order.
    """

    def __init__(self, table: Mapping[str, Sequence[str]]) -> None:
        self.table = {name: list(addresses) for name, addresses in table.items()}
        self.calls: list[str] = []

    def __call__(
        self, host: str, port: int, family: int = 0, type: int = 0, proto: int = 0, /
    ) -> list[tuple[int, int, int, str, tuple[Any, ...]]]:
        self.calls.append(host)
        if host not in self.table:
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        answers: list[tuple[int, int, int, str, tuple[Any, ...]]] = []
        for address in self.table[host]:
            if ":" in address:
                answers.append((socket.AF_INET6, socket.SOCK_STREAM, 6, "", (address, port, 0, 0)))
            else:
                answers.append((socket.AF_INET, socket.SOCK_STREAM, 6, "", (address, port)))
        return answers


class _Server(ThreadingHTTPServer):
    daemon_threads = False  # server_close() joins the handler threads
    block_on_close = True
    upstream: UpstreamServer

    def handle_error(self, request: Any, client_address: Any) -> None:
        """Clients hanging up (timeouts, size caps, TLS refusals) are expected: stay quiet."""


class _Server6(_Server):
    address_family = socket.AF_INET6


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server
    timeout = 30  # an idle keep-alive connection is dropped after this

    def setup(self) -> None:
        up = self.server.upstream
        self.request.settimeout(self.timeout)
        if up.ssl_context is not None:
            self.request = up.ssl_context.wrap_socket(self.request, server_side=True)
        up._track(self.request)
        super().setup()

    def finish(self) -> None:
        try:
            super().finish()
        finally:
            self.server.upstream._untrack(self.request)

    def log_message(self, format: str, *args: Any) -> None:
        """Requests are recorded in ``UpstreamServer.requests`` instead of logged."""

    def do_GET(self) -> None:
        self._dispatch(head=False)

    def do_HEAD(self) -> None:
        self._dispatch(head=True)

    # ---------------------------------------------------------------- routing

    def _dispatch(self, *, head: bool) -> None:
        up = self.server.upstream
        parts = urlsplit(self.path)
        query = {k: v[-1] for k, v in parse_qs(parts.query).items()}
        record = RecordedRequest(
            method=self.command,
            path=self.path,
            headers={k.lower(): v for k, v in self.headers.items()},
            client=self.client_address[:2],
        )
        up._record(record)
        self._head, self._rec = head, record
        route = parts.path
        try:
            if route == "/ok":
                self._send(200, UpstreamServer.OK_BODY, UpstreamServer.OK_HEADERS)
            elif route == "/big":
                self._big(int(query.get("n", 1024 * 1024)), chunked=query.get("chunked") == "1")
            elif route == "/slow":
                up._stopping.wait(float(query.get("s", 5)))
                self._send(200, b"slow")
            elif route == "/drip":
                self._drip(int(query.get("n", 10)), float(query.get("interval", 0.1)))
            elif route == "/redirect":
                status = int(query.get("status", 302))
                self._send(status, b"redirecting\n", {"Location": query.get("to", "/ok")})
            elif route.startswith("/redirect-chain/"):
                left = int(route.rsplit("/", 1)[1])
                if left > 0:
                    self._send(302, b"", {"Location": f"/redirect-chain/{left - 1}"})
                else:
                    self._send(200, b"end of chain\n")
            elif route == "/head":
                self._send(200, UpstreamServer.big_body(1234), {"Content-Type": "text/plain"})
            elif route == "/echo":
                doc = {"method": self.command, "path": self.path, "headers": record.headers}
                self._send(200, json.dumps(doc).encode(), {"Content-Type": "application/json"})
            elif route == "/truncated":
                self._start(200, {"Content-Type": "text/plain", "Content-Length": "100"})
                self._write(b"0123456789")
                self.close_connection = True
            elif route.startswith("/status/"):
                self._send(int(route.rsplit("/", 1)[1]), b"status\n")
            elif route == "/busy":
                # ``fails`` answers of ``status`` (with Retry-After ``after``), then 200: a
                # count per ``key``, so each test has its own.
                key = query.get("key", "")
                seen = up.busy_counts[key] = up.busy_counts.get(key, 0) + 1
                if seen <= int(query.get("fails", 2)):
                    extra = {"Retry-After": query["after"]} if "after" in query else {}
                    self._send(int(query.get("status", 503)), b"busy\n", extra)
                else:
                    self._send(200, b"finally\n")
            else:
                self._send(404, b"not found\n")
        except (ConnectionError, TimeoutError, ssl.SSLError):
            record.disconnected = True
            self.close_connection = True

    # ---------------------------------------------------------------- responses

    def _start(self, status: int, headers: dict[str, str]) -> None:
        self.send_response(status)
        for name, value in headers.items():
            self.send_header(name, value)
        self.end_headers()

    def _write(self, data: bytes) -> None:
        if not self._head:
            self.wfile.write(data)
            self._rec.bytes_sent += len(data)

    def _send(self, status: int, body: bytes, headers: dict[str, str] | None = None) -> None:
        all_headers = {"Content-Type": "text/plain; charset=utf-8", **(headers or {})}
        all_headers["Content-Length"] = str(len(body))
        self._start(status, all_headers)
        self._write(body)

    def _big(self, n: int, *, chunked: bool) -> None:
        headers = {"Content-Type": "application/octet-stream"}
        if chunked:
            headers["Transfer-Encoding"] = "chunked"
        else:
            headers["Content-Length"] = str(n)
        self._start(200, headers)
        if self._head:
            return
        for index in range(-(-n // _CHUNK)):
            if self.server.upstream._stopping.is_set():
                break
            piece = UpstreamServer.big_chunk(index)[: n - index * _CHUNK]
            if chunked:
                self.wfile.write(f"{len(piece):x}\r\n".encode())
                self._write(piece)
                self.wfile.write(b"\r\n")
            else:
                self._write(piece)
        if chunked:
            self.wfile.write(b"0\r\n\r\n")

    def _drip(self, n: int, interval: float) -> None:
        self._start(200, {"Content-Type": "text/plain", "Content-Length": str(n)})
        for _ in range(n):
            if self.server.upstream._stopping.wait(interval):
                break
            self._write(b".")
            self.wfile.flush()


class UpstreamServer:
    """A threaded HTTP/1.1 server on ``127.0.0.1:<free port>``; see the module docstring."""

    OK_BODY: ClassVar[bytes] = b"hello from upstream\n"
    OK_HEADERS: ClassVar[dict[str, str]] = {
        "Content-Type": "text/plain; charset=utf-8",
        "ETag": '"ok-v1"',
        "Last-Modified": "Wed, 01 Jan 2025 00:00:00 GMT",
        "Cache-Control": "max-age=60",
        "X-Upstream": "yes",
    }

    def __init__(
        self, *, ssl_context: ssl.SSLContext | None = None, host: str = "127.0.0.1"
    ) -> None:
        self.ssl_context = ssl_context
        self._host = host
        self.sni_names: list[str | None] = []
        self._requests: list[RecordedRequest] = []
        #: /busy answers given so far, by key.
        self.busy_counts: dict[str, int] = {}
        self._sockets: list[socket.socket] = []
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None
        if ssl_context is not None:
            ssl_context.sni_callback = self._on_sni

    # ---------------------------------------------------------------- lifecycle

    def start(self) -> Self:
        """Bind and serve in a background thread; returns self."""
        if self._server is not None:
            raise RuntimeError("already started")
        self._stopping.clear()
        server_class = _Server6 if ":" in self._host else _Server
        server = server_class((self._host, 0), _Handler)
        server.upstream = self
        self._server = server
        self._thread = threading.Thread(
            target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving, drop every open connection, join all threads."""
        server, self._server = self._server, None
        if server is None:
            return
        self._stopping.set()
        server.shutdown()
        with self._lock:
            sockets, self._sockets = self._sockets, []
        for sock in sockets:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
        server.server_close()
        if self._thread is not None:
            self._thread.join()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # ---------------------------------------------------------------- addresses

    @property
    def host(self) -> str:
        """The address it listens on (``127.0.0.1`` unless another was given)."""
        return self._host

    @property
    def port(self) -> int:
        """The port it listens on."""
        if self._server is None:
            raise RuntimeError("not started")
        return int(self._server.server_address[1])

    @property
    def scheme(self) -> str:
        """``https`` with an ssl_context, else ``http``."""
        return "http" if self.ssl_context is None else "https"

    def url(self, path: str = "/", *, host: str | None = None) -> str:
        """An absolute URL for ``path`` on this server; ``host`` replaces the address in it."""
        if not path.startswith("/"):
            path = "/" + path
        if host is None:
            host = f"[{self._host}]" if ":" in self._host else self._host
        return f"{self.scheme}://{host}:{self.port}{path}"

    # ---------------------------------------------------------------- observations

    @property
    def requests(self) -> list[RecordedRequest]:
        """The requests received so far, oldest first (a copy of the list)."""
        with self._lock:
            return list(self._requests)

    def clear(self) -> None:
        """Forget the requests and SNI names recorded so far."""
        with self._lock:
            self._requests.clear()
            self.sni_names.clear()

    @staticmethod
    def big_chunk(index: int) -> bytes:
        """The ``index``-th 64 KiB piece of the /big body."""
        offset = index % 251
        return index.to_bytes(8, "big") + _PATTERN[offset : offset + _CHUNK - 8]

    @staticmethod
    def big_body(n: int) -> bytes:
        """The first ``n`` bytes /big sends."""
        pieces = (UpstreamServer.big_chunk(i) for i in range(-(-n // _CHUNK)))
        return b"".join(pieces)[:n]

    # ---------------------------------------------------------------- internals

    def _track(self, sock: socket.socket) -> None:
        with self._lock:
            self._sockets.append(sock)

    def _untrack(self, sock: socket.socket) -> None:
        with self._lock:
            if sock in self._sockets:
                self._sockets.remove(sock)

    def _record(self, request: RecordedRequest) -> None:
        with self._lock:
            self._requests.append(request)

    def _on_sni(self, sslobj: ssl.SSLObject | ssl.SSLSocket, name: str | None, _: Any) -> None:
        with self._lock:
            self.sni_names.append(name)
