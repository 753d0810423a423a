"""The ``jobpool`` command and ``service.client.Client`` against the real server.

The command runs as a subprocess (the console script the package installs); its progress
display is read from a real terminal (a pty). The server is the real gunicorn, auth on.
"""

from __future__ import annotations

import contextlib
import fcntl
import io
import os
import re
import select
import signal
import socket
import struct
import subprocess
import sys
import termios
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from PIL import Image

from service.client import Client, NotFound, RetryPolicy, Unavailable, Unreachable
from service.client.cli import EXIT_MEANINGS, Exit
from service.client.progress import LineDisplay
from tests.clients import ALICE, BOB
from tests.conftest import SEED_BATCH
from tests.imagegen import encode, photo_image
from tests.server import Server
from tests.upstream import UpstreamServer

pytestmark = pytest.mark.server

JOBPOOL = Path(sys.executable).with_name("jobpool")
#: Seconds any one run of the command may take before the test fails.
RUN_DEADLINE_S = 60
FINAL = ("succeeded", "failed", "cancelled")


@pytest.fixture(scope="module")
def srv(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """One real server for the module's tests (each makes jobs of its own)."""
    server = Server(
        tmp_path_factory.mktemp("cli") / "state", env={"JOBPOOL_FETCH_ALLOW_PRIVATE": "1"}
    ).start()
    yield server
    server.stop()


def command_env(server: Server | None, key: str | None = ALICE, **extra: str) -> dict[str, str]:
    """The environment of a run: this one without JOBPOOL_*, plus the server and key."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("JOBPOOL_")}
    if server is not None:
        env["JOBPOOL_URL"] = server.url("")
    if key is not None:
        env["JOBPOOL_KEY"] = key
    return {**env, **extra}


def jobpool(
    *args: str,
    server: Server | None = None,
    key: str | None = ALICE,
    stdin: bytes | None = None,
    cwd: Path | None = None,
) -> subprocess.CompletedProcess[bytes]:
    """Run the console script to its end; its exit status and output."""
    return subprocess.run(
        [str(JOBPOOL), *args], env=command_env(server, key), input=stdin, cwd=cwd,
        capture_output=True, timeout=RUN_DEADLINE_S, check=False,
    )  # fmt: skip


def out(proc: subprocess.CompletedProcess[bytes]) -> str:
    return proc.stdout.decode()


def err(proc: subprocess.CompletedProcess[bytes]) -> str:
    return proc.stderr.decode()


def submit_test_job(server: Server, name: str, **args: Any) -> str:
    """A test job (tests/jobs_for_tests.py) submitted over HTTP; its id."""
    r = server.post(f"/test/jobs/{name}", json=args)
    assert r.status == 202, r
    return str(r.json()["job"])


def submit_test_batch(server: Server, name: str, items: list[Any], **options: Any) -> str:
    r = server.post(f"/test/batch/{name}", json={"items": items, "options": options})
    assert r.status == 202, r
    return str(r.json()["job"])


def wait_state(server: Server, job_id: str, state: str, timeout: float = 30) -> None:
    """Poll until the job is in ``state``; fail the test if it is not within ``timeout``."""
    deadline = time.monotonic() + timeout
    doc: dict[str, Any] = {}
    while time.monotonic() < deadline:
        doc = server.get(f"/v1/jobs/{job_id}").json()
        if doc["state"] == state:
            return
        time.sleep(0.05)
    raise AssertionError(f"job {job_id} not {state} after {timeout} s: {doc}")


@pytest.fixture
def batch_file(tmp_path: Path) -> Path:
    path = tmp_path / "batch.json"
    path.write_bytes(orjson.dumps(SEED_BATCH))
    return path


# -- help and usage -----------------------------------------------------------------------

VERBS = ["", "submit", "submit parcels", "submit image", "fetch", "status", "wait",
         "cancel", "list", "result"]  # fmt: skip


@pytest.mark.parametrize("verb", VERBS, ids=lambda v: v or "jobpool")
def test_every_verb_has_help(verb: str) -> None:
    """``--help`` of every verb exits 0 with its usage and the exit statuses."""
    proc = jobpool(*verb.split(), "--help", key=None)
    assert proc.returncode == 0, err(proc)
    assert out(proc).startswith(f"usage: jobpool {verb}".rstrip())
    assert "exit status:" in out(proc)


BAD_USAGE = {
    "no verb": [],
    "unknown verb": ["frobnicate"],
    "status without an id": ["status"],
    "image without an op": ["submit", "image", "x.png"],
    "an op that does not exist": ["submit", "image", "x.png", "--op", "melt"],
    "a delay and a time at once": [
        "submit",
        "parcels",
        "b.json",
        "--delay",
        "5",
        "--not-before",
        "2030-01-01T00:00:00Z",
    ],
    "a negative delay": ["submit", "parcels", "b.json", "--delay", "-1"],
    "a file that is not there": ["submit", "parcels", "/nonexistent/batch.json"],
    "a server URL that is not http": ["--url", "ftp://example.org", "status", "x"],
    "a wait timeout of zero": ["wait", "x", "--timeout", "0"],
    "JSON and a result both on stdout": ["result", "x", "--json", "-o", "-"],
    "an idempotency key not ASCII": ["submit", "parcels", "-", "--idempotency-key", "clé"],
}


@pytest.mark.parametrize("args", BAD_USAGE.values(), ids=BAD_USAGE.keys())
def test_bad_usage_exits_2(args: list[str]) -> None:
    """A mistake on the command line exits 2 with a message, before any job is made."""
    proc = jobpool(*args, key=None)
    assert proc.returncode == 2, (out(proc), err(proc))
    assert err(proc).strip()


def test_runs_as_a_module_too() -> None:
    """``python -m service.client`` is the same command."""
    proc = subprocess.run(
        [sys.executable, "-m", "service.client", "--help"],
        capture_output=True, timeout=RUN_DEADLINE_S, check=False,
    )  # fmt: skip
    assert proc.returncode == 0
    assert proc.stdout.decode().startswith("usage: jobpool")


# -- submitting ---------------------------------------------------------------------------


def test_submit_parcels_then_wait_succeeds(srv: Server, batch_file: Path) -> None:
    """``submit parcels FILE --wait`` stores the batch, follows it, and exits 0."""
    proc = jobpool("submit", "parcels", str(batch_file), "--wait", server=srv)
    assert proc.returncode == 0, err(proc)
    lines = out(proc).splitlines()
    job_id = lines[0].split()[0]
    assert ", 9 items" in lines[0]
    assert lines[-1] == f"{job_id} succeeded 9/9 items"
    assert srv.get("/v1/parcels/9").json()["data"] == "yz0"


def test_submit_json_names_the_job_and_its_key(srv: Server, batch_file: Path) -> None:
    """``--json`` prints the 202's body with its Location and the Idempotency-Key sent."""
    proc = jobpool("submit", "parcels", str(batch_file), "--json", server=srv)
    assert proc.returncode == 0, err(proc)
    answer = orjson.loads(proc.stdout)
    assert answer["location"] == f"/v1/jobs/{answer['job']}"
    assert answer["accepted"] == 9
    assert re.fullmatch(r"[0-9a-f-]{36}", answer["idempotency_key"])
    assert answer["replayed"] is False
    assert srv.get(answer["location"]).status == 200


def test_submit_parcels_reads_stdin(srv: Server) -> None:
    """``submit parcels -`` posts what it reads on stdin."""
    proc = jobpool(
        "submit", "parcels", "-", "--wait", "--json", server=srv, stdin=orjson.dumps(SEED_BATCH)
    )
    assert proc.returncode == 0, err(proc)
    assert orjson.loads(proc.stdout)["items"] == {"total": 9, "done": 9, "failed": 0}


def test_an_invalid_batch_is_refused_with_the_servers_reason(srv: Server, tmp_path: Path) -> None:
    """A batch the server refuses (422) exits 3 and says why, in the server's words."""
    bad = tmp_path / "bad.json"
    bad.write_bytes(orjson.dumps({"Data": [{"id": "1", "time": "yesterday", "data": "x"}]}))
    proc = jobpool("submit", "parcels", str(bad), server=srv)
    assert proc.returncode == 3
    assert "422" in err(proc)
    assert "RFC 3339" in err(proc)


def test_a_delayed_submit_is_scheduled(srv: Server, batch_file: Path) -> None:
    """``--delay`` becomes Job-Delay: the job is scheduled, not started."""
    proc = jobpool("submit", "parcels", str(batch_file), "--delay", "600", "--json", server=srv)
    assert proc.returncode == 0, err(proc)
    job_id = orjson.loads(proc.stdout)["job"]
    doc = srv.get(f"/v1/jobs/{job_id}").json()
    assert doc["state"] == "scheduled"
    assert doc["next_attempt_at"] is not None
    assert jobpool("cancel", job_id, server=srv).returncode == 0


def test_submit_image_writes_the_result_file(srv: Server, tmp_path: Path) -> None:
    """``submit image FILE --op thumbnail ... -o out`` waits and writes the image made."""
    source = tmp_path / "photo.jpg"
    source.write_bytes(encode(photo_image(640, 480), "JPEG"))
    target = tmp_path / "thumb.webp"
    proc = jobpool(
        "submit", "image", str(source), "--op", "thumbnail", "--width", "100",
        "--height", "100", "--format", "webp", "-o", str(target), server=srv,
    )  # fmt: skip
    assert proc.returncode == 0, err(proc)
    assert f"wrote {target} (image/webp" in out(proc)
    with Image.open(target) as im:
        assert im.format == "WEBP"
        assert im.size == (100, 75)


def test_image_parameters_the_server_refuses_exit_3(srv: Server, tmp_path: Path) -> None:
    """A thumbnail without its width is the server's 422: exit 3 with its detail."""
    source = tmp_path / "photo.png"
    source.write_bytes(encode(photo_image(64, 48), "PNG"))
    proc = jobpool("submit", "image", str(source), "--op", "thumbnail", server=srv)
    assert proc.returncode == 3
    assert "width" in err(proc)


def test_fetch_then_result_prints_json(srv: Server) -> None:
    """``fetch URL --wait`` runs the fetch job; ``result`` prints its JSON pretty."""
    with UpstreamServer() as up:
        proc = jobpool("fetch", up.url("/ok"), "--wait", server=srv)
        assert proc.returncode == 0, err(proc)
        job_id = out(proc).split()[0]
    result = jobpool("result", job_id, server=srv)
    assert result.returncode == 0, err(result)
    assert out(result).startswith("{\n  ")  # indented
    assert orjson.loads(result.stdout)["status"] == 200


def test_fetch_of_a_url_the_server_refuses_exits_3(srv: Server) -> None:
    """A URL the server will not fetch (not http) is refused at submit: exit 3."""
    proc = jobpool("fetch", "ftp://example.org/x", server=srv)
    assert proc.returncode == 3
    assert "422" in err(proc)


# -- status, result, cancel ---------------------------------------------------------------


def test_status_shows_the_document(srv: Server) -> None:
    """``status`` prints the job's fields as text, and the document itself with --json."""
    job_id = submit_test_job(srv, "test.echo", x=1)
    srv.wait_final(job_id)
    text = jobpool("status", job_id, server=srv)
    assert text.returncode == 0, err(text)
    fields = dict(line.split(None, 1) for line in out(text).splitlines())
    assert fields["id"] == job_id
    assert fields["job"] == "test.echo"
    assert fields["state"] == "succeeded"
    doc = orjson.loads(jobpool("status", job_id, "--json", server=srv).stdout)
    assert doc == srv.get(f"/v1/jobs/{job_id}").json()


@pytest.mark.parametrize("verb", ["status", "wait", "cancel", "result"])
def test_an_unknown_job_exits_3(srv: Server, verb: str) -> None:
    """Every verb that names a job exits 3 for one that does not exist."""
    proc = jobpool(verb, "01m80z4h38adhscx7c6epxp5fx", server=srv)
    assert proc.returncode == 3
    assert "404" in err(proc)


def test_another_clients_job_is_not_found(srv: Server) -> None:
    """Bob asking for alice's job gets what an unknown id gets: exit 3."""
    job_id = submit_test_job(srv, "test.echo")
    proc = jobpool("status", job_id, server=srv, key=BOB)
    assert proc.returncode == 3
    assert "404" in err(proc)


def test_without_a_key_the_server_refuses(srv: Server) -> None:
    """No key where the server needs one: 401, exit 3, and the server's reason."""
    proc = jobpool("status", "01m80z4h38adhscx7c6epxp5fx", server=srv, key=None)
    assert proc.returncode == 3
    assert "401" in err(proc)


def test_json_errors_print_the_problem_document(srv: Server) -> None:
    """With --json a refusal prints the server's problem document on stdout."""
    proc = jobpool("status", "01m80z4h38adhscx7c6epxp5fx", "--json", server=srv)
    assert proc.returncode == 3
    problem = orjson.loads(proc.stdout)
    assert problem["status"] == 404
    assert problem["title"]


def test_a_binary_result_needs_an_output(srv: Server, tmp_path: Path) -> None:
    """An image result is not printed: exit 2 without -o; ``-o -`` writes its bytes."""
    image = encode(photo_image(64, 48), "PNG")
    r = srv.post("/v1/images?op=grayscale", body=image, headers={"Content-Type": "image/png"})
    job_id = r.json()["job"]
    srv.wait_final(job_id)
    refused = jobpool("result", job_id, server=srv)
    assert refused.returncode == 2
    assert "-o FILE" in err(refused)
    piped = jobpool("result", job_id, "-o", "-", server=srv)
    assert piped.returncode == 0, err(piped)
    with Image.open(io.BytesIO(piped.stdout)) as im:
        assert (im.format, im.mode, im.size) == ("PNG", "L", (64, 48))


def test_the_result_of_a_job_still_running_exits_3(srv: Server, tmp_path: Path) -> None:
    """No result yet is the server's 409: exit 3."""
    release = tmp_path / "release"
    job_id = submit_test_job(srv, "test.wait_for", path=str(release))
    try:
        proc = jobpool("result", job_id, server=srv)
        assert proc.returncode == 3
        assert "409" in err(proc)
    finally:
        release.touch()
    srv.wait_final(job_id)


def test_cancel_a_queued_job_then_again(srv: Server) -> None:
    """``cancel`` ends a job that has not started (exit 0), and says the same again; a job
    that ended otherwise cannot be cancelled: exit 3."""
    job_id = submit_test_job(srv, "test.echo")
    srv.wait_final(job_id)
    scheduled = srv.post("/test/jobs/test.echo", json={}, headers={"Job-Delay": "600"}).json()[
        "job"
    ]
    for _ in range(2):
        proc = jobpool("cancel", scheduled, server=srv)
        assert proc.returncode == 0, err(proc)
        assert out(proc).strip() == f"{scheduled} cancelled (dequeued)"
    ended = jobpool("cancel", job_id, server=srv)
    assert ended.returncode == 3
    assert "409" in err(ended)


def test_cancel_stops_a_running_job(srv: Server) -> None:
    """A running job that heeds the request is stopped: ``cancelled (stopped)``."""
    job_id = submit_test_job(srv, "test.cooperative")
    wait_state(srv, job_id, "running")
    proc = jobpool("cancel", job_id, server=srv)
    assert proc.returncode == 0, err(proc)
    assert out(proc).strip() == f"{job_id} cancelled (stopped)"


# -- wait ---------------------------------------------------------------------------------


def test_wait_for_a_failed_job_exits_1(srv: Server) -> None:
    """A job that failed makes ``wait`` exit 1, with its error on the last line."""
    job_id = submit_test_job(srv, "test.fail", message="no luck")
    proc = jobpool("wait", job_id, server=srv)
    assert proc.returncode == 1
    assert out(proc).splitlines()[-1] == f"{job_id} failed RuntimeError: no luck"


def test_wait_for_a_batch_with_a_failed_item_exits_1(srv: Server) -> None:
    """A batch with a failed item ends failed: exit 1, the counts in the --json document."""
    job_id = submit_test_batch(srv, "test.slow_item", ["a", "bad", "c"])
    proc = jobpool("wait", job_id, "--json", server=srv)
    assert proc.returncode == 1
    doc = orjson.loads(proc.stdout)
    assert doc["state"] == "failed"
    assert doc["items"] == {"total": 3, "done": 2, "failed": 1}


def test_wait_for_a_cancelled_job_exits_1(srv: Server) -> None:
    """A cancelled job did not succeed: ``wait`` exits 1."""
    job_id = srv.post("/test/jobs/test.echo", json={}, headers={"Job-Delay": "600"}).json()["job"]
    assert srv.delete(f"/v1/jobs/{job_id}").status == 200
    proc = jobpool("wait", job_id, server=srv)
    assert proc.returncode == 1
    assert out(proc).splitlines()[-1].startswith(f"{job_id} cancelled")


def test_wait_past_its_timeout_exits_5(srv: Server, tmp_path: Path) -> None:
    """``wait --timeout`` gives up on a job still running: exit 5, and the job goes on."""
    release = tmp_path / "release"
    job_id = submit_test_job(srv, "test.wait_for", path=str(release))
    try:
        proc = jobpool("wait", job_id, "--timeout", "1", "--json", server=srv)
        assert proc.returncode == 5
        assert orjson.loads(proc.stdout)["state"] == "running"
    finally:
        release.touch()
    assert srv.wait_final(job_id)["state"] == "succeeded"


def tail(seen: bytearray) -> str:
    """The end of an output, for a failure's message (a live display's can be long)."""
    return repr(bytes(seen[-2000:]))


def read_until(stream: Any, pattern: bytes, seen: bytearray, timeout: float = 30) -> None:
    """Read ``stream`` (a pipe or a pty's master fd) into ``seen`` until ``pattern`` is in
    it; fail the test if it is not within ``timeout``."""
    fd = stream if isinstance(stream, int) else stream.fileno()
    deadline = time.monotonic() + timeout
    while pattern not in seen:
        left = deadline - time.monotonic()
        if left <= 0:
            raise AssertionError(f"no {pattern!r} in time; the output ends:\n{tail(seen)}")
        ready, _, _ = select.select([fd], [], [], left)
        if ready:
            try:
                chunk = os.read(fd, 65536)
            except OSError:  # a pty's master reads EIO once the other side is closed
                chunk = b""
            if not chunk:
                raise AssertionError(f"no {pattern!r} before the end:\n{tail(seen)}")
            seen += chunk


def test_plain_lines_say_each_state_at_once_and_counts_now_and_then() -> None:
    """Piped output gets a line for each new state, but counts that only moved on at most
    every COUNT_EVERY_S: a long batch does not fill a log."""
    now = [0.0]
    sink = io.StringIO()
    display = LineDisplay("j", sink, clock=lambda: now[0])

    def batch(state: str, done: int) -> dict[str, Any]:
        return {"state": state, "items": {"total": 100, "done": done, "failed": 0}}

    for t, doc in [
        (0, batch("queued", 0)), (1, batch("running", 0)), (2, batch("running", 5)),
        (5, batch("running", 20)), (11.5, batch("running", 60)), (12, batch("running", 61)),
        (13, batch("succeeded", 100)),
    ]:  # fmt: skip
        now[0] = t
        display.update(doc)
    assert sink.getvalue().splitlines() == [
        "j queued 0/100 items",
        "j running 0/100 items",
        "j running 60/100 items",
        "j succeeded 100/100 items",
    ]


def test_wait_without_a_terminal_prints_a_line_per_change(srv: Server, tmp_path: Path) -> None:
    """Piped, ``wait`` prints plain lines (no escape codes): one as it runs, one at the end."""
    release = tmp_path / "release"
    job_id = submit_test_job(srv, "test.wait_for", path=str(release))
    proc = subprocess.Popen(
        [str(JOBPOOL), "wait", job_id], env=command_env(srv),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )  # fmt: skip
    seen = bytearray()
    try:
        read_until(proc.stdout, f"{job_id} running\n".encode(), seen)
        release.touch()
        rest, errors = proc.communicate(timeout=RUN_DEADLINE_S)
    finally:
        release.touch()
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
    assert proc.returncode == 0, errors
    assert (bytes(seen) + rest).decode().splitlines() == [
        f"{job_id} running",
        f"{job_id} succeeded",
    ]


@contextlib.contextmanager
def in_a_terminal(
    args: list[str], env: dict[str, str]
) -> Iterator[tuple[subprocess.Popen[bytes], int]]:
    """Run the command with a pty as its terminal (100 columns); yield it and the
    master's fd, from which what it draws is read."""
    master, slave = os.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 30, 100, 0, 0))
    proc = subprocess.Popen(args, env=env, stdin=slave, stdout=slave, stderr=slave, close_fds=True)
    os.close(slave)
    try:
        yield proc, master
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
        proc.wait(10)
        os.close(master)


