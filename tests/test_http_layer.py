"""The HTTP layer under a hostile client (issue #14): raw sockets against the real server.

The deadlines are set low here (1 s) so that no case waits long; every socket read is bounded.
"""

from __future__ import annotations

import codecs
import select
import socket
import sqlite3
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import orjson
import pytest

from tests.clients import ALICE
from tests.conftest import SEED_BATCH
from tests.imagegen import photo_like
from tests.server import Server
from tests.test_metrics import access_lines, value, wait_for_metrics

CASES = Path(__file__).parent / "cases" / "http_layer.txt"
#: The deadlines of the servers here: short, so that the cases take seconds.
FAST = {
    "JOBPOOL_HEADER_TIMEOUT_S": "1",
    "JOBPOOL_BODY_TIMEOUT_S": "1",
    "JOBPOOL_BODY_MIN_RATE": "1024",
    "JOBPOOL_KEEPALIVE_S": "4",
}
#: Longer body spans, for the cases where the client must keep up through a busy machine.
PATIENT = {**FAST, "JOBPOOL_BODY_TIMEOUT_S": "3"}
#: The longest a case waits for the server to answer and close; past it the case fails.
CLOSE_WITHIN_S = 8.0
PROBLEM = "application/problem+json"
AUTH = f"Authorization: Bearer {ALICE}"


@dataclass
class Answer:
    status: int
    headers: dict[str, str]
    body: bytes

    def problem(self) -> dict[str, object]:
        assert self.headers.get("content-type") == PROBLEM, self
        doc: dict[str, object] = orjson.loads(self.body)
        assert doc["status"] == self.status
        return doc


@dataclass
class Conversation:
    """One connection: what was sent, what came back, whether the server closed it."""

    sock: socket.socket
    received: bytearray = field(default_factory=bytearray)
    closed: bool = False
    #: Set once a send failed: the server had closed the connection.
    refused_more: bool = False

    def send(self, data: bytes) -> None:
        self.pump(0)  # read what came first: a send after the server's close may reset
        if self.closed or self.refused_more:
            return
        try:
            self.sock.sendall(data)
        except OSError:
            self.refused_more = True

    def pump(self, seconds: float) -> None:
        """Read whatever arrives for ``seconds`` (or until the server closes)."""
        deadline = time.monotonic() + seconds
        while not self.closed:
            left = max(0.0, deadline - time.monotonic())
            ready, _, _ = select.select([self.sock], [], [], left)
            if not ready:
                if left == 0.0:
                    return
                continue
            try:
                chunk = self.sock.recv(65536)
            except ConnectionResetError:
                chunk = b""
            if not chunk:
                self.closed = True
            self.received += chunk

    def await_text(self, text: bytes) -> None:
        deadline = time.monotonic() + CLOSE_WITHIN_S
        while text not in self.received and not self.closed and time.monotonic() < deadline:
            self.pump(0.05)
        assert text in self.received, (text, bytes(self.received[:300]))
        start = self.received.index(text)
        del self.received[start : start + len(text)]

    def until_closed(self) -> list[Answer]:
        """Every answer, once the server has closed the connection (a bounded wait)."""
        self.pump(CLOSE_WITHIN_S)
        assert self.closed, f"still open after {CLOSE_WITHIN_S} s: {bytes(self.received[:300])!r}"
        return parse_answers(bytes(self.received))


def parse_answers(data: bytes) -> list[Answer]:
    answers = []
    while data:
        head, sep, data = data.partition(b"\r\n\r\n")
        assert sep, f"a truncated answer: {head[:300]!r}"
        status_line, *fields = head.decode("latin-1").split("\r\n")
        headers = {}
        for line in fields:
            name, _, val = line.partition(":")
            headers[name.strip().lower()] = val.strip()
        length = int(headers.get("content-length", "0"))
        answers.append(Answer(int(status_line.split(" ")[1]), headers, data[:length]))
        data = data[length:]
    return answers


@pytest.fixture(scope="module")
def fast_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """One two-worker server with 1 s header and body deadlines, for the whole module."""
    srv = Server(tmp_path_factory.mktemp("http") / "state", env=FAST).start()
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def patient_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """The same with 3 s body spans."""
    srv = Server(tmp_path_factory.mktemp("http-patient") / "state", env=PATIENT).start()
    yield srv
    srv.stop()


def connector(srv: Server) -> Iterator[Callable[[], Conversation]]:
    opened: list[socket.socket] = []

    def open_one() -> Conversation:
        sock = socket.create_connection(("127.0.0.1", srv.port), timeout=CLOSE_WITHIN_S)
        opened.append(sock)
        return Conversation(sock)

    yield open_one
    for sock in opened:
        sock.close()


@pytest.fixture
def connect(fast_server: Server) -> Iterator[Callable[[], Conversation]]:
    """New connections to the fast server; every one is closed at the end."""
    yield from connector(fast_server)


