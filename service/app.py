"""``create_app(settings)``: the only place where routes, middleware and the job layer meet."""

from __future__ import annotations

import asyncio
import importlib
import logging
from collections.abc import Callable
from typing import Any

import falcon
import falcon.asgi

from service import signals, ui
from service.api import problems, security
from service.api.callbacks import CallbackResource
from service.api.fetch import FetchResource
from service.api.health import Healthz, Readyz
from service.api.images import ImagesResource
from service.api.jobs import JobResource, JobResultResource
from service.api.listing import JobsResource
from service.api.metrics import MetricsResource
from service.api.middleware import Lifecycle, Telemetry
from service.api.openapi import OpenApiResource, document
from service.api.parcels import ParcelResource, ParcelsResource
from service.api.search import SearchResource
from service.callbacks.secrets import CallbackSecrets
from service.callbacks.sender import CallbackSender
from service.clients.limits import for_store
from service.config import Settings, port_of
from service.errors import ShuttingDown
from service.jobs.cpu_pool import CpuPool
from service.jobs.deliveries import CallbackPolicy
from service.jobs.io_pool import IoPool
from service.jobs.layer import JobLayer
from service.jobs.redis.store import RedisStore
from service.jobs.registry import POOLS, Registry, registry
from service.jobs.sqlite.store import SqliteStore
from service.jobs.store import Store
from service.jobs.tokens import HostTokens
from service.keys import Keyring
from service.metrics import Metrics

log = logging.getLogger(__name__)

#: Modules whose import registers the service's jobs.
TASK_MODULES = (
    "service.tasks.parcels",
    "service.tasks.fetch",
    "service.tasks.images.process",
    "service.tasks.search",
)
# Imported once in the forkserver, so each cpu process starts without importing them again.
CPU_PRELOAD = ("service.tasks.images.process",)
#: The fetch job's own deadline stops it; the job timeout is only a backstop past it.
FETCH_TIMEOUT_MARGIN_S = 5.0
#: Seconds of the graceful timeout kept back for closing the store after the drain.
DRAIN_MARGIN_S = 3.0


def make_store(settings: Settings, jobs: Registry) -> Store:
    """The store ``JOBPOOL_STORE_URL`` names: SQLite shards, or a Redis shared by a fleet."""
    s = settings
    if not s.store.is_redis:
        return SqliteStore(
            s.store.path,
            result_ttl_s=s.result_ttl_s,
            result_max=s.result_max,
            max_bytes=s.store_max_bytes,
            payload_max_bytes=s.payload_max_bytes,
        )

    def lane_of(name: str) -> str:
        return jobs.get(name).pool if name in jobs else "io"

    return RedisStore(
        s.store,
        state_dir=s.state_dir,
        lane_of=lane_of,
        pools=POOLS,
        result_ttl_s=s.result_ttl_s,
        result_max=s.result_max,
        lease_s=s.lease_s,
        queue_max=s.fleet_queue_max,
        client_max_inflight=s.client_max_inflight,
    )


def callback_policy(settings: Settings) -> CallbackPolicy:
    """How this worker sends completion callbacks (the JOBPOOL_CALLBACK_* settings)."""
    s = settings
    timeout_s = s.callback_timeout_ms / 1000
    sender = CallbackSender(
        CallbackSecrets(s.callback_secrets_file),
        timeout_s=timeout_s,
        allow_private=s.callback_allow_private,
        url_max=s.callback_url_max,
    )
    return CallbackPolicy(
        sender=sender,
        concurrency=s.callback_concurrency,
        horizon_s=s.callback_horizon_s,
        retry_max_s=s.callback_retry_max_s,
        timeout_s=timeout_s,
    )


