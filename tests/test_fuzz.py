"""Fuzzing the request parsers (hypothesis): any request gets a 4xx or better, never a 5xx.

Bounded: a fixed number of examples per test, no per-example deadline; the whole module
takes seconds. The HTTP fuzz drives the production routes in-process (lifespan, store and
pools included) with arbitrary methods, paths, query strings, headers, content types and
bodies, some of them close to valid so that the deeper parsers are reached too.
"""

from __future__ import annotations

import asyncio
import contextlib
import string
from collections.abc import Callable
from functools import partial
from typing import Any

import orjson
import pytest
from falcon import testing
from hypothesis import HealthCheck, example, given
from hypothesis import settings as examples
from hypothesis import strategies as st

from service import ids, netguard
from service.api.fetch import decode_fetch
from service.api.http import parse_json
from service.api.parcels import decode_batch
from service.api.submitting import preferences
from service.app import create_app
from service.config import Settings
from service.errors import BadRequest, Invalid, Unauthorized
from service.keys import Keyring, env_entries
from service.tasks.parcels import parse_batch
from tests.clients import ALICE, API_KEYS

HTTP_EXAMPLES = 400
PARSER_EXAMPLES = 300

# What gunicorn lets through to the app: visible ASCII in the target, latin-1 in headers.
TARGET_CHARS = "".join(c for c in string.printable if c not in " \t\n\r\x0b\x0c#?/")
QUERY_CHARS = "".join(c for c in string.printable if c not in " \t\n\r\x0b\x0c#")
HEADER_VALUE = st.text(
    st.characters(min_codepoint=0x20, max_codepoint=0xFF, exclude_characters="\x7f"),
    max_size=80,
)
SET_APART = {"content-length", "transfer-encoding", "host", "content-type"}
HEADER_NAME = st.text(
    string.ascii_letters + string.digits + "-!#$%&'*+.^_`|~", min_size=1, max_size=20
).filter(lambda n: n.lower() not in SET_APART)

JSON = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**64 - 1)
    | st.floats(allow_nan=False)
    | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)
# Date-times near the edges of RFC 3339: every field one past its range at either end.
DATE_TIMES = st.builds(
    "{:04d}-{:02d}-{:02d}{}{:02d}:{:02d}:{:02d}{}{}".format,
    st.sampled_from([0, 1, 1900, 2000, 2016, 2017, 9999]),
    st.integers(0, 13),
    st.integers(0, 32),
    st.sampled_from("Tt "),
    st.sampled_from([0, 1, 15, 23, 24]),
    st.sampled_from([0, 58, 59, 60]),
    st.sampled_from([0, 59, 60, 61]),
    st.sampled_from(["", ".5", ".", ".123456789"]),
    st.sampled_from(["Z", "z", "", "+0100"])
    | st.builds(
        "{}{:02d}:{:02d}".format, st.sampled_from("+-"), st.integers(0, 24), st.integers(0, 99)
    ),
)
TIMES = (
    st.sampled_from(
        ["2017-01-01T00:00:01Z", "2020-03-01T00:59:60.5+01:00", "2017-01-01", "", "nope", "T"]
    )
    | st.text(max_size=30)
    | DATE_TIMES
)
ITEM = st.fixed_dictionaries(
    {},
    optional={
        "id": st.text(max_size=10) | JSON,
        "time": TIMES | JSON,
        "data": st.text() | JSON,
        "extra": JSON,
    },
)
GOOD_ITEM = st.fixed_dictionaries(
    {
        "id": st.text(min_size=1, max_size=10),
        "time": st.sampled_from(["2017-01-01T00:00:01Z", "2020-03-01T00:59:60.5+01:00"]),
        "data": st.text(max_size=20),
    }
)


#: Per field, values that come close to a good one.
NEAR_MISSES = {
    "id": st.sampled_from(["", 1, None]),
    "time": DATE_TIMES | st.sampled_from([1483228801, "", None]),
    "data": st.sampled_from([5, None, ["a"]]),
}


@st.composite
def near_items(draw: st.DrawFn) -> dict[str, Any]:
    """A good item with one thing changed: a field dropped or added, or one near miss."""
    item: dict[str, Any] = dict(draw(GOOD_ITEM))
    how = draw(st.sampled_from(["drop", "add", "miss"]))
    if how == "drop":
        del item[draw(st.sampled_from(sorted(item)))]
    elif how == "add":
        item[draw(st.text(max_size=8).filter(lambda k: k not in item))] = draw(JSON)
    else:
        field = draw(st.sampled_from(sorted(NEAR_MISSES)))
        item[field] = draw(NEAR_MISSES[field])
    return item


BATCH = st.fixed_dictionaries(
    {"Data": st.lists(GOOD_ITEM | ITEM, max_size=6) | JSON}, optional={"x": JSON}
)