def test_wait_on_a_terminal_draws_a_progress_bar(srv: Server, tmp_path: Path) -> None:
    """On a terminal, ``wait`` draws a live bar of a batch's items (rich, ANSI), redrawn as
    items end, and the final state under it."""
    release = tmp_path / "release"
    job_id = submit_test_batch(srv, "test.held_item", ["a", "b", "c", "hold"], path=str(release))
    env = command_env(srv, TERM="xterm-256color", COLUMNS="100")
    env.pop("NO_COLOR", None)
    seen = bytearray()
    with in_a_terminal([str(JOBPOOL), "wait", job_id], env) as (proc, master):
        try:
            read_until(master, b"3/4 items", seen)  # the held item keeps it there
        finally:
            release.touch()
        read_until(master, f"{job_id} succeeded 4/4 items".encode(), seen)
        assert proc.wait(RUN_DEADLINE_S) == 0
    drawn = bytes(seen).decode(errors="replace")
    assert "\x1b[" in drawn  # colours and cursor control: drawn, not printed
    assert "\r\x1b[2K" in drawn  # the line redrawn in place
    assert "━" in drawn  # the bar itself
    partial = drawn.index("3/4 items")
    assert drawn.index("4/4 items") > partial
    assert f"{job_id} running" in drawn[:partial]