class Service:
    """What one gunicorn worker runs: the job layer, its store and pools."""

    def __init__(self, settings: Settings, registry: Registry) -> None:
        self.settings = settings
        s = settings
        store = make_store(s, registry)
        # Host-wide limits with SQLite, fleet-wide ones kept in the fleet's Redis.
        self.limits = for_store(s, store)
        self.metrics = Metrics() if s.metrics else None
        self.layer = JobLayer(
            registry=registry,
            store=store,
            io_pool=IoPool(s.io_threads, reserved=s.callback_concurrency),
            cpu_pool_factory=self._cpu_pool,
            io_queue_max=s.io_queue_max,
            cpu_queue_max=s.cpu_queue_max,
            admission_wait_s=s.admission_wait_ms / 1000,
            max_attempts=s.max_attempts,
            janitor_interval_s=s.janitor_interval_s,
            stop_grace_s=s.cancel_grace_s,
            quota=self.limits,
            events=self.metrics,
            # Once the store holds the worker's slot, before unfinished jobs are resumed
            # (and counted): the limits count in that slot from then on.
            slot_claimed=self.limits.open,
            callbacks=callback_policy(s),
        )
        if self.metrics is not None:
            self.metrics.watch(self.layer.pool_stats)
        self._stopping: asyncio.Future[None] | None = None
        self._unlisten: Callable[[], None] | None = None

    def _cpu_pool(self, slot: int) -> CpuPool:
        s = self.settings
        share = s.cpu_processes_for(slot)
        log.info("worker slot %d: %d cpu processes, up to %d", slot, share, s.cpu_workers)
        return CpuPool(
            processes=max(share, s.cpu_workers),
            keep=share,
            nice=s.cpu_nice,
            tokens=HostTokens(s.state_dir / "cpu-tokens", s.cpu_workers, slot=slot, share=share),
            preload=CPU_PRELOAD,
            log_level=s.log_level,
        )

    async def start(self) -> None:
        # The drain starts at SIGTERM, not at the lifespan's end (see service/signals.py).
        self._unlisten = signals.on_terminate(self.begin_stop)
        await self.layer.start()
        if self.metrics is not None:
            await self.metrics.start()

    def begin_stop(self) -> None:
        """Start draining now (SIGTERM); the lifespan shutdown awaits the same drain."""
        if self._stopping is None:
            drain = max(1.0, self.settings.graceful_timeout_s - DRAIN_MARGIN_S)
            self._stopping = asyncio.ensure_future(self._drain(drain))

    async def _drain(self, drain_s: float) -> None:
        await self.layer.close(drain_s=drain_s)
        if self.metrics is not None:
            await self.metrics.stop()  # the last counts of the drain, before the exit

    async def stop(self) -> None:
        self.begin_stop()
        assert self._stopping is not None
        await self._stopping
        self.limits.close()
        if self._unlisten is not None:
            self._unlisten()

    async def ping_store(self) -> None:
        await self.layer.ping()

    async def ping_accepting(self) -> None:
        if self.layer.draining:
            raise ShuttingDown("draining")


Extension = Callable[["falcon.asgi.App[Any, Any]", JobLayer, Settings], None]


def create_app(
    settings: Settings | None = None,
    *,
    jobs: Registry = registry,
    extend: Extension | None = None,
) -> falcon.asgi.App[Any, Any]:
    """Build the ASGI app for one worker. Pools and store start with the ASGI lifespan.

    ``extend(app, layer, settings)`` may add routes of a deployment's own.
    """
    settings = settings or Settings.from_env()
    for module in TASK_MODULES:
        importlib.import_module(module)  # their @job declarations fill the registry
    # This app's own copy, with this app's settings: another app in the process keeps its own.
    configured = jobs.configured({
        "image": settings.image_timeout_s,
        "fetch": settings.fetch_deadline_ms / 1000 + FETCH_TIMEOUT_MARGIN_S,
        # The provider's own timeout stops it first; this is only a backstop.
        "search.provider": settings.search_provider_timeout_ms / 1000 * 2,
    })  # fmt: skip
    service = Service(settings, configured)
    layer = service.layer
    keyring = Keyring.from_settings(settings)
    dashboard = (
        ui.build(
            settings, layer=layer, keyring=keyring, limits=service.limits, metrics=service.metrics
        )
        if settings.ui
        else None
    )
    metrics_port = port_of(settings.metrics_bind) if settings.metrics_bind else None
    middleware: list[Any] = [
        # Outside the security middleware: refused requests (401, 429) are timed and logged.
        Telemetry(service.metrics, metrics_port=metrics_port),
        *security.middleware(
            settings, keyring, service.limits, pages=dashboard.sessions if dashboard else None
        ),
        Lifecycle(service.start, service.stop),
        *([Lifecycle(dashboard.start, dashboard.stop)] if dashboard else []),
    ]
    app: falcon.asgi.App[Any, Any] = falcon.asgi.App(middleware=middleware)
    app.req_options.strip_url_path_trailing_slash = True
    # `?limit=` must reach validation as an empty value (422), not vanish as absent.
    app.req_options.keep_blank_qs_values = True
    problems.install(app)
    app.add_route("/healthz", Healthz())
    app.add_route(
        "/readyz", Readyz({"store": service.ping_store, "accepting": service.ping_accepting})
    )
    app.add_route("/v1/parcels", ParcelsResource(layer, settings))
    app.add_route("/v1/parcels/{parcel_id}", ParcelResource(layer))
    app.add_route("/v1/fetch", FetchResource(layer, settings))
    app.add_route("/v1/images", ImagesResource(layer, settings))
    app.add_route("/v1/search", SearchResource(layer, settings))
    app.add_route("/v1/jobs", JobsResource(layer, settings))
    app.add_route("/v1/jobs/{job_id}", JobResource(layer, settings))
    app.add_route("/v1/jobs/{job_id}/result", JobResultResource(layer))
    app.add_route("/v1/jobs/{job_id}/callback", CallbackResource(layer))
    if service.metrics is not None:
        app.add_route("/metrics", MetricsResource(service.metrics))
    app.add_route("/openapi.json", OpenApiResource(document(settings)))
    if dashboard is not None:
        dashboard.install(app)
    if extend is not None:
        extend(app, layer, settings)
    return app
