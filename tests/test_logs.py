"""Logs: one JSON object per line, the access log's fields, and never a secret."""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable
from typing import Any

import orjson
import pytest

from service.logs import REDACTED, JsonFormatter, Redactor, logconfig_dict
from tests import imagegen
from tests.clients import ALICE, bearer
from tests.conftest import SEED_BATCH
from tests.server import Server

#: (text, what must not survive, what must survive). Lines as they reach the formatter's
#: output: plain, inside JSON strings (escaped quotes), reprs, URLs.
REDACTIONS = [
    ("Authorization: Bearer abc.DEF-123_x", "abc.DEF-123_x", "Authorization: Bearer"),
    ("authorization=Basic dXNlcjpwYXNz", "dXNlcjpwYXNz", "authorization=Basic"),
    ("the upstream said bearer   tok3n.x and left", "tok3n.x", "and left"),
    ('{"api_key":"k-123456"}', "k-123456", '"api_key"'),
    ('{\\"apiKey\\": \\"k-123456\\"}', "k-123456", "apiKey"),
    ("{'x-api-key': 'k-123456', 'other': 1}", "k-123456", "'other': 1"),
    ("GET /v1/search?q=a&api_key=k-123456&b=2", "k-123456", "&b=2"),
    ("password=hunter22 user=bob", "hunter22", "user=bob"),
    ("PASSWORD: 'hunter22'", "hunter22", "PASSWORD"),
    ("client_secret=s3cr3t-v4lue", "s3cr3t-v4lue", "client_secret"),
    ("access_token=at-999&x=1", "at-999", "x=1"),
    ("fetch https://bob:pa55word@example.test/x failed", "pa55word", "bob:"),
    ("Proxy-Authorization: Digest abcdef0123", "abcdef0123", "Proxy-Authorization"),
]
#: Lines that hold no secret come out unchanged.
UNCHANGED = [
    "job store shard 0 claimed in /var/lib/jobpool",
    "cpu-tokens: 2 of 2 held",
    "token_count=3 keys=4",
    "worker slot 1: 1 cpu processes",
    "POST /v1/parcels 202",
    "https://example.test/path?q=1",
]


@pytest.mark.parametrize(("text", "secret", "kept"), REDACTIONS)
def test_redactor_scrubs_what_looks_like_a_secret(text: str, secret: str, kept: str) -> None:
    """Bearer tokens, secret-named key=value pairs and URL passwords become [REDACTED]."""
    out = Redactor()(text)
    assert secret not in out
    assert REDACTED in out
    assert kept in out


@pytest.mark.parametrize("text", UNCHANGED)
def test_redactor_leaves_ordinary_lines_alone(text: str) -> None:
    """A line with no secret in it is not touched."""
    assert Redactor()(text) == text


def record(msg: str, *args: Any, **extra: Any) -> logging.LogRecord:
    return logging.getLogger("t").makeRecord("t", logging.INFO, __file__, 1, msg, args, None,
                                             extra=extra)  # fmt: skip


def test_formatter_writes_one_json_object_per_line() -> None:
    """A record becomes one line of JSON with ts, level, logger, msg, pid and its extras."""
    line = JsonFormatter().format(record("a\nb %s", "c", route="/v1/x", status=202))
    assert "\n" not in line
    doc = orjson.loads(line)
    assert doc["msg"] == "a\nb c"
    assert doc["level"] == "info"
    assert doc["logger"] == "t"
    assert doc["route"] == "/v1/x"
    assert doc["status"] == 202
    assert doc["ts"].endswith("Z")
    assert len(doc["ts"]) == len("2026-01-01T00:00:00.000Z")


def test_formatter_puts_the_traceback_in_exc() -> None:
    """An exception's traceback is one field of the same line, scrubbed like the rest."""
    try:
        raise RuntimeError("upstream refused Bearer abc123def")
    except RuntimeError:
        rec = logging.getLogger("t").makeRecord(
            "t", logging.ERROR, __file__, 1, "failed", (), sys.exc_info()
        )
    line = JsonFormatter().format(rec)
    doc = orjson.loads(line)
    assert "RuntimeError" in doc["exc"]
    assert "abc123def" not in line


def test_logconfig_routes_the_access_log_to_stdout_and_the_rest_to_stderr() -> None:
    """gunicorn's logconfig_dict: JSON everywhere; access on stdout; the level applies."""
    config = logconfig_dict("debug")
    assert config["root"] == {"level": "DEBUG", "handlers": ["stderr"]}
    assert config["loggers"]["jobpool.access"]["handlers"] == ["stdout"]
    assert config["loggers"]["gunicorn.error"]["level"] == "DEBUG"
    assert config["handlers"]["stdout"]["stream"] == "ext://sys.stdout"


# -- the real server ----------------------------------------------------------------------

SECRETS = [
    "AAAA1111secret",
    "BBBB2222secret",
    "CCCC3333secret",
    "DDDD4444secret",
    "EEEE5555secret",
    "FFFF6666secret",
    "GGGG7777secret",
    "HHHH8888secret",
]


