"""/openapi.json: every wired route is described, and answers match their description."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Callable, Iterator
from typing import Any

import falcon
import falcon.asgi
import jsonschema
import pytest
from falcon import testing
from falcon.routing import map_http_methods

from service.api.openapi import document
from service.app import create_app
from service.config import Settings, StoreUrl
from tests.conftest import SEED_BATCH
from tests.imagegen import encode, not_an_image, photo_image

METHODS = ("get", "put", "post", "delete", "patch", "head", "options")
JSON = "application/json"


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wired_routes(app: falcon.asgi.App[Any, Any]) -> set[tuple[str, str]]:
    """(URI template, method) of every responder the app's router holds."""
    found: set[tuple[str, str]] = set()

    def walk(nodes: list[Any]) -> None:
        for node in nodes:
            if node.resource is not None:
                for method in map_http_methods(node.resource):
                    found.add((node.uri_template, method.lower()))
            walk(node.children)

    walk(app._router._roots)  # falcon keeps its route tree there
    return found


def documented_routes(doc: dict[str, Any]) -> set[tuple[str, str]]:
    return {
        (path, method)
        for path, item in doc["paths"].items()
        for method in item
        if method in METHODS
    }


@pytest.mark.parametrize("metrics", [True, False])
def test_every_wired_route_is_documented_and_nothing_else(
    make_settings: Callable[..., Settings], metrics: bool
) -> None:
    """create_app's routes and the document's operations are the same set."""
    settings = make_settings(metrics=metrics)
    app = create_app(settings)
    assert wired_routes(app) == documented_routes(document(settings))


def refs(node: Any) -> Iterator[str]:
    if isinstance(node, dict):
        if "$ref" in node:
            yield node["$ref"]
        for value in node.values():
            yield from refs(value)
    elif isinstance(node, list):
        for value in node:
            yield from refs(value)


def resolve(doc: dict[str, Any], ref: str) -> Any:
    node: Any = doc
    for part in ref.removeprefix("#/").split("/"):
        node = node[part]
    return node


def test_every_reference_resolves_and_every_operation_is_complete(
    make_settings: Callable[..., Settings],
) -> None:
    """No dangling $ref; each operation has an id, a summary and at least one answer."""
    doc = document(make_settings())
    for ref in refs(doc):
        assert resolve(doc, ref) is not None, ref
    ids = []
    for path, item in doc["paths"].items():
        for method, op in item.items():
            assert op["summary"], (path, method)
            assert op["responses"], (path, method)
            ids.append(op["operationId"])
            for status in op["responses"]:
                assert not status.startswith("5") or status == "503", (path, method, status)
    assert len(ids) == len(set(ids))
    jsonschema.Draft202012Validator.check_schema(doc["components"]["schemas"]["Batch"])


def test_derived_schemas_are_valid_and_carry_the_settings_limits(
    make_settings: Callable[..., Settings],
) -> None:
    """The schemas derived from the Structs are valid JSON Schema, with maxItems the smaller
    of JOBPOOL_BATCH_MAX and JOBPOOL_IO_QUEUE_MAX and the URL's maxLength from its setting;
    the parcel's time states the RFC 3339 rule."""
    doc = document(make_settings(batch_max=5, io_queue_max=100, fetch_max_url_length=100))
    schemas = doc["components"]["schemas"]
    for schema in schemas.values():
        jsonschema.Draft202012Validator.check_schema(schema)
    assert schemas["Batch"]["properties"]["Data"]["maxItems"] == 5
    assert schemas["Fetch"]["properties"]["url"]["maxLength"] == 100
    time = schemas["Parcel"]["properties"]["time"]
    assert time["format"] == "date-time"
    assert "23:59 UTC" in time["description"]
    assert "00-59" in time["description"]


def test_with_the_redis_store_every_keyed_operation_may_answer_503(
    make_settings: Callable[..., Settings],
) -> None:
    """Client limits kept in the fleet's Redis: an operation that takes a key may answer 503."""
    fleet = document(make_settings(store_url=StoreUrl("redis", "redis://127.0.0.1:1/0")))
    host = document(make_settings())
    for path, item in fleet["paths"].items():
        for method, op in item.items():
            if op.get("security") == []:  # open: the same answers as on one host
                assert op["responses"] == host["paths"][path][method]["responses"]
            else:
                assert "503" in op["responses"], (path, method)


def schema_for(doc: dict[str, Any], path: str, method: str, status: int, ctype: str) -> Any:
    answer = doc["paths"][path][method]["responses"][str(status)]
    media = ctype.split(";")[0].strip()
    content = answer["content"]
    entry = content.get(media) or content["*/*"]
    # The document's references, resolved against the document itself.
    return {**entry["schema"], "components": doc["components"]}


