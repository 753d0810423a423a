"""Traces in-process, through the SDK's in-memory exporter: one trace from a submit (its
client's ``traceparent``) to the run of each kind of job — a parcel batch, a fetch on an io
thread, an image in a cpu process (its span sent back through the pipe), each search
provider's call — and to the callback's POST; a retry's run is a trace of its own, linked;
on two hosts sharing one Redis, the host that runs the job continues the submit's trace."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

import pytest
from falcon import testing
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind

from service import tracing
from service.app import create_app
from service.callbacks.signing import new_secret
from service.config import Settings, StoreUrl
from service.keys import env_entries
from tests.clients import ALICE, API_KEYS, bearer
from tests.conftest import SEED_BATCH
from tests.extension import extend
from tests.imagegen import encode, photo_image
from tests.providers import Provider
from tests.receiver import Receiver
from tests.test_inprocess import final
from tests.upstream import UpstreamServer

TRACE = 0x4BF92F3577B34DA6A3CE929D0E0E4736
CALLER = 0x00F067AA0BA902B7
TRACEPARENT = {"traceparent": f"00-{TRACE:032x}-{CALLER:016x}-01"}


@pytest.fixture
def spans() -> Iterator[InMemorySpanExporter]:
    """Tracing on, into memory, for this test only."""
    exporter = InMemorySpanExporter()
    tracing.install(SimpleSpanProcessor(exporter))
    yield exporter
    tracing.uninstall()


def traced_app(settings: Settings) -> testing.ASGIConductor:
    """The app as service/asgi.py serves it (traced), in-process."""
    app = tracing.traced(create_app(settings, extend=extend))

    async def as_servers_give(scope: dict[str, Any], receive: Any, send: Any) -> None:
        # falcon.testing gives ``server`` and ``headers`` as iterators, which the tracing
        # middleware would use up; ASGI servers give a pair and a list.
        if scope["type"] == "http":
            scope = {
                **scope,
                "server": tuple(scope["server"]),
                "headers": [tuple(h) for h in scope["headers"]],
            }
        await app(scope, receive, send)

    return testing.ASGIConductor(as_servers_give, headers=bearer(ALICE))


async def spans_named(
    exporter: InMemorySpanExporter, name: str, count: int = 1, within: float = 30
) -> list[ReadableSpan]:
    """The first ``count`` finished spans called ``name`` (those of cpu processes arrive
    through a pipe, a moment after the job's end)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while True:
        found = [s for s in exporter.get_finished_spans() if s.name == name]
        if len(found) >= count:
            return found[:count]
        if loop.time() > deadline:
            names = sorted({s.name for s in exporter.get_finished_spans()})
            raise AssertionError(f"{len(found)} of {count} spans {name!r}; have {names}")
        await asyncio.sleep(0.05)


def server_spans(exporter: InMemorySpanExporter) -> list[ReadableSpan]:
    return [s for s in exporter.get_finished_spans() if s.kind is SpanKind.SERVER]


def assert_run_under_submit(run: ReadableSpan, exporter: InMemorySpanExporter) -> None:
    """``run`` is in the caller's trace, the child of (and linked to) a request's span
    whose parent is the caller's span."""
    assert run.context is not None
    assert run.context.trace_id == TRACE
    assert run.kind is SpanKind.CONSUMER
    assert run.parent is not None
    (submit,) = [
        s for s in server_spans(exporter) if s.context and s.context.span_id == run.parent.span_id
    ]
    assert submit.parent is not None
    assert submit.parent.span_id == CALLER
    assert [link.context.span_id for link in run.links] == [run.parent.span_id]


@pytest.fixture
async def app(
    spans: InMemorySpanExporter, make_settings: Callable[..., Settings]
) -> AsyncIterator[testing.ASGIConductor]:
    async with traced_app(make_settings(fetch_allow_private=True)) as c:
        yield c


async def test_the_server_span_follows_the_http_conventions(
    app: testing.ASGIConductor, spans: InMemorySpanExporter
) -> None:
    """Each request is a server span in its caller's trace, with the HTTP attributes."""
    r = await app.simulate_get("/v1/jobs", headers=TRACEPARENT)
    assert r.status_code == 200
    (span,) = server_spans(spans)
    assert span.context is not None
    assert span.context.trace_id == TRACE
    attributes = dict(span.attributes or {})
    assert attributes.get("http.request.method", attributes.get("http.method")) == "GET"
    status = attributes.get("http.response.status_code", attributes.get("http.status_code"))
    assert status == 200


async def test_a_parcel_batch_runs_in_its_submits_trace(
    app: testing.ASGIConductor, spans: InMemorySpanExporter
) -> None:
    """A parcel batch, run as it is accepted, and a batch run in chunks on io threads are
    each a run span in the submitting request's trace."""
    r = await app.simulate_post("/v1/parcels", json=SEED_BATCH, headers=TRACEPARENT)
    assert r.status_code == 202
    (inline,) = await spans_named(spans, "process parcel")
    assert inline.context is not None
    assert inline.context.trace_id == TRACE
    r = await app.simulate_post(
        "/test/batch/test.slow_item", json={"items": ["a", "b", "c"]}, headers=TRACEPARENT
    )
    assert (await final(app, r.json["job"]))["state"] == "succeeded"
    (chunked,) = await spans_named(spans, "process test.slow_item")
    assert_run_under_submit(chunked, spans)


async def test_a_fetch_on_an_io_thread_runs_in_its_submits_trace(
    app: testing.ASGIConductor, spans: InMemorySpanExporter
) -> None:
    """The fetch job's run, on an io thread, is a span under the submit's."""
    with UpstreamServer() as up:
        r = await app.simulate_post("/v1/fetch", json={"url": up.url("/ok")}, headers=TRACEPARENT)
        assert r.status_code == 202
        assert (await final(app, r.json["job"]))["state"] == "succeeded"
    (run,) = await spans_named(spans, "process fetch")
    assert_run_under_submit(run, spans)
    assert dict(run.attributes or {})["messaging.message.id"] == r.json["job"]


async def test_an_image_in_a_cpu_process_runs_in_its_submits_trace(
    app: testing.ASGIConductor, spans: InMemorySpanExporter
) -> None:
    """The image job's span is made in its cpu process and reaches the worker's exporter
    through the pipe of the process's progress reports."""
    png = encode(photo_image(64, 48), "PNG")
    r = await app.simulate_post(
        "/v1/images?op=grayscale", body=png,
        headers={"Content-Type": "image/png", **TRACEPARENT},
    )  # fmt: skip
    assert r.status_code == 202, r.text
    assert (await final(app, r.json["job"]))["state"] == "succeeded"
    (run,) = await spans_named(spans, "process image")
    assert_run_under_submit(run, spans)


async def test_each_search_provider_call_runs_in_the_requests_trace(
    spans: InMemorySpanExporter, make_settings: Callable[..., Settings]
) -> None:
    """Each provider asked by a search is a span under the search request's."""
    with Provider("ok") as a, Provider("ok") as b:
        settings = make_settings(search_providers=(("a", a.url), ("b", b.url)))
        async with traced_app(settings) as c:
            r = await c.simulate_get("/v1/search?q=x", headers=TRACEPARENT)
            assert r.status_code == 200
    calls = await spans_named(spans, "process search.provider", 2)
    (request,) = server_spans(spans)
    assert request.context is not None
    for call in calls:
        assert call.context is not None
        assert call.context.trace_id == TRACE
        assert call.parent is not None
        assert call.parent.span_id == request.context.span_id


async def test_a_retry_runs_in_a_trace_of_its_own_linked_to_the_submit(
    app: testing.ASGIConductor, spans: InMemorySpanExporter, tmp_path: Path
) -> None:
    """The first attempt is in the submit's trace; the retry (after a backoff) starts a
    trace of its own, linked to the submit's span."""
    r = await app.simulate_post(
        "/test/jobs/test.flaky", json={"path": str(tmp_path / "n"), "fails": 1},
        headers=TRACEPARENT,
    )  # fmt: skip
    assert (await final(app, r.json["job"]))["state"] == "succeeded"
    first, retry = await spans_named(spans, "process test.flaky", 2)
    assert_run_under_submit(first, spans)
    assert retry.context is not None
    assert retry.context.trace_id != TRACE
    assert retry.parent is None
    assert [link.context.trace_id for link in retry.links] == [TRACE]
    assert dict(retry.attributes or {})["jobpool.job.attempt"] == 2


async def test_the_callback_post_carries_the_submits_trace(
    spans: InMemorySpanExporter, make_settings: Callable[..., Settings], tmp_path: Path
) -> None:
    """The callback's POST is a client span in the submit's trace, and its traceparent
    header names that span."""
    secret = new_secret()
    path = tmp_path / "secrets"
    path.write_text(f"alice {secret}\n")
    settings = make_settings(callback_secrets_file=path, callback_allow_private=True)
    with Receiver(secret) as rx:
        async with traced_app(settings) as c:
            r = await c.simulate_post(
                "/test/jobs/test.echo", json={},
                headers={"Job-Callback": rx.url, **TRACEPARENT},
            )  # fmt: skip
            assert r.status_code == 202
            (got,) = await rx.arrived(1)
    (post,) = await spans_named(spans, "POST callback")
    assert post.context is not None
    assert post.context.trace_id == TRACE
    assert post.kind is SpanKind.CLIENT
    assert got.headers["traceparent"] == f"00-{TRACE:032x}-{post.context.span_id:016x}-01"


async def test_across_two_hosts_the_run_continues_the_submits_trace(
    spans: InMemorySpanExporter, redis_url: str, tmp_path: Path
) -> None:
    """Host a, its only io thread busy, queues a job in the shared Redis; host b takes it:
    its run is a span under a's request span, in the caller's trace."""

    def host(name: str) -> Settings:
        return Settings.from_env({}, **{
            "state_dir": tmp_path / name, "store_url": StoreUrl("redis", redis_url),
            "cpu_workers": 1, "io_threads": 1, "janitor_interval_s": 1, "lease_s": 2,
            "api_keys": env_entries(API_KEYS),
        })  # fmt: skip

    release = tmp_path / "release"
    async with AsyncExitStack() as stack:
        a = await stack.enter_async_context(traced_app(host("a")))
        busy = await a.simulate_post("/test/jobs/test.wait_for", json={"path": str(release)})
        r = await a.simulate_post("/test/jobs/test.echo", json={}, headers=TRACEPARENT)
        assert r.status_code == 202
        assert r.json["state"] == "queued"
        b = await stack.enter_async_context(traced_app(host("b")))
        assert (await final(b, r.json["job"]))["state"] == "succeeded"
        doc: dict[str, Any] = (await a.simulate_get(f"/v1/jobs/{busy.json['job']}")).json
        assert doc["state"] == "running"  # a never had room for it: b ran it
        release.write_text("")
        await final(a, busy.json["job"])
    (run,) = await spans_named(spans, "process test.echo")
    assert_run_under_submit(run, spans)
