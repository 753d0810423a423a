"""The workloads over HTTP on the real server: URL fetch, images, fan-out search."""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import io
from collections.abc import Callable
from pathlib import Path

import pytest
from PIL import Image

from tests import imagegen
from tests.providers import Provider
from tests.server import Server
from tests.upstream import UpstreamServer

CASES = Path(__file__).parent / "cases"
IMAGE_OPS = [
    line.split("\t")
    for line in (CASES / "image_ops.txt").read_text().splitlines()
    if line and not line.startswith("#")
]
WAIT = {"Prefer": "wait=30"}


@pytest.fixture(scope="module")
def open_server(tmp_path_factory: pytest.TempPathFactory) -> object:
    """One server with the SSRF guard lifted (the test upstream is on loopback)."""
    srv = Server(
        tmp_path_factory.mktemp("open") / "state",
        env={"JOBPOOL_FETCH_ALLOW_PRIVATE": "1", "JOBPOOL_IMAGE_BODY_MAX": "3000000"},
    )
    srv.start()
    yield srv
    srv.stop()


def test_fetch_returns_status_size_hash_and_body(open_server: Server) -> None:
    """A fetch job reports status, size, sha256 and the body of a real local upstream."""
    with UpstreamServer() as up:
        r = open_server.post("/v1/fetch", json={"url": up.url("/ok")}, headers=WAIT)
    assert r.status == 200, r
    result = r.json()
    body = UpstreamServer.OK_BODY
    assert result["status"] == 200
    assert result["size"] == len(body)
    assert result["sha256"] == hashlib.sha256(body).hexdigest()
    assert base64.b64decode(result["body_base64"]) == body
    assert result["headers"]["content-type"].startswith("text/plain")


def test_fetch_failure_fails_the_job_with_the_reason(open_server: Server) -> None:
    """Too many redirects fail the job with a clear reason; the server serves on."""
    with UpstreamServer() as up:
        r = open_server.post("/v1/fetch", json={"url": up.url("/redirect-chain/9")}, headers=WAIT)
    assert r.status == 200
    doc = r.json()
    assert doc["state"] == "failed"
    assert "redirect" in doc["error"]


def test_fetch_retries_an_upstream_that_is_busy_then_answers(open_server: Server) -> None:
    """Two 503s, then 200: the fetch job succeeds on its third attempt with the 200, each
    busy answer recorded as a failed attempt."""
    with UpstreamServer() as up:
        r = open_server.post("/v1/fetch", json={"url": up.url("/busy?key=a&fails=2")})
        doc = open_server.wait_final(r.json()["job"], timeout=60)
    assert (doc["state"], doc["attempts"]) == ("succeeded", 3), doc
    assert [a["error"] for a in doc["failed_attempts"]] == [
        "UpstreamBusy: the upstream answered HTTP 503"
    ] * 2
    result = open_server.get(f"/v1/jobs/{doc['id']}/result").json()
    assert result["status"] == 200


def test_fetch_honours_retry_after_and_keeps_the_last_answer(open_server: Server) -> None:
    """A 429 with Retry-After: 2 puts the next attempt 2 s later at least; an upstream
    still busy at the last attempt is the job's result, its status as it came."""
    with UpstreamServer() as up:
        r = open_server.post(
            "/v1/fetch", json={"url": up.url("/busy?key=b&fails=9&status=429&after=2")}
        )
        doc = open_server.wait_final(r.json()["job"], timeout=120)
    assert (doc["state"], doc["attempts"]) == ("succeeded", 4), doc
    first, second = doc["failed_attempts"][:2]
    gap = dt.datetime.fromisoformat(second["started_at"]) - dt.datetime.fromisoformat(
        first["finished_at"]
    )
    assert gap.total_seconds() >= 2 - 0.002
    result = open_server.get(f"/v1/jobs/{doc['id']}/result").json()
    assert (result["status"], result["headers"]["retry-after"]) == (429, "2")


def test_a_fetch_another_attempt_cannot_mend_is_not_retried(server: Server) -> None:
    """A name that does not resolve fails its fetch job on the first attempt: no retry
    (nor for an address the guard refuses: see test_fetch_task)."""
    r = server.post("/v1/fetch", json={"url": "http://no-such-host.invalid/"}, headers=WAIT)
    doc = r.json()
    assert (doc["state"], doc["attempts"]) == ("failed", 1), doc
    assert "resolve" in doc["error"] or "dns" in doc["error"].lower(), doc
    assert "failed_attempts" not in doc