@pytest.fixture
def connect_patient(patient_server: Server) -> Iterator[Callable[[], Conversation]]:
    """New connections to the patient server; every one is closed at the end."""
    yield from connector(patient_server)


# -- the table: the parser's refusals, Host, slow clients, Expect --------------------------


def expand(text: str) -> bytes:
    seed = orjson.dumps(SEED_BATCH).decode()
    many = "".join(f"X-{n}: {n}\r\n" for n in range(101))
    for name, val in {"{auth}": AUTH, "{seed_length}": str(len(seed)), "{seed}": seed,
                      "{long}": "a" * 9000, "{many-headers}": many}.items():  # fmt: skip
        text = text.replace(name, val)
    return codecs.escape_decode(text.encode())[0]  # type: ignore[no-any-return]


def cases() -> list[pytest.ParameterSet]:
    rows = []
    for line in CASES.read_text().splitlines():
        if line and not line.startswith("#"):
            name, steps, answers, detail = line.split("\t")
            rows.append(pytest.param(steps, answers, detail, id=name))
    return rows


@pytest.mark.parametrize(("steps", "answers", "detail"), cases())
def test_the_http_layer_answers_each_case(
    connect: Callable[[], Conversation], steps: str, answers: str, detail: str
) -> None:
    """Each case of the table gets its answers, every 4xx in problem+json with a request id
    and then the connection closed, within a bounded time."""
    talk = connect()
    for step in steps.split(" | "):
        verb, _, arg = step.partition(" ")
        if verb == "send":
            talk.send(expand(arg))
        elif verb == "pause":
            talk.pump(float(arg))
        elif verb == "await":
            talk.await_text(expand(arg))
        else:
            raise AssertionError(f"unknown step {step!r}")
    got = talk.until_closed()
    expected = [] if answers == "-" else [int(status) for status in answers.split()]
    assert [a.status for a in got] == expected, got
    for answer in got:
        if answer.status >= 400:
            doc = answer.problem()
            assert answer.headers.get("x-request-id")
            assert answer.headers.get("connection") == "close"
            if detail != "-":
                assert detail.lower() in str(doc["detail"]).lower(), doc


# -- bodies that do not come whole (points 1 and 2) ----------------------------------------


def jobs_stored(state_dir: Path) -> int:
    """Jobs in every SQLite file of the state directory, read straight from the files."""
    total = 0
    for db in state_dir.rglob("*.db"):
        with db.open("rb") as f:
            if f.read(16) != b"SQLite format 3\x00":
                continue  # the metrics' files
        with sqlite3.connect(db) as conn:
            if conn.execute("SELECT 1 FROM sqlite_master WHERE name = 'jobs'").fetchone():
                total += conn.execute("SELECT count(*) FROM jobs").fetchone()[0]
    return total


def upload(route: str) -> tuple[bytes, bytes, int]:
    """The head and body of a valid submit to ``route``, and how much more its length says."""
    if route == "parcels":
        batch = {"Data": [{"id": "short-1", "time": "2017-01-01T00:00:01Z", "data": "abc"}]}
        body, missing, path, ctype = orjson.dumps(batch), 100, "/v1/parcels", "application/json"
    else:
        body, missing = photo_like(64, 48, "png"), 5000
        path, ctype = "/v1/images?op=grayscale", "image/png"
    head = (
        f"POST {path} HTTP/1.1\r\nHost: x\r\n{AUTH}\r\nContent-Type: {ctype}\r\n"
        f"Content-Length: {len(body) + missing}\r\n\r\n"
    )
    return head.encode(), body, missing


@pytest.mark.parametrize("route", ["parcels", "images"])
@pytest.mark.parametrize("how", ["never sent", "stalled short", "trickled", "half-closed"])
def test_a_body_that_does_not_come_whole_never_becomes_a_job(
    fast_server: Server, connect: Callable[[], Conversation], route: str, how: str
) -> None:
    """A body that never comes, stops short of its length or trickles in under the minimum
    rate is answered 408 in problem+json (400 if the client half-closes), and nothing is
    stored."""
    before = jobs_stored(fast_server.state_dir)
    head, body, _ = upload(route)
    talk = connect()
    if how == "never sent":
        talk.send(head)
    elif how == "trickled":  # a byte every 0.2 s: never a gap of the deadline's length
        talk.send(head + body)
        for _ in range(15):
            talk.send(b" ")
            talk.pump(0.2)
    else:
        talk.send(head + body)
    if how == "half-closed":
        talk.sock.shutdown(socket.SHUT_WR)
    got = talk.until_closed()
    if how == "half-closed":  # the client cannot send more; it may not wait for an answer
        assert [a.status for a in got] in ([], [400]), got
    else:
        assert [a.status for a in got] == [408], got
        detail = str(got[0].problem()["detail"])
        assert "JOBPOOL_BODY_MIN_RATE" in detail
        assert "JOBPOOL_BODY_TIMEOUT_S" in detail
    assert jobs_stored(fast_server.state_dir) == before
    if route == "parcels":
        assert fast_server.get("/v1/parcels/short-1").status == 404