BODIES = st.one_of(
    st.binary(max_size=300),
    st.text(max_size=200).map(str.encode),
    JSON.map(orjson.dumps),
    BATCH.map(orjson.dumps),
    BATCH.map(lambda b: orjson.dumps(b)[:-1]),  # cut short
)
CONTENT_TYPES = (
    st.sampled_from(
        [
            None,
            "application/json",
            "application/json; charset=utf-8",
            "application/problem+json",
            "text/plain",
            "application/x-www-form-urlencoded",
            "multipart/form-data; boundary=x",
            "",
            "application/",
            ";",
            "application/json;;;",
        ]
    )
    | HEADER_VALUE
)
AUTHORIZATION = st.sampled_from([f"Bearer {ALICE}"] * 6 + ["", "Bearer", f"Basic {ALICE}"]) | (
    st.text(QUERY_CHARS, max_size=60).map(lambda t: f"Bearer {t}")
)
IDS = st.one_of(
    st.builds(ids.new_id),
    st.text(TARGET_CHARS, min_size=1, max_size=40),
    st.sampled_from(["0" * 26, "z" * 26, "1", "%00", "%ff", "..", "%2e%2e"]),
)
PATHS = st.one_of(
    st.sampled_from(
        [
            "/v1/parcels",
            "/healthz",
            "/readyz",
            "/",
            "/v1/jobs",
            "/v1",
            "/v1/parcels/",
            "/v1/fetch",
            "/v1/images",
            "/v1/search",
        ]
    ),
    IDS.map("/v1/jobs/{}".format),
    IDS.map("/v1/jobs/{}/result".format),
    IDS.map("/v1/parcels/{}".format),
    st.lists(st.text(TARGET_CHARS, min_size=1, max_size=12), max_size=4).map(
        lambda parts: "/" + "/".join(parts)
    ),
)
QUERIES = st.one_of(
    st.none(),
    st.text(QUERY_CHARS, max_size=120),
    st.lists(
        st.tuples(st.text(TARGET_CHARS, max_size=6), st.text(TARGET_CHARS, max_size=6)), max_size=30
    ).map(lambda kv: "&".join(f"{k}={v}" for k, v in kv)),
)
EXTRA_HEADERS = st.dictionaries(HEADER_NAME, HEADER_VALUE, max_size=6)
PREFER = (
    st.none()
    | st.sampled_from(["wait=1", "wait=0", "wait=999999", "wait=-1", "wait"])
    | (HEADER_VALUE)
)
CONTENT_LENGTH = st.none() | st.sampled_from(["abc", "-1", "99999999999", "1", "0", " 5"])


@st.composite
def near_valid_submits(draw: st.DrawFn) -> dict[str, Any]:
    """POST /v1/parcels as alice with JSON, so the body parsers are reached."""
    headers: dict[str, str] = draw(EXTRA_HEADERS)
    headers["Authorization"] = f"Bearer {ALICE}"
    headers["Content-Type"] = draw(st.sampled_from(["application/json", "application/x+json"]))
    body = draw(st.one_of(BATCH.map(orjson.dumps), BODIES))
    return {"method": "POST", "path": "/v1/parcels", "headers": headers, "body": body}


@st.composite
def valid_requests(draw: st.DrawFn) -> dict[str, Any]:
    """Requests that must succeed or miss, with arbitrary content: each run reaches 202 and 404."""
    headers = {"Authorization": f"Bearer {ALICE}"}
    if draw(st.booleans()):
        path = draw(st.sampled_from(["/v1/jobs/{}", "/v1/jobs/{}/result", "/v1/parcels/{}"]))
        return {
            "method": "GET",
            "path": path.format(draw(st.builds(ids.new_id))),
            "headers": headers,
        }
    headers["Content-Type"] = "application/json"
    body = orjson.dumps({"Data": draw(st.lists(GOOD_ITEM, min_size=1, max_size=6))})
    return {"method": "POST", "path": "/v1/parcels", "headers": headers, "body": body}


URLS = st.one_of(
    st.text(max_size=60),
    st.builds(
        "{}://{}{}".format,
        st.sampled_from(["http", "https", "ftp", ""]),
        st.sampled_from(
            ["127.0.0.1", "[::1]", "169.254.169.254", "0x7f.1", "a.invalid", "localhost", "x"]
        )
        | st.text(TARGET_CHARS, max_size=20),
        st.text(QUERY_CHARS, max_size=20),
    ),
)
IMAGE_QUERIES = st.lists(
    st.tuples(
        st.sampled_from(["op", "width", "height", "format", "quality", "angle", "box", "x"]),
        st.sampled_from(
            [
                "thumbnail",
                "resize",
                "crop",
                "rotate",
                "grayscale",
                "png",
                "jpeg",
                "0",
                "-1",
                "99999",
                "1.5",
                "",
            ]
        )
        | st.text(TARGET_CHARS, max_size=6),
    ),
    max_size=6,
).map(lambda kv: "&".join(f"{k}={v}" for k, v in kv))