@pytest.mark.parametrize(
    "url",
    [
        "http://169.254.169.254/latest/meta-data/",
        "http://[fd00:ec2::254]/latest/meta-data/",
        "http://2852039166/",
        "http://0xa9fea9fe/",
        "http://127.0.0.1:8000/",
        "http://localhost/",
        "http://10.0.0.1/",
        "http://[::ffff:169.254.169.254]/",
        "file:///etc/passwd",
        "http://user:pw@example.com/",
    ],
)
def test_guarded_fetch_refuses_private_addresses_at_submit(server: Server, url: str) -> None:
    """With the guard on (the default), private and metadata URLs are a 422 at submit."""
    r = server.post("/v1/fetch", json={"url": url})
    assert r.status == 422, r
    assert r.json()["detail"].startswith("refused URL")


def test_guarded_fetch_fails_a_name_it_cannot_resolve(server: Server) -> None:
    """A name decided only by DNS fails in the job, with the reason, not at submit."""
    r = server.post("/v1/fetch", json={"url": "http://nothing.invalid/"}, headers=WAIT)
    assert r.status == 200
    assert r.json()["state"] == "failed"
    assert "nothing.invalid" in r.json()["error"]


@pytest.mark.parametrize(("query", "fmt", "expected"), IMAGE_OPS)
def test_image_operations_produce_the_right_image(
    open_server: Server, query: str, fmt: str, expected: str
) -> None:
    """Each operation's output opens with the expected format, size and mode."""
    data = imagegen.photo_like(160, 120, fmt)
    r = open_server.post(
        f"/v1/images?{query}", body=data, headers={"Content-Type": f"image/{fmt}", **WAIT}
    )
    assert r.status == 200, r
    out = Image.open(io.BytesIO(r.data))
    want_format, width, height, mode = expected.split()
    assert (out.format, out.size, out.mode) == (want_format, (int(width), int(height)), mode)
    assert r.headers["Content-Type"] == Image.MIME[want_format]


def test_image_result_is_served_from_the_job(open_server: Server) -> None:
    """Without Prefer: wait, the 202's job serves the image bytes from /result."""
    r = open_server.post(
        "/v1/images?op=grayscale", body=imagegen.photo_like(64, 48),
        headers={"Content-Type": "image/jpeg"},
    )  # fmt: skip
    assert r.status == 202
    job_id = r.json()["job"]
    assert open_server.wait_final(job_id)["state"] == "succeeded"
    result = open_server.get(f"/v1/jobs/{job_id}/result")
    assert result.headers["Content-Type"] == "image/jpeg"
    assert Image.open(io.BytesIO(result.data)).mode == "L"


@pytest.mark.parametrize(
    ("make", "query", "ctype", "status"),
    [
        (imagegen.not_an_image, "op=grayscale", "image/png", 415),
        (imagegen.bomb, "op=grayscale", "image/png", 422),
        (lambda: imagegen.photo_like(40, 30), "op=spin", "image/jpeg", 422),
        (lambda: imagegen.photo_like(40, 30), "op=resize&width=0&height=5", "image/jpeg", 422),
        (
            lambda: imagegen.photo_like(40, 30),
            "op=crop&left=30&top=0&width=20&height=5",
            "image/jpeg",
            422,
        ),
        (lambda: imagegen.photo_like(40, 30), "op=grayscale", "text/plain", 415),
        (lambda: b"x" * 3_000_001, "op=grayscale", "image/jpeg", 413),
    ],
)
def test_bad_images_are_refused_at_submit(
    open_server: Server, make: Callable[[], bytes], query: str, ctype: str, status: int
) -> None:
    """Non-images, bombs, bad ops and parameters, wrong types and huge bodies get a 4xx."""
    r = open_server.post(f"/v1/images?{query}", body=make(), headers={"Content-Type": ctype})
    assert r.status == status, r
    assert r.headers["Content-Type"] == "application/problem+json"
    assert open_server.get("/healthz").status == 200


