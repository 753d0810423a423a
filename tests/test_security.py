"""Security over HTTP on the real server: API keys, job isolation, fair limits, limits."""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from service import ids
from service.keys import entry_for, new_key
from tests.clients import ALICE, BOB
from tests.conftest import SEED_BATCH
from tests.server import Response, Server, refused_start

#: Authorization values that are not a valid key, each with the challenge error expected.
BAD_AUTHORIZATION = [
    ("Bearer jp_not-a-key-anyone-has-0000000000000000000000", 'error="invalid_token"'),
    (f"Bearer {ALICE}x", 'error="invalid_token"'),
    (f"Bearer {ALICE[:-1]}", 'error="invalid_token"'),
    ("Bearer", 'error="invalid_token"'),
    ("Bearer ", 'error="invalid_token"'),
    (f"Bearer  {ALICE} extra", 'error="invalid_token"'),
    ("Bearer jp_with space", 'error="invalid_token"'),
    ("Bearer " + "a" * 600, 'error="invalid_token"'),
    (f"Basic {ALICE}", None),
    (ALICE, None),
    ("Token abc", None),
]


@pytest.fixture
def gate(tmp_path: Path, server_factory: Callable[..., Server]) -> Iterator[Path]:
    """A file test.wait_for jobs wait for; it appears at the end of the test at the latest
    (before the servers stop, so that a failed check does not leave a job waiting)."""
    path = tmp_path / "gate"
    yield path
    path.touch()


def fresh(headers: dict[str, str] | None = None) -> dict[str, str]:
    """Headers that make the request use a new connection (so any worker may answer)."""
    return {**(headers or {}), "Connection": "close"}


def assert_unauthorized(r: Response, challenge_error: str | None) -> None:
    assert r.status == 401, r
    assert r.headers["Content-Type"] == "application/problem+json"
    challenge = r.headers["WWW-Authenticate"]
    assert challenge.startswith('Bearer realm="jobpool"')
    if challenge_error:
        assert challenge_error in challenge
    else:
        assert "error=" not in challenge


def test_api_routes_need_a_valid_key_and_health_routes_do_not(server: Server) -> None:
    """No key, a wrong key or a malformed header: 401 + WWW-Authenticate; health stays open."""
    for method, path in [
        ("POST", "/v1/parcels"),
        ("GET", "/v1/parcels/1"),
        ("GET", f"/v1/jobs/{ids.new_id()}"),
        ("GET", f"/v1/jobs/{ids.new_id()}/result"),
        ("DELETE", f"/v1/jobs/{ids.new_id()}"),
        ("GET", "/no/such/route"),
    ]:
        r = server.request(method, path, json=SEED_BATCH if method == "POST" else None, key=None)
        assert_unauthorized(r, None)
        assert "API key" in r.json()["detail"]
    for value, challenge_error in BAD_AUTHORIZATION:
        r = server.post("/v1/parcels", json=SEED_BATCH, headers={"Authorization": value})
        assert_unauthorized(r, challenge_error)
    for path in ("/healthz", "/readyz"):
        assert server.get(path, key=None).status == 200
    assert server.post("/v1/parcels", json=SEED_BATCH).status == 202
    r = server.post("/v1/parcels", json=SEED_BATCH, headers={"Authorization": f"bearer {BOB}"})
    assert r.status == 202, "the scheme is case-insensitive"
    log = server.log()
    assert ALICE not in log
    assert BOB not in log