@st.composite
def near_valid_workloads(draw: st.DrawFn) -> dict[str, Any]:
    """POST /v1/fetch, POST /v1/images and GET /v1/search as alice, nearly right."""
    headers: dict[str, str] = {"Authorization": f"Bearer {ALICE}"}
    which = draw(st.sampled_from(["fetch", "images", "search"]))
    if which == "fetch":
        headers["Content-Type"] = "application/json"
        body = draw(
            st.fixed_dictionaries(
                {"url": URLS | JSON},
                optional={"method": st.sampled_from(["GET", "HEAD", "POST"]) | JSON, "x": JSON},
            )
        )
        return {
            "method": "POST",
            "path": "/v1/fetch",
            "headers": headers,
            "body": orjson.dumps(body),
        }
    if which == "images":
        headers["Content-Type"] = draw(
            st.sampled_from(["image/png", "image/jpeg", "application/octet-stream", "image/"])
        )
        return {
            "method": "POST",
            "path": "/v1/images",
            "headers": headers,
            "query_string": draw(IMAGE_QUERIES) or None,
            "body": draw(BODIES),
        }
    query = draw(
        st.lists(
            st.tuples(st.sampled_from(["q", "limit", "x"]), st.text(TARGET_CHARS, max_size=30)),
            max_size=4,
        )
    )
    return {
        "method": "GET",
        "path": "/v1/search",
        "headers": headers,
        "query_string": "&".join(f"{k}={v}" for k, v in query) or None,
    }


@st.composite
def any_requests(draw: st.DrawFn) -> dict[str, Any]:
    headers: dict[str, str] = draw(EXTRA_HEADERS)
    auth = draw(AUTHORIZATION)
    if auth:
        headers["Authorization"] = auth
    prefer = draw(PREFER)
    if prefer is not None:
        headers["Prefer"] = prefer
    content_type = draw(CONTENT_TYPES)
    if content_type is not None:
        headers["Content-Type"] = content_type
    length = draw(CONTENT_LENGTH)
    if length is not None:
        headers["Content-Length"] = length
    return {
        "method": draw(
            st.sampled_from(["GET", "POST", "DELETE", "PUT", "PATCH", "HEAD", "OPTIONS"])
        ),
        "path": draw(PATHS),
        "query_string": (draw(QUERIES) or "").lstrip("?") or None,  # the harness wants no ?
        "headers": headers,
        "body": draw(BODIES),
    }


def test_no_request_gets_a_5xx(make_settings: Callable[..., Settings]) -> None:
    """Arbitrary methods, paths, queries, headers and bodies: always a 4xx or better."""
    settings = make_settings(
        wait_max_s=1,
        client_rate=0,
        client_max_inflight=0,
        query_params_max=10,
        url_max=200,
        fetch_connect_timeout_ms=300,
        fetch_read_timeout_ms=300,
        fetch_deadline_ms=1000,
        graceful_timeout_s=5,
    )
    loop = asyncio.new_event_loop()
    conductor = testing.ASGIConductor(create_app(settings))
    loop.run_until_complete(conductor.__aenter__())
    seen: set[int] = set()

    @examples(
        max_examples=HTTP_EXAMPLES,
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
    )
    @given(
        request=st.one_of(
            any_requests(), near_valid_submits(), near_valid_workloads(), valid_requests()
        )
    )
    def answer(request: dict[str, Any]) -> None:
        result = loop.run_until_complete(conductor.simulate_request(**request))
        seen.add(result.status_code)
        assert result.status_code < 500, (request, result.status_code, result.text)
        if result.status_code >= 400 and request["method"] != "HEAD":
            assert result.headers["content-type"] == "application/problem+json"
            assert orjson.loads(result.content)["status"] == result.status_code

    try:
        answer()
    finally:
        loop.run_until_complete(conductor.__aexit__(None, None, None))
        loop.close()
    # The fuzz reached past auth into the parsers, not only the 401 wall.
    assert {202, 400, 401, 404, 422}.issubset(seen), seen


@examples(max_examples=PARSER_EXAMPLES, deadline=None)
@given(body=JSON | BATCH, max_items=st.integers(1, 10))
def test_batch_parser_accepts_or_says_why(body: Any, max_items: int) -> None:
    """parse_batch either returns checked items or raises Invalid, for any JSON value."""
    try:
        items = parse_batch(body, max_items=max_items)
    except Invalid as ex:
        detail = ex.detail
        assert detail
        return
    assert 1 <= len(items) <= max_items
    assert all(set(i) == {"id", "time", "data"} for i in items)