def test_a_body_sent_slowly_but_above_the_rate_is_read_whole(
    connect_patient: Callable[[], Conversation],
) -> None:
    """A body that comes in pieces over several spans, above the minimum rate (2 KiB every
    0.25 s against 1 KiB/s), is read whole and accepted: the deadlines cut no client that
    keeps up."""
    body = photo_like(200, 150, "png")
    assert len(body) > 50_000  # more than two spans' worth at this pace
    talk = connect_patient()
    talk.send(
        f"POST /v1/images?op=grayscale HTTP/1.1\r\nHost: x\r\n{AUTH}\r\nContent-Type: image/png"
        f"\r\nContent-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode()
    )
    for start in range(0, len(body), 2048):
        talk.pump(0.25)
        talk.send(body[start : start + 2048])
    got = talk.until_closed()
    assert [a.status for a in got] == [202], got


def test_a_broken_chunk_inside_a_body_is_answered_by_the_app(
    patient_server: Server, connect_patient: Callable[[], Conversation]
) -> None:
    """A chunked body whose framing breaks after the app began reading it gets 400 in
    problem+json, with the route in the access log, and stores nothing."""
    before = jobs_stored(patient_server.state_dir)
    talk = connect_patient()
    talk.send(
        f"POST /v1/parcels HTTP/1.1\r\nHost: x\r\n{AUTH}\r\nContent-Type: application/json\r\n"
        'Transfer-Encoding: chunked\r\n\r\n5\r\n{"Dat\r\n'.encode()
    )
    talk.pump(1)  # the app is reading the body now (its span is 3 s)
    talk.send(b"zz\r\n")
    got = talk.until_closed()
    assert [a.status for a in got] == [400], got
    assert "chunked framing" in str(got[0].problem()["detail"])
    rid = got[0].headers["x-request-id"]
    routes = [line["route"] for line in access_lines(patient_server) if line["request_id"] == rid]
    assert routes == ["/v1/parcels"]
    assert jobs_stored(patient_server.state_dir) == before


def test_a_refused_body_is_dropped_and_the_connection_kept(
    connect: Callable[[], Conversation],
) -> None:
    """A body the app refuses without reading (415) is read and dropped after the answer, so
    the next request on the same connection is served."""
    talk = connect()
    body = b"x" * 300_000
    talk.send(
        f"POST /v1/parcels HTTP/1.1\r\nHost: x\r\n{AUTH}\r\nContent-Type: text/plain\r\n"
        f"Content-Length: {len(body)}\r\n\r\n".encode()
        + body
        + b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    got = talk.until_closed()
    assert [a.status for a in got] == [415, 200], got
    assert "connection" not in got[0].headers


# -- counted and logged like every other answer --------------------------------------------


def test_the_http_layers_answers_are_counted_and_logged(
    server_factory: Callable[..., Server],
) -> None:
    """The parser's refusals and the deadlines' 408s show in jobpool_http_requests_total and
    in the access log, each line with the request id its answer carried."""
    srv = server_factory(env=FAST)

    def connect() -> Conversation:
        return Conversation(socket.create_connection(("127.0.0.1", srv.port), timeout=5))

    requests = [
        b"GET /healthz HTTP/1.1\r\n\r\n",  # no Host: 400
        b"GET /healthz HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\nContent-Length: 1\r\n\r\nab",
        b"GET /healthz HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: zstd-x, chunked\r\n\r\n",
        b"GET /healthz HTTP/1.1\r\nHost: x\r\n",  # the header deadline: 408
    ]
    head, _, _ = upload("parcels")
    requests.append(head)  # the body deadline: 408, answered by the app
    answers = []
    for request in requests:
        talk = connect()
        with talk.sock:
            talk.send(request)
            answers += talk.until_closed()
    assert [a.status for a in answers] == [400, 400, 501, 408, 408]
    ids = {a.headers["x-request-id"] for a in answers}
    lines = {line["request_id"]: line for line in access_lines(srv)}
    assert ids <= lines.keys()
    assert sorted(lines[i]["status"] for i in ids) == [400, 400, 408, 408, 501]
    assert sorted(lines[i]["route"] for i in ids) == ["/v1/parcels", *["unmatched"] * 4]

    def metrics_text() -> str:
        return srv.get("/metrics", headers={"Connection": "close"}).data.decode()

    def counted(samples: dict[object, float]) -> bool:
        name = "jobpool_http_requests_total"
        unmatched = {
            status: value(samples, name, route="unmatched", method="GET", status=status)
            for status in ("400", "408", "501")
        }
        posted = value(samples, name, route="/v1/parcels", method="POST", status="408")
        return unmatched == {"400": 2, "408": 1, "501": 1} and posted >= 1

    wait_for_metrics(metrics_text, counted)