def test_truncated_image_fails_its_job_with_the_reason(open_server: Server) -> None:
    """A truncated JPEG passes the header check and fails in the job, saying why."""
    data = imagegen.truncated(imagegen.photo_like(200, 150))
    r = open_server.post(
        "/v1/images?op=grayscale", body=data, headers={"Content-Type": "image/jpeg", **WAIT}
    )
    assert r.status == 200
    doc = r.json()
    assert doc["state"] == "failed"
    assert "truncated" in doc["error"].lower() or "decode" in doc["error"].lower()


def test_a_crashing_cpu_task_fails_only_its_job(open_server: Server) -> None:
    """A task that kills its process fails its job; the pool is rebuilt and serves on."""
    crash = open_server.post("/test/jobs/test.cpu_crash", json={}, headers=WAIT).json()
    assert crash["state"] == "failed"
    assert "died" in crash["error"]
    fine = open_server.post("/test/jobs/test.cpu_spin", json={"seconds": 0.01}, headers=WAIT)
    assert fine.status == 200
    assert fine.json()["nice"] >= 10


@pytest.mark.parametrize(
    ("deadline_ms", "provider_timeout_ms"), [("1500", "800"), ("800", "5000")],
    ids=["provider-timeout-first", "deadline-first"],
)  # fmt: skip
def test_search_merges_providers_and_reports_each(
    server_factory: Callable[..., Server], deadline_ms: str, provider_timeout_ms: str
) -> None:
    """Two good providers merge by score; slow, failing and broken ones are reported."""
    a_items = [
        {"id": "a1", "title": "A one", "url": "https://a/1", "score": 0.9},
        {"id": "a2", "title": "A two", "url": "https://shared/x", "score": 0.5},
    ]
    b_items = [
        {"id": "b1", "title": "B one", "url": "https://b/1", "score": 0.7},
        {"id": "b2", "title": "B two", "url": "https://shared/x", "score": 0.6},
    ]
    with (
        Provider("ok", items=a_items) as a,
        Provider("ok", items=b_items) as b,
        Provider("slow", items=a_items, delay_s=3) as slow,
        Provider("error") as broken,
        Provider("garbage") as garbage,
    ):
        providers = ",".join(
            f"{n}={p.url}"
            for n, p in (("a", a), ("b", b), ("slow", slow), ("broken", broken),
                         ("garbage", garbage))
        )  # fmt: skip
        srv = server_factory(env={
            "JOBPOOL_SEARCH_PROVIDERS": providers,
            "JOBPOOL_SEARCH_DEADLINE_MS": deadline_ms,
            "JOBPOOL_SEARCH_PROVIDER_TIMEOUT_MS": provider_timeout_ms,
            "JOBPOOL_FETCH_ALLOW_PRIVATE": "1",
        })  # fmt: skip
        r = srv.get("/v1/search?q=hello+world&limit=10")
        assert r.status == 200, r
        doc = r.json()
        assert a.queries[-1] == {"q": ["hello world"], "limit": ["10"]}
    assert [i["id"] for i in doc["items"]] == ["a1", "b1", "b2"]
    assert [i["provider"] for i in doc["items"]] == ["a", "b", "b"]
    status = {p["name"]: p for p in doc["providers"]}
    assert status["a"]["status"] == "ok"
    assert status["a"]["count"] == 2
    assert status["slow"]["status"] == "timeout"
    assert status["broken"]["status"] == "error"
    assert "HTTP 500" in status["broken"]["error"]
    assert status["garbage"]["status"] == "error"
    assert "not JSON" in status["garbage"]["error"]


@pytest.mark.parametrize(
    "query", ["", "q=", "q=%20", "q=x&limit=0", "q=x&limit=abc", "q=x&limit=", "q=" + "x" * 300]
)
def test_search_refuses_bad_queries(server: Server, query: str) -> None:
    """A missing or over-long q, or a bad limit, is a 422."""
    assert server.get(f"/v1/search?{query}").status == 422


def test_an_undeclared_method_is_405_even_with_a_body(server: Server) -> None:
    """GET with a body on a POST-only route is 405 (not 413): routing decides first."""
    r = server.request("GET", "/v1/fetch", json={"url": "http://example.test/"})
    assert r.status == 405


def test_a_query_of_control_characters_is_a_query(server: Server) -> None:
    """Only spaces, tabs and line breaks count as blank in q, as /openapi.json says."""
    assert server.get("/v1/search?q=%1D").status == 200