def outcome(parse: Callable[[bytes], Any], body: bytes) -> Any:
    """What ``parse`` makes of ``body``: its value, or the error it raises and its problems."""
    try:
        return parse(body)
    except (BadRequest, Invalid) as ex:
        return type(ex), ex.detail, ex.extra


@examples(max_examples=PARSER_EXAMPLES, deadline=None)
@given(
    # Half good batches with a near miss or two, half anything (mapped, so that one_of
    # does not flatten it).
    body=st.builds(
        lambda good, near, at, extra: orjson.dumps(
            {"Data": [*good[:at], *near, *good[at:]], **extra}
        ),
        st.lists(GOOD_ITEM, max_size=8),
        st.lists(near_items(), max_size=2),
        st.integers(0, 8),
        st.dictionaries(st.sampled_from(["x", "data", "DATA"]), JSON, max_size=1),
    )
    | (BODIES | BATCH.map(orjson.dumps)).map(bytes),
    max_items=st.integers(1, 10),
)
@example(body=b'{"Data": [{"id": "", "time": "2017-01-01T00:00:01Z", "data": ""}]}', max_items=1)
@example(body=b'{"Data": [{"id": "1", "time": "2017-01-01T12:00:60Z", "data": ""}]}', max_items=1)
@example(
    body=b'{"Data": [{"id": "1", "time": "2017-01-01T00:00:01Z", "data": "", "x": 0}]}', max_items=1
)
@example(
    body=b'{"Data": [{"id": "1", "time": "2017-01-01T00:00:01Z", "data": ""}], "x": 0}', max_items=1
)
@example(body=b'{"Data": [], "x": 0}', max_items=1)
def test_one_pass_batch_decode_agrees_with_the_walk(body: bytes, max_items: int) -> None:
    """The batch decoded in one pass (msgspec) is what orjson and the walk make of the same
    body: the same items, or the same refusal listing the same problems."""
    one_pass = outcome(partial(decode_batch, max_items=max_items), body)
    walked = outcome(lambda b: parse_batch(parse_json(b), max_items=max_items), body)
    assert one_pass == walked


@examples(max_examples=PARSER_EXAMPLES, deadline=None)
@given(
    body=BODIES
    | st.fixed_dictionaries(
        {"url": URLS | JSON},
        optional={"method": st.sampled_from(["GET", "HEAD", "POST"]) | JSON, "x": JSON},
    ).map(orjson.dumps)
)
def test_fetch_request_is_decoded_or_refused_with_a_reason(body: bytes) -> None:
    """Any body is a Fetch with a url string and GET or HEAD, or a 400 or 422 with a detail."""
    try:
        fetch = decode_fetch(body)
    except (BadRequest, Invalid) as ex:
        detail = ex.detail
        assert detail
        return
    assert isinstance(fetch.url, str)
    assert fetch.method in ("GET", "HEAD")
    assert orjson.loads(body)["url"] == fetch.url


@examples(max_examples=PARSER_EXAMPLES, deadline=None)
@given(value=st.text(max_size=100) | HEADER_VALUE, cap=st.integers(0, 3600))
def test_prefer_parser_stays_within_its_cap(value: str, cap: int) -> None:
    """Any Prefer header gives a wait between 0 and the cap."""

    class Req:
        def get_header(self, name: str) -> str:
            return value

    assert 0 <= preferences(Req(), cap).wait_s <= cap  # type: ignore[arg-type]


@examples(max_examples=PARSER_EXAMPLES, deadline=None)
@given(value=AUTHORIZATION | HEADER_VALUE | st.text(max_size=700))
def test_authorization_parser_finds_a_client_or_refuses(value: str) -> None:
    """Any Authorization value is either alice's key or an Unauthorized, nothing else."""
    ring = Keyring(env_entries(API_KEYS))
    try:
        client = ring.authenticate(value)
    except Unauthorized as ex:
        detail = ex.detail
        assert ALICE not in detail
    else:
        assert client == "alice"


@pytest.mark.parametrize("allow_private", [False, True])
def test_url_guard_parses_or_refuses_any_text(allow_private: bool) -> None:
    """netguard.precheck (for /v1/fetch) raises only BadURL or BlockedAddress, for any text."""

    @examples(max_examples=PARSER_EXAMPLES, deadline=None)
    @given(
        url=st.one_of(
            st.text(max_size=120),
            st.builds(
                "{}://{}{}".format,
                st.sampled_from(["http", "https", "HTTP", "ftp", ""]),
                st.text(max_size=40),
                st.text(max_size=20),
            ),
        )
    )
    def check(url: str) -> None:
        with contextlib.suppress(netguard.BadURL, netguard.BlockedAddress):
            netguard.precheck(url, allow_private=allow_private)

    check()
