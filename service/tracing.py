"""Traces (OpenTelemetry): the HTTP server's spans, each job's runs, each callback's POST.

Off unless the standard variables name an OTLP endpoint (``OTEL_EXPORTER_OTLP_ENDPOINT`` or
``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT``; ``OTEL_SDK_DISABLED=true`` keeps it off): then no
tracer provider exists, the ASGI app is not wrapped, nothing is stored with a job, and
every function here returns at its first test. On, each gunicorn worker exports its spans
in batches with OTLP over HTTP (protobuf), configured by the other standard variables
(``OTEL_EXPORTER_OTLP_HEADERS``, ``OTEL_SERVICE_NAME``, ``OTEL_BSP_*``, ...).

- The server span of each request follows the HTTP semantic conventions
  (``opentelemetry-instrumentation-asgi`` around the app: falcon's own is WSGI-only); a
  ``traceparent`` on the request makes it a child of the caller's span.
- A submit stores the server span's context with its job (:func:`current_traceparent`).
  Each run of the job, wherever it runs (an io thread, a coroutine, a cpu process, another
  host), is a ``process`` span (kind consumer, per the messaging conventions) with a link
  to the submit's span: the child of it too on the job's first, undelayed run, so a plain
  submit is one trace; a delayed run or a retry starts a trace of its own.
- A cpu process has a provider of its own that sends its finished spans back through the
  pipe its progress reports take (:func:`in_child`, :func:`export_foreign`): the worker
  exports them with its own.
- A callback's POST is a client span under the submit's span, and carries its
  ``traceparent`` (:func:`outgoing`).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.propagate import inject
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import (
    BatchSpanProcessor,
    SimpleSpanProcessor,
    SpanExporter,
    SpanExportResult,
)
from opentelemetry.sdk.util.instrumentation import InstrumentationScope
from opentelemetry.trace import Link, SpanContext, SpanKind, TraceFlags
from opentelemetry.trace.status import Status, StatusCode

__all__ = [
    "Trace",
    "configure_from_env",
    "current_traceparent",
    "enabled",
    "export_foreign",
    "in_child",
    "install",
    "outgoing",
    "run_here",
    "run_span",
    "start_run",
    "traced",
    "uninstall",
]

SCOPE = "jobpool"
#: The variables that turn tracing on (any of them set and not empty).
ENDPOINT_VARIABLES = ("OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")

_provider: TracerProvider | None = None
_tracer: trace.Tracer | None = None
#: Where spans made elsewhere (a cpu process) go: the worker's own processors.
_processors: list[SpanProcessor] = []
_NOTHING = contextlib.nullcontext()


@dataclass(frozen=True, slots=True)
class Trace:
    """What a run needs to make its span: the submit's context, and whether the run is the
    child of it (the job's first, undelayed run) or only linked to it."""

    traceparent: str
    child: bool
    job: str
    job_id: str
    attempt: int


def enabled() -> bool:
    return _tracer is not None


def configure_from_env(env: Mapping[str, str] | None = None) -> bool:
    """Turn tracing on when the standard variables ask for it (once per process)."""
    env = os.environ if env is None else env
    if _provider is not None:
        return True
    if env.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return False
    if not any(env.get(name, "").strip() for name in ENDPOINT_VARIABLES):
        return False
    # Imported only when on: the exporter brings protobuf and requests along.
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

    install(BatchSpanProcessor(OTLPSpanExporter()))
    return True


def install(processor: SpanProcessor, *, resource: Resource | None = None) -> TracerProvider:
    """Trace through ``processor`` from now on (tests give an in-memory exporter's)."""
    global _provider, _tracer
    provider = TracerProvider(resource=resource or Resource.create({"service.name": SCOPE}))
    provider.add_span_processor(processor)
    _provider, _tracer = provider, provider.get_tracer(SCOPE)
    _processors[:] = [processor]
    return provider


def uninstall() -> None:
    """Tracing off again (tests); spans still buffered are exported first."""
    global _provider, _tracer
    if _provider is not None:
        _provider.shutdown()
    _provider, _tracer = None, None
    _processors.clear()


def traced(app: Any) -> Any:
    """The ASGI ``app`` with the HTTP server's spans, when tracing is on (else ``app``)."""
    configure_from_env()
    if _provider is None:
        return app
    from opentelemetry.instrumentation.asgi import OpenTelemetryMiddleware

    # Not the spans of each ASGI receive and send: one span per request.
    return OpenTelemetryMiddleware(
        app, tracer_provider=_provider, exclude_spans=["receive", "send"]
    )


def current_traceparent() -> str | None:
    """The W3C ``traceparent`` of the current span (a request's), to store with its job."""
    if _tracer is None:
        return None
    ctx = trace.get_current_span().get_span_context()
    if not ctx.is_valid:
        return None
    return f"00-{ctx.trace_id:032x}-{ctx.span_id:016x}-{ctx.trace_flags:02x}"


def _parse(traceparent: str) -> SpanContext | None:
    parts = traceparent.split("-")
    if len(parts) < 4 or len(parts[1]) != 32 or len(parts[2]) != 16:
        return None
    try:
        ctx = SpanContext(
            int(parts[1], 16), int(parts[2], 16), is_remote=True,
            trace_flags=TraceFlags(int(parts[3][:2], 16)),
        )  # fmt: skip
    except ValueError:
        return None
    return ctx if ctx.is_valid else None


def _run_options(run: Trace) -> dict[str, Any] | None:
    submit = _parse(run.traceparent)
    if submit is None:
        return None
    parent = trace.set_span_in_context(trace.NonRecordingSpan(submit)) if run.child else Context()
    return {
        "context": parent,
        "kind": SpanKind.CONSUMER,
        "links": [Link(submit)],
        "attributes": {
            "messaging.system": SCOPE,
            "messaging.operation.type": "process",
            "messaging.operation.name": "process",
            "messaging.destination.name": run.job,
            "messaging.message.id": run.job_id,
            "jobpool.job.attempt": run.attempt,
        },
    }


def run_span(run: Trace | None) -> contextlib.AbstractContextManager[Any]:
    """The span of one run of a job, current while it runs (nothing when off or untraced)."""
    if _tracer is None or run is None:
        return _NOTHING
    options = _run_options(run)
    if options is None:
        return _NOTHING
    return _tracer.start_as_current_span(f"process {run.job}", **options)


def start_run(run: Trace | None) -> trace.Span | None:
    """:func:`run_span` for a run that ends elsewhere (a batch: ended by its last chunk)."""
    if _tracer is None or run is None:
        return None
    options = _run_options(run)
    if options is None:
        return None
    return _tracer.start_span(f"process {run.job}", **options)


def run_here(job: str) -> contextlib.AbstractContextManager[Any]:
    """The span of a run that is part of the current request (a search provider's call,
    an inline batch): under the request's span."""
    if _tracer is None:
        return _NOTHING
    attributes = {
        "messaging.system": SCOPE,
        "messaging.operation.type": "process",
        "messaging.destination.name": job,
    }
    return _tracer.start_as_current_span(
        f"process {job}", kind=SpanKind.CONSUMER, attributes=attributes
    )


@contextlib.contextmanager
def outgoing(name: str, traceparent: str | None) -> Iterator[dict[str, str]]:
    """A client span under the submit's, and the headers that carry it (none when off)."""
    submit = None if _tracer is None or traceparent is None else _parse(traceparent)
    if _tracer is None or submit is None:
        yield {}
        return
    parent = trace.set_span_in_context(trace.NonRecordingSpan(submit))
    with _tracer.start_as_current_span(name, context=parent, kind=SpanKind.CLIENT):
        carrier: dict[str, str] = {}
        inject(carrier)
        yield carrier


# -- spans of cpu processes -----------------------------------------------------------


class _PipeExporter(SpanExporter):
    """In a cpu process: finished spans, as plain tuples, into the progress pipe."""

    def __init__(self, put: Callable[[Any], None]) -> None:
        self.put = put

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        self.put(("spans", [_flat(span) for span in spans]))
        return SpanExportResult.SUCCESS


def in_child(put: Callable[[Any], None]) -> None:
    """In a cpu process: trace, sending each finished span back through ``put``."""
    global _provider, _tracer
    if _provider is not None:
        return
    _provider = TracerProvider()
    _provider.add_span_processor(SimpleSpanProcessor(_PipeExporter(put)))
    _tracer = _provider.get_tracer(SCOPE)


def _flat(span: ReadableSpan) -> tuple[Any, ...]:
    ctx, parent = span.context, span.parent
    assert ctx is not None
    return (
        span.name,
        (ctx.trace_id, ctx.span_id, int(ctx.trace_flags)),
        None if parent is None else (parent.trace_id, parent.span_id, int(parent.trace_flags)),
        dict(span.attributes or {}),
        [(e.name, dict(e.attributes or {}), e.timestamp) for e in span.events],
        [
            (
                link.context.trace_id,
                link.context.span_id,
                int(link.context.trace_flags),
                dict(link.attributes or {}),
            )
            for link in span.links
        ],
        span.kind.value,
        (span.status.status_code.value, span.status.description),
        span.start_time,
        span.end_time,
    )


def export_foreign(flat_spans: list[tuple[Any, ...]]) -> None:
    """In the worker: export the spans a cpu process sent, with the worker's resource."""
    from opentelemetry.sdk.trace import Event

    provider = _provider
    if provider is None:
        return
    scope = InstrumentationScope(SCOPE)
    for flat in flat_spans:
        name, ids, parent, attributes, events, links, kind, status, start, end = flat
        span = ReadableSpan(
            name=name,
            context=SpanContext(ids[0], ids[1], is_remote=False, trace_flags=TraceFlags(ids[2])),
            parent=None
            if parent is None
            else SpanContext(
                parent[0], parent[1], is_remote=True, trace_flags=TraceFlags(parent[2])
            ),
            resource=provider.resource,
            attributes=attributes,
            events=[Event(n, a, timestamp=t) for n, a, t in events],
            links=[Link(SpanContext(t, s, True, TraceFlags(f)), a) for t, s, f, a in links],
            kind=SpanKind(kind),
            status=Status(StatusCode(status[0]), status[1]),
            start_time=start,
            end_time=end,
            instrumentation_scope=scope,
        )
        for processor in _processors:
            processor.on_end(span)