def test_another_clients_jobs_and_parcels_are_404_on_every_route(
    server_factory: Callable[..., Server], gate: Path
) -> None:
    """Bob gets the unknown-id 404 for each of alice's jobs and parcels, and changes nothing."""
    srv = server_factory(workers=1, env={"JOBPOOL_IO_THREADS": "1"})
    parcels = srv.post("/v1/parcels", json=SEED_BATCH).json()["job"]
    assert srv.wait_final(parcels)["state"] == "succeeded"
    running = srv.post("/test/jobs/test.wait_for", json={"path": str(gate)}).json()["job"]
    queued = srv.post("/test/jobs/test.echo", json={"x": 1}).json()["job"]
    assert srv.get(f"/v1/jobs/{queued}").json()["state"] == "queued"
    unknown = ids.new_id()

    def as_bob(method: str, path: str, job_id: str) -> Response:
        r = srv.request(method, path.format(job_id), key=BOB)
        assert r.status == 404, (method, path, r)
        assert r.headers["Content-Type"] == "application/problem+json"
        return r

    for method, path in [
        ("GET", "/v1/jobs/{}"),
        ("GET", "/v1/jobs/{}/result"),
        ("DELETE", "/v1/jobs/{}"),
    ]:
        for job_id in (parcels, running, queued):
            theirs = as_bob(method, path, job_id).json()
            nobodys = as_bob(method, path, unknown).json()
            # The same answer as for an id that does not exist: nothing to probe.
            assert theirs == {**nobodys, "detail": nobodys["detail"].replace(unknown, job_id)}
    for item in SEED_BATCH["Data"]:
        assert srv.get(f"/v1/parcels/{item['id']}", key=BOB).status == 404
        assert srv.get(f"/v1/parcels/{item['id']}").json() == item
    # Bob's DELETE cancelled nothing: alice's queued job runs once the gate opens.
    gate.touch()
    assert srv.wait_final(queued)["state"] == "succeeded"
    assert srv.get(f"/v1/jobs/{queued}/result").json() == {"x": 1}
    # Bob's own parcels with the same ids are his alone.
    bobs = {"Data": [{"id": "1", "time": "2017-01-01T00:00:01Z", "data": "bob's"}]}
    job = srv.post("/v1/parcels", json=bobs, key=BOB).json()["job"]
    assert srv.get(f"/v1/jobs/{job}", key=ALICE).status == 404
    for _ in range(200):
        if srv.get("/v1/parcels/1", key=BOB).status == 200:
            break
        time.sleep(0.05)
    assert srv.get("/v1/parcels/1", key=BOB).json()["data"] == "bob's"
    assert srv.get("/v1/parcels/1").json()["data"] == "abc"


def test_a_client_at_its_job_cap_gets_429_on_every_worker_while_another_is_served(
    server_factory: Callable[..., Server], gate: Path
) -> None:
    """JOBPOOL_CLIENT_MAX_INFLIGHT counts alice's jobs over both workers; bob is not held up."""
    srv = server_factory(
        env={"JOBPOOL_CLIENT_MAX_INFLIGHT": "3", "JOBPOOL_CLIENT_RATE": "0"}, workers=2
    )
    accepted: dict[str, list[str]] = {}  # worker pid -> alice's jobs it took
    refused_by: set[str] = set()
    for _ in range(60):
        r = srv.post("/test/jobs/test.wait_for", json={"path": str(gate)}, headers=fresh())
        worker = r.headers["X-Test-Worker"]
        if r.status == 202:
            accepted.setdefault(worker, []).append(r.json()["job"])
        else:
            assert r.status == 429, r
            assert r.headers["Retry-After"] == "1"
            assert "JOBPOOL_CLIENT_MAX_INFLIGHT" in r.json()["detail"]
            refused_by.add(worker)
        if len(refused_by) == 2:
            break
    assert sum(map(len, accepted.values())) == 3
    # Both workers refused: one of them holds fewer than 3 of her jobs, so the cap it
    # applied is the host's, not its own.
    assert len(refused_by) == 2, (accepted, refused_by)
    # Bob is served on every worker while alice is at her cap (each of his jobs waited for,
    # so his own cap of 3 never comes into it, however slow the machine).
    for _ in range(4):
        r = srv.post("/test/jobs/test.echo", json={}, headers=fresh({"Prefer": "wait=30"}), key=BOB)
        assert r.status == 200, r
    gate.touch()
    for jobs in accepted.values():
        for job in jobs:
            assert srv.wait_final(job)["state"] == "succeeded"
    # Her jobs ended, her cap is free again.
    r = srv.post("/test/jobs/test.echo", json={}, headers={"Prefer": "wait=10"})
    assert r.status == 200, r