def check(doc: dict[str, Any], path: str, method: str, result: testing.Result) -> None:
    """The answer's status is documented, with its headers, its content type is one the
    answer lists, and a JSON body fits the schema."""
    status = result.status_code
    answer = doc["paths"][path][method]["responses"].get(str(status))
    assert answer is not None, f"{method} {path}: {status} is not documented"
    for name, header in answer.get("headers", {}).items():
        header = resolve(doc, header["$ref"]) if "$ref" in header else header
        if header.get("required"):
            assert name.lower() in result.headers, (path, status, name)
    ctype = result.headers.get("content-type", "")
    media = ctype.split(";")[0].strip()
    listed = answer.get("content", {})
    assert media in listed or "*/*" in listed or not listed, (path, status, media)
    if ctype.startswith(("application/json", "application/problem+json")):
        schema = schema_for(doc, path, method, status, ctype)
        jsonschema.validate(result.json, schema, cls=jsonschema.Draft202012Validator)


async def test_answers_match_the_document(
    conductor_for: Callable[..., testing.ASGIConductor],
    make_settings: Callable[..., Settings],
) -> None:
    """A tour of every operation and its errors, each answer checked against the document."""
    doc = document(make_settings(io_threads=1))
    async with conductor_for(io_threads=1) as c:
        ok = await c.simulate_post("/v1/parcels", json=SEED_BATCH)
        check(doc, "/v1/parcels", "post", ok)
        job = ok.json["job"]
        waited = await c.simulate_post(
            "/v1/parcels", json=SEED_BATCH, headers={"Prefer": "wait=10"}
        )
        check(doc, "/v1/parcels", "post", waited)
        assert waited.status_code == 200
        for bad in (
            {"body": b"{", "headers": {"Content-Type": "application/json"}},
            {"body": b"x", "headers": {"Content-Type": "text/plain"}},
            {"json": {"Data": [{"id": "", "time": "no", "data": 1}]}},
        ):
            check(doc, "/v1/parcels", "post", await c.simulate_post("/v1/parcels", **bad))
        for _ in range(100):
            got = await c.simulate_get(f"/v1/jobs/{job}")
            if got.json["state"] == "succeeded":
                break
            await asyncio.sleep(0.05)
        check(doc, "/v1/jobs/{job_id}", "get", got)
        check(
            doc, "/v1/jobs/{job_id}/result", "get", await c.simulate_get(f"/v1/jobs/{job}/result")
        )
        check(doc, "/v1/jobs/{job_id}", "delete", await c.simulate_delete(f"/v1/jobs/{job}"))
        check(doc, "/v1/jobs/{job_id}", "get", await c.simulate_get("/v1/jobs/nope"))
        check(doc, "/v1/jobs/{job_id}", "delete", await c.simulate_delete("/v1/jobs/nope"))
        check(doc, "/v1/jobs/{job_id}/result", "get", await c.simulate_get("/v1/jobs/no/result"))
        # A queued job: cancelled (200), and it has no result (409).
        await c.simulate_post("/test/jobs/test.sleep", json={"seconds": 0.5})
        queued = (await c.simulate_post("/test/jobs/test.sleep", json={"seconds": 0})).json
        pending = await c.simulate_get(f"/v1/jobs/{queued['job']}/result")
        check(doc, "/v1/jobs/{job_id}/result", "get", pending)
        assert pending.status_code == 409
        cancelled = await c.simulate_delete(f"/v1/jobs/{queued['job']}")
        assert cancelled.status_code == 200
        check(doc, "/v1/jobs/{job_id}", "delete", cancelled)
        check(doc, "/v1/parcels/{parcel_id}", "get", await c.simulate_get("/v1/parcels/1"))
        check(doc, "/v1/parcels/{parcel_id}", "get", await c.simulate_get("/v1/parcels/none"))
        for path in ("/healthz", "/readyz", "/metrics", "/openapi.json"):
            check(doc, path, "get", await c.simulate_get(path))
        assert (await c.simulate_get("/openapi.json")).json == doc


async def test_overload_answers_match_the_document(
    conductor_for: Callable[..., testing.ASGIConductor],
    make_settings: Callable[..., Settings],
) -> None:
    """A full pool's 503 carries Retry-After; a batch that never fits is a documented 422."""
    doc = document(make_settings(io_queue_max=2, io_threads=1))
    async with conductor_for(io_queue_max=2, io_threads=1) as c:
        for _ in range(2):
            await c.simulate_post("/test/jobs/test.sleep", json={"seconds": 0.3})
        full = await c.simulate_post("/v1/fetch", json={"url": "http://example.test/"})
        assert full.status_code == 503
        check(doc, "/v1/fetch", "post", full)
        never = await c.simulate_post("/v1/parcels", json=SEED_BATCH)
        assert never.status_code == 422
        check(doc, "/v1/parcels", "post", never)
    assert doc["components"]["schemas"]["Batch"]["properties"]["Data"]["maxItems"] == 2