# -- the server unreachable or busy ---------------------------------------------------------


@pytest.fixture
def closed_port() -> Iterator[int]:
    """A loopback port bound but not listening: connections to it are refused."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        yield sock.getsockname()[1]


def test_a_server_that_is_down_exits_4(closed_port: int) -> None:
    """No server at the URL: the retries spent, exit 4 naming the URL."""
    proc = subprocess.run(
        [str(JOBPOOL), "--url", f"http://127.0.0.1:{closed_port}", "status", "x"],
        env=command_env(None), capture_output=True, timeout=RUN_DEADLINE_S, check=False,
    )  # fmt: skip
    assert proc.returncode == 4
    assert f"no answer from http://127.0.0.1:{closed_port}: cannot connect" in err(proc)


def test_connection_errors_are_retried_with_a_doubling_backoff(closed_port: int) -> None:
    """The client tries as often as its policy says, waiting longer each time, then raises
    Unreachable."""
    slept: list[float] = []
    policy = RetryPolicy(attempts=4, budget_s=60, backoff_s=0.5, backoff_max_s=1.5)
    client = Client(f"http://127.0.0.1:{closed_port}", ALICE, retry=policy, sleep=slept.append)
    with client, pytest.raises(Unreachable):
        client.job("01m80z4h38adhscx7c6epxp5fx")
    assert slept == [0.5, 1.0, 1.5]


def test_a_retry_after_past_the_budget_is_not_slept_through(
    server_factory: Callable[..., Server],
) -> None:
    """A 429 asking for longer than the client allows itself is given up at once: exit 4."""
    srv = server_factory(env={"JOBPOOL_CLIENT_RATE": "0.001", "JOBPOOL_CLIENT_BURST": "1"})
    srv.get("/v1/jobs/01m80z4h38adhscx7c6epxp5fx")  # the one token the bucket holds
    slept: list[float] = []
    client = Client(srv.url(""), ALICE, sleep=slept.append)
    with client, pytest.raises(Unavailable) as raised:
        client.job("01m80z4h38adhscx7c6epxp5fx")
    assert raised.value.status == 429
    assert raised.value.retry_after_s is not None
    assert raised.value.retry_after_s > 60
    assert slept == []
    proc = jobpool("status", "01m80z4h38adhscx7c6epxp5fx", server=srv)
    assert proc.returncode == 4
    assert "429" in err(proc)


def test_a_429_is_retried_after_its_retry_after(
    server_factory: Callable[..., Server], tmp_path: Path
) -> None:
    """A submit refused for the client's jobs in flight is sent again after Retry-After,
    and succeeds once there is room: one job made."""
    srv = server_factory(env={"JOBPOOL_CLIENT_MAX_INFLIGHT": "1"})
    release = tmp_path / "release"
    holder = submit_test_job(srv, "test.wait_for", path=str(release))
    slept: list[float] = []

    def make_room(seconds: float) -> None:
        slept.append(seconds)
        release.touch()
        srv.wait_final(holder)

    with Client(srv.url(""), ALICE, sleep=make_room) as client:
        job = client.submit("/test/jobs/test.echo", b"{}", "application/json")
        assert slept == [1.0]  # the server's Retry-After, once
        assert client.wait(job.job_id)["state"] == "succeeded"


# -- the Client class ---------------------------------------------------------------------


def test_client_wait_is_one_long_poll(srv: Server, tmp_path: Path) -> None:
    """``Client.wait`` holds one request open while the job runs, not a stream of polls."""
    release = tmp_path / "release"
    job_id = submit_test_job(srv, "test.wait_for", path=str(release))
    states: list[str] = []
    with Client(srv.url(""), ALICE) as client:
        waiter = threading.Thread(
            target=lambda: states.append(client.wait(job_id, poll_s=30)["state"]), daemon=True
        )
        waiter.start()
        time.sleep(2.5)  # the job runs a while: a client that polled would ask again
        release.touch()
        waiter.join(RUN_DEADLINE_S)
    assert states == ["succeeded"]
    asked = f'"method":"GET","path":"/v1/jobs/{job_id}",'
    assert srv.log_since_start().count(asked) == 1


def test_client_reads_documents_and_results(srv: Server) -> None:
    """The Client submits, waits, reads the result, and raises NotFound for a wrong id."""
    with Client(srv.url(""), ALICE) as client:
        job = client.submit_parcels(SEED_BATCH)
        assert job.location == f"/v1/jobs/{job.job_id}"
        doc = client.wait(job.job_id)
        assert doc["items"] == {"total": 9, "done": 9, "failed": 0}
        result = client.result(job.job_id)
        assert result.is_json
        assert result.json()["done"] == 9
        with pytest.raises(NotFound):
            client.job("01m80z4h38adhscx7c6epxp5fx")


# -- idempotency --------------------------------------------------------------------------


def test_the_same_idempotency_key_answers_with_the_same_job(
    srv: Server, batch_file: Path, tmp_path: Path
) -> None:
    """A submit repeated with its key is the first job, said to be replayed; the key with
    another batch is refused (exit 3)."""
    key = f'cli "test" \\ {time.time_ns()}'  # quoted and escaped on the way
    first = jobpool("submit", "parcels", str(batch_file), "--idempotency-key", key, server=srv)
    again = jobpool("submit", "parcels", str(batch_file), "--idempotency-key", key, server=srv)
    assert first.returncode == again.returncode == 0, err(again)
    job_id = out(first).split()[0]
    assert out(again).split()[0] == job_id
    assert "replayed" in out(again)
    assert "replayed" not in out(first)
    other = tmp_path / "other.json"
    other.write_bytes(orjson.dumps({"Data": SEED_BATCH["Data"][:1]}))
    refused = jobpool("submit", "parcels", str(other), "--idempotency-key", key, server=srv)
    assert refused.returncode == 3
    assert "422" in err(refused)


class LosingProxy:
    """A loopback proxy to the server that, on the first connection, passes the request on
    and reads the answer but drops it, closing the connection instead (an answer lost on
    the way back); later connections get their answers. One request per connection."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.lost: list[bytes] = []
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.listener.getsockname()[1]}"
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        with contextlib.suppress(OSError):  # the listener closed: done
            while True:
                conn, _ = self.listener.accept()
                with conn:
                    conn.settimeout(RUN_DEADLINE_S)
                    request = read_message(conn)
                    with socket.create_connection(("127.0.0.1", self.port), timeout=30) as up:
                        up.sendall(request)
                        answer = read_message(up)
                    if not self.lost:
                        self.lost.append(answer)
                        continue  # closed without a word
                    conn.sendall(answer)

    def close(self) -> None:
        self.listener.close()
        self.thread.join(10)