def test_a_client_over_its_rate_gets_429_on_every_worker_while_another_is_served(
    server_factory: Callable[..., Server],
) -> None:
    """A burst of 5 at 0.01 request/s is the host's: 5 of alice's requests pass, then 429."""
    srv = server_factory(env={"JOBPOOL_CLIENT_RATE": "0.01", "JOBPOOL_CLIENT_BURST": "5"})
    unknown = ids.new_id()
    answers = [srv.get(f"/v1/jobs/{unknown}", headers=fresh()) for _ in range(12)]
    assert [r.status for r in answers] == [404] * 5 + [429] * 7
    limited = answers[-1]
    assert limited.headers["Content-Type"] == "application/problem+json"
    assert "JOBPOOL_CLIENT_RATE" in limited.json()["detail"]
    assert 1 <= int(limited.headers["Retry-After"]) <= 100
    # Bob has his own bucket, and health checks take no token.
    assert [srv.get(f"/v1/jobs/{unknown}", key=BOB).status for _ in range(5)] == [404] * 5
    assert srv.get("/healthz", key=None).status == 200
    assert srv.get(f"/v1/jobs/{unknown}").status == 429


def test_start_up_is_refused_without_keys(tmp_path: Path) -> None:
    """Auth on (the default) and no keys: gunicorn exits 2 with one line naming the fix."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("JOBPOOL_")}
    env["JOBPOOL_STATE_DIR"] = str(tmp_path / "state")
    for extra in ({}, {"JOBPOOL_API_KEYS": " "}, {"JOBPOOL_API_KEYS_FILE": str(tmp_path)}):
        status, lines = refused_start({**env, **extra})
        assert status == 2, lines
        assert len(lines) == 1, lines
        assert lines[0].startswith("jobpool: JOBPOOL_API_KEYS"), lines
        assert "JOBPOOL_AUTH=off" in lines[0] or "cannot read" in lines[0], lines


def test_auth_off_serves_everyone_as_anonymous_and_says_so(
    server_factory: Callable[..., Server],
) -> None:
    """JOBPOOL_AUTH=off starts without keys, logs a warning, and needs no Authorization."""
    srv = server_factory(env={"JOBPOOL_AUTH": "off", "JOBPOOL_API_KEYS": ""}, workers=1)
    assert "JOBPOOL_AUTH=off" in srv.log()
    assert "for local use only" in srv.log()
    job = srv.post("/v1/parcels", json=SEED_BATCH, key=None).json()["job"]
    assert srv.wait_final(job)["state"] == "succeeded"
    assert srv.get("/v1/parcels/1", key=None).status == 200


def test_keys_file_changes_apply_without_a_restart(
    server_factory: Callable[..., Server], tmp_path: Path
) -> None:
    """Rotate: add carol's new key, then remove the old one; each takes effect while running."""
    old, rotated = new_key(), new_key()
    keys = tmp_path / "api-keys"
    keys.write_text(f"# test keys\n{entry_for('carol', old)}\n")
    srv = server_factory(env={"JOBPOOL_API_KEYS": "", "JOBPOOL_API_KEYS_FILE": str(keys)})

    def settles(key: str, status: int) -> bool:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            answers = {srv.get("/v1/parcels/1", key=key, headers=fresh()).status for _ in range(4)}
            if answers == {status}:
                return True
            time.sleep(0.2)
        return False

    assert srv.get("/v1/parcels/1", key=old).status == 404  # authenticated; no such parcel
    assert srv.get("/v1/parcels/1", key=rotated).status == 401
    keys.write_text(f"{entry_for('carol', old)}\n{entry_for('carol', rotated)}\n")
    assert settles(rotated, 404), "the added key is accepted on every worker"
    keys.write_text(f"{entry_for('carol', rotated)}\n")
    assert settles(old, 401), "the removed key is refused on every worker"
    keys.write_text("carol:not-a-hash\n")  # a broken file keeps the keys it replaced
    time.sleep(2.5)
    assert srv.get("/v1/parcels/1", key=rotated).status == 404
    assert "not reloaded" in srv.log()
    assert old not in srv.log()
    assert rotated not in srv.log()