async def test_fetch_images_and_search_answers_match_the_document(
    conductor_for: Callable[..., testing.ASGIConductor],
    make_settings: Callable[..., Settings],
) -> None:
    """The other submit routes and the search, answers and errors, as documented."""
    doc = document(make_settings(fetch_allow_private=True))
    async with conductor_for(fetch_allow_private=True) as client:
        await tour_the_other_routes(doc, client)


async def tour_the_other_routes(doc: dict[str, Any], client: testing.ASGIConductor) -> None:
    post = client.simulate_post
    fetch = "/v1/fetch"
    check(doc, fetch, "post", await post(fetch, json={"url": "ftp://example.test/x"}))
    check(doc, fetch, "post", await post(fetch, json={"url": "http://a.test/", "x": 1}))
    check(doc, fetch, "post", await post(fetch, body=b"[", headers={"Content-Type": JSON}))
    # Loopback (allowed here), a port where nothing listens: stored, then retried later.
    queued = await post(fetch, json={"url": f"http://127.0.0.1:{closed_port()}/"})
    check(doc, fetch, "post", queued)
    retried = await client.simulate_get(
        f"/v1/jobs/{queued.json['job']}", headers={"Prefer": "wait=20"}
    )
    check(doc, "/v1/jobs/{job_id}", "get", retried)
    assert retried.json["state"] == "scheduled"
    assert retried.json["failed_attempts"][0]["attempt"] == 1
    # A name that does not resolve: no retry would help, it fails at once.
    queued = await post(fetch, json={"url": "http://no-such-host.invalid/"})
    failed = await client.simulate_get(
        f"/v1/jobs/{queued.json['job']}", headers={"Prefer": "wait=20"}
    )
    check(doc, "/v1/jobs/{job_id}", "get", failed)
    assert failed.json["state"] == "failed"
    listed = await client.simulate_get("/v1/jobs?limit=2&state=failed,scheduled")
    check(doc, "/v1/jobs", "get", listed)
    assert [j["id"] for j in listed.json["jobs"]][:1] == [failed.json["id"]]
    more = await client.simulate_get(f"/v1/jobs?limit=1&cursor={listed.json['next_cursor']}")
    check(doc, "/v1/jobs", "get", more)  # another query's cursor: 422

    images = "/v1/images"
    png = encode(photo_image(40, 30), "PNG")
    image = {"Content-Type": "image/png"}
    done = await post(f"{images}?op=thumbnail&width=8&height=8", body=png,
                      headers={**image, "Prefer": "wait=30"})  # fmt: skip
    assert done.status_code == 200
    assert done.headers["content-type"] == "image/png"
    check(doc, images, "post", done)
    check(doc, images, "post", await post(f"{images}?op=grayscale", body=png, headers=image))
    check(doc, images, "post", await post(f"{images}?op=spin", body=png, headers=image))
    check(doc, images, "post", await post(f"{images}?op=crop&left=0&top=0&width=99&height=9",
                                          body=png, headers=image))  # fmt: skip
    check(doc, images, "post",
          await post(f"{images}?op=grayscale", body=not_an_image(), headers=image))  # fmt: skip
    check(doc, images, "post", await post(f"{images}?op=grayscale", json={"a": 1}))

    search = "/v1/search"
    check(doc, search, "get", await client.simulate_get(search, params={"q": "jobs"}))
    check(doc, search, "get", await client.simulate_get(search, params={"q": " "}))
    check(doc, search, "get", await client.simulate_get(search, params={"q": "a", "limit": 0}))


async def test_auth_answers_match_the_document(make_settings: Callable[..., Settings]) -> None:
    """Without a key: the open routes answer, the others 401 with WWW-Authenticate, as the
    document's security says; JOBPOOL_AUTH=off drops the scheme."""
    settings = make_settings()
    doc = document(settings)
    assert doc["security"] == [{"bearer": []}]
    async with testing.ASGIConductor(create_app(settings)) as anonymous:
        for path in ("/healthz", "/openapi.json"):
            assert doc["paths"][path]["get"]["security"] == []
            check(doc, path, "get", await anonymous.simulate_get(path))
        refused = await anonymous.simulate_get("/v1/jobs/x")
        assert refused.status_code == 401
        check(doc, "/v1/jobs/{job_id}", "get", refused)
        check(doc, "/metrics", "get", await anonymous.simulate_get("/metrics"))
    open_doc = document(make_settings(auth=False))
    assert "security" not in open_doc
    assert all(op["security"] == [] for item in open_doc["paths"].values() for op in item.values())
    bound = document(make_settings(metrics_bind="127.0.0.1:9100"))
    assert bound["paths"]["/metrics"]["get"]["security"] == []