def test_no_secret_reaches_a_log_line_even_at_debug(
    server_factory: Callable[..., Server],
) -> None:
    """Secrets sent in headers, query, ids, paths and task errors appear in no log line."""
    srv = server_factory(env={"JOBPOOL_LOG_LEVEL": "debug"})
    # A wrong key is refused (401), and logged as a 401, without the key.
    wrong = srv.get("/v1/jobs/01m80z4h38adhscx7c6epxp5fx", key=f"tok-{SECRETS[0]}")
    assert wrong.status == 401
    auth = {
        # A real key (auth is on): the request must pass, and the key must not be logged.
        **bearer(ALICE),
        "X-API-Key": f"key-{SECRETS[1]}",
        "Cookie": f"session={SECRETS[1]}",
    }
    batch = {"Data": [dict(SEED_BATCH["Data"][0], id=f"Bearer tok-{SECRETS[2]}")]}
    r = srv.post(f"/v1/parcels?api_key={SECRETS[3]}", json=batch, headers=auth)
    assert r.status == 202
    job_id = r.json()["job"]
    assert srv.wait_final(job_id)["state"] == "succeeded"
    failing = [
        f"upstream answered 401 to Authorization: Bearer {SECRETS[4]}",
        f"could not fetch https://bob:{SECRETS[5]}@example.test/x",
        f"config had password={SECRETS[6]}",
    ]
    for message in failing:
        r = srv.post("/test/jobs/test.fail", json={"message": message}, headers=auth)
        assert srv.wait_final(r.json()["job"])["state"] == "failed"
    assert srv.get(f"/v1/jobs/Bearer%20{SECRETS[7]}", headers=auth).status == 404
    r = srv.get("/healthz", headers={"X-Request-ID": f"token={SECRETS[7]}"})
    assert r.headers["X-Request-ID"] == f"token={SECRETS[7]}"  # echoed, never logged
    srv.stop()

    lines = srv.log().splitlines()
    docs = [orjson.loads(line) for line in lines]  # every line is one JSON object
    assert all(isinstance(d, dict) for d in docs)
    for line in lines:
        for secret in [*SECRETS, ALICE]:
            assert secret not in line, line
    # The debug lines were there to leak from: per-item task lines, job failures.
    messages = [d["msg"] for d in docs]
    assert any(m.startswith("Task: Completed for Parcel Bearer") for m in messages)
    assert sum("failed:" in m for m in messages) == len(failing)
    assert any(d.get("status") == 401 for d in docs)


def test_access_log_line_has_route_status_duration_and_ids(server: Server) -> None:
    """Each request's access line names its route template, job id and request id."""
    r = server.post("/v1/parcels", json=SEED_BATCH, headers={"X-Request-ID": "req-42"})
    job_id = r.json()["job"]
    assert server.get(f"/v1/jobs/{job_id}", headers={"X-Amzn-Trace-Id": "Root=1-abc"}).status
    assert server.get("/nope").status == 404
    server.stop()
    docs = [orjson.loads(line) for line in server.log().splitlines()]
    access = [d for d in docs if d["logger"] == "jobpool.access"]
    post = next(d for d in access if d.get("request_id") == "req-42")
    assert post["route"] == "/v1/parcels"
    assert post["method"] == "POST"
    assert post["status"] == 202
    assert post["job_id"] == job_id
    assert post["duration_ms"] >= 0
    get = next(d for d in access if d.get("request_id") == "Root=1-abc")
    assert get["route"] == "/v1/jobs/{job_id}"
    assert get["job_id"] == job_id
    lost = [d for d in access if d["path"] == "/nope"]
    assert lost[0]["route"] == "unmatched"
    assert lost[0]["status"] == 404
    assert len(lost[0]["request_id"]) == 16  # generated when the client sent none


def _json_object(line: str) -> bool:
    try:
        return isinstance(orjson.loads(line), dict)
    except orjson.JSONDecodeError:
        return False


def test_pillow_and_libtiff_messages_are_json_lines(server_factory: Callable[..., Server]) -> None:
    """A TIFF that makes Pillow warn at the probe and libtiff complain in the job leaves only
    JSON lines: the probe's warning from a worker, libtiff's errors from a cpu process."""
    srv = server_factory(env={"JOBPOOL_LOG_LEVEL": "debug"})
    r = srv.post(
        "/v1/images?op=grayscale&format=png",
        body=imagegen.tiff_with_odd_tags(invalid_types=3),
        headers={"Content-Type": "image/tiff"},
    )
    assert r.status == 202
    assert srv.wait_final(r.json()["job"])["state"] == "succeeded"
    workers = set(srv.worker_pids())
    srv.stop()

    lines = srv.log().splitlines()
    assert [line for line in lines if not _json_object(line)] == []
    docs = [orjson.loads(line) for line in lines]
    probe_warnings = [
        d for d in docs if d["logger"] == "py.warnings" and "Tag data larger than file" in d["msg"]
    ]
    assert any(d["pid"] in workers for d in probe_warnings), "the probe runs in a worker"
    libtiff = [d for d in docs if d["logger"] == "libtiff"]
    assert {d["level"] for d in libtiff} == {"debug"}
    assert all(d["pid"] not in workers for d in libtiff), "decoding runs in a cpu process"
    for tag in (60000, 60001, 60002):  # formatted with their arguments, one tag each
        assert any(f"custom tag {tag} " in d["msg"] for d in libtiff), tag