def raw(srv: Server, request: bytes) -> bytes:
    """Send bytes as they are and read the whole answer (the server closes after it)."""
    assert srv.port is not None
    with socket.create_connection(("127.0.0.1", srv.port), timeout=10) as sock:
        sock.sendall(request)
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks)


def test_request_shape_limits(server_factory: Callable[..., Server]) -> None:
    """Headers, URL, query and bodies over their limits are refused; the server serves on."""
    srv = server_factory(
        workers=1,
        env={
            "JOBPOOL_HEADER_COUNT_MAX": "20",
            "JOBPOOL_HEADER_BYTES_MAX": "1024",
            "JOBPOOL_REQUEST_LINE_MAX": "4096",
            "JOBPOOL_URL_MAX": "512",
            "JOBPOOL_QUERY_PARAMS_MAX": "5",
        },
    )
    auth = f"Authorization: Bearer {ALICE}\r\n".encode()
    many = b"".join(b"X-H%d: v\r\n" % i for i in range(25))
    answer = raw(srv, b"GET /healthz HTTP/1.1\r\nHost: x\r\n" + many + b"\r\n")
    assert answer.startswith(b"HTTP/1.1 431"), answer[:80]
    answer = raw(srv, b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: " + b"v" * 2000 + b"\r\n\r\n")
    assert answer.startswith(b"HTTP/1.1 431"), answer[:80]
    answer = raw(srv, b"GET /" + b"a" * 5000 + b" HTTP/1.1\r\nHost: x\r\n\r\n")
    assert answer.split(b" ", 2)[1] in (b"400", b"414"), answer[:80]
    long_path = "/v1/jobs/" + "a" * 600
    r = srv.get(long_path)
    assert r.status == 414
    assert "JOBPOOL_URL_MAX" in r.json()["detail"]
    r = srv.get(f"/v1/jobs/{ids.new_id()}?a=1&b=2&c=3&d=4&e=5&f=6")
    assert r.status == 400
    assert "JOBPOOL_QUERY_PARAMS_MAX" in r.json()["detail"]
    assert srv.get(f"/v1/jobs/{ids.new_id()}?a=1&b=2").status == 404
    r = srv.request("GET", f"/v1/jobs/{ids.new_id()}", body=b"x" * 100)
    assert r.status == 413
    assert "takes no body" in r.json()["detail"]
    within = f"GET /v1/jobs/{ids.new_id()} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
    answer = raw(srv, within.encode() + auth + b"\r\n")
    assert answer.startswith(b"HTTP/1.1 404"), answer[:80]
    assert srv.get("/healthz").status == 200


@pytest.mark.parametrize("value", ["lots", "-1", "nan", "1e99"])
def test_a_bad_client_rate_stops_start_up_with_one_line(tmp_path: Path, value: str) -> None:
    """JOBPOOL_CLIENT_RATE that is not a number in range stops gunicorn with one line."""
    env = {**os.environ, "JOBPOOL_CLIENT_RATE": value, "JOBPOOL_STATE_DIR": str(tmp_path)}
    status, lines = refused_start(env)
    assert status == 2
    assert len(lines) == 1
    assert lines[0].startswith("jobpool: JOBPOOL_CLIENT_RATE: ")