def read_message(sock: socket.socket) -> bytes:
    """One HTTP/1.1 message with a Content-Length body (or none), read whole."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            return data
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    found = re.search(rb"(?im)^content-length:\s*(\d+)", head)
    length = int(found.group(1)) if found else 0
    while len(body) < length:
        chunk = sock.recv(65536)
        if not chunk:
            break
        body += chunk
    return head + b"\r\n\r\n" + body


def test_a_submit_whose_answer_was_lost_is_retried_into_the_same_job(srv: Server) -> None:
    """The answer to a submit is lost: the client sends it again with the same key and
    gets the job the first made, not a second one."""
    assert srv.port is not None
    proxy = LosingProxy(srv.port)
    slept: list[float] = []
    try:
        with Client(proxy.url, ALICE, sleep=slept.append) as client:
            job = client.submit_parcels(SEED_BATCH)
    finally:
        proxy.close()
    assert len(proxy.lost) == 1
    first_head, _, first_body = proxy.lost[0].partition(b"\r\n\r\n")
    assert first_head.startswith(b"HTTP/1.1 202")
    assert job.job_id == orjson.loads(first_body)["job"]
    assert job.replayed
    assert len(slept) == 1  # one retry


# -- list ---------------------------------------------------------------------------------


def test_list_shows_your_jobs_newest_first_and_filters(
    server_factory: Callable[..., Server],
) -> None:
    """``list`` prints the caller's jobs newest first; ``--state`` (one, several) and
    ``--job`` filter them; a state that does not exist is refused (exit 3)."""
    srv = server_factory()
    echoes = [submit_test_job(srv, "test.echo", n=n) for n in range(3)]
    failed = submit_test_job(srv, "test.fail", message="no")
    scheduled = srv.post("/test/jobs/test.echo", json={}, headers={"Job-Delay": "600"})
    later = scheduled.json()["job"]
    for job_id in [*echoes, failed]:
        srv.wait_final(job_id)

    listed = jobpool("list", server=srv)
    assert listed.returncode == 0, err(listed)
    header, *rows = out(listed).splitlines()
    assert header.split() == ["ID", "JOB", "STATE", "CREATED"]
    ids = [row.split()[0] for row in rows]
    assert set(ids) >= {*echoes, failed, later}
    assert ids == sorted(ids, reverse=True)

    only_failed = jobpool("list", "--state", "failed", server=srv)
    assert [row.split()[:3] for row in out(only_failed).splitlines()[1:]] == [
        [failed, "test.fail", "failed"]
    ]
    for args in (["--state", "failed,scheduled"], ["--state", "failed", "--state", "scheduled"]):
        both = jobpool("list", *args, "--json", server=srv)
        assert [d["id"] for d in orjson.loads(both.stdout)["jobs"]] == sorted(
            [failed, later], reverse=True
        )
    assert out(jobpool("list", server=srv, key=BOB)).strip() == "no jobs"  # alice's are hers
    bogus = jobpool("list", "--state", "sleeping", server=srv)
    assert bogus.returncode == 3
    assert "422" in err(bogus)


def test_list_pages_with_a_cursor_or_all_at_once(server_factory: Callable[..., Server]) -> None:
    """``--limit`` cuts a page and names the next cursor; ``--cursor`` gives the next page;
    ``--all`` follows every cursor."""
    srv = server_factory()
    made = sorted((submit_test_job(srv, "test.echo", n=n) for n in range(5)), reverse=True)
    first = jobpool("list", "--job", "test.echo", "--limit", "2", "--json", server=srv)
    page = orjson.loads(first.stdout)
    assert [d["id"] for d in page["jobs"]] == made[:2]
    assert page["next_cursor"]
    text = jobpool("list", "--job", "test.echo", "--limit", "2", server=srv)
    assert f"--cursor {page['next_cursor']}" in err(text)
    second = jobpool(
        "list", "--job", "test.echo", "--limit", "2", "--cursor", page["next_cursor"],
        "--json", server=srv,
    )  # fmt: skip
    assert [d["id"] for d in orjson.loads(second.stdout)["jobs"]] == made[2:4]
    every = jobpool("list", "--job", "test.echo", "--limit", "2", "--all", "--json", server=srv)
    walked = orjson.loads(every.stdout)
    assert [d["id"] for d in walked["jobs"]] == made
    assert walked["next_cursor"] is None


def test_the_readme_lists_every_exit_status() -> None:
    """The README's table of exit statuses has a row for each one the command uses."""
    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    section = readme.split("## Command-line client", 1)[1].split("\n## ", 1)[0]
    rows = [int(code) for code in re.findall(r"^\| `(\d+)` \|", section, re.MULTILINE)]
    assert rows == [status.value for status in Exit]
    assert set(EXIT_MEANINGS) == set(Exit)
