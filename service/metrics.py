"""Prometheus metrics, aggregated over every gunicorn worker of the host.

prometheus_client runs in multiprocess mode under gunicorn: ``gunicorn.conf.py`` points
``PROMETHEUS_MULTIPROC_DIR`` at ``JOBPOOL_STATE_DIR/metrics`` (emptied when the master
starts), each worker writes its values to its own files there, and ``GET /metrics`` on any
worker reads them all. The master's ``child_exit`` hook drops a dead worker's gauges;
its counters and histograms stay, so totals never go backwards. Without that variable
(in-process tests, another server) each app counts for itself alone.

The hot path never calls prometheus_client: a request or a job event adds to plain dicts
of its worker (one dict look-up and an add), and :meth:`Metrics.flush` moves the sums
into prometheus_client's values every :data:`FLUSH_INTERVAL_S`, before each scrape the
worker answers, and when the worker stops. The pool gauges are sampled at the same time.
So other workers' figures in a scrape are at most that old, and a worker killed with
SIGKILL loses at most its last interval of counts.

The metrics (``job``, ``pool``, ``route`` label values come from the code, never from a
request, and ``client`` from the configured keys, so the number of series stays bounded):

========================================== ========= ===================================
name                                       type      labels
========================================== ========= ===================================
jobpool_http_requests_total                counter   route, method, status
jobpool_http_request_duration_seconds      histogram route, method
jobpool_jobs_submitted_total               counter   job, pool
jobpool_jobs_rejected_total                counter   job, reason
jobpool_jobs_completed_total               counter   job, state
jobpool_client_requests_total              counter   client, status
jobpool_jobs_retried_total                 counter   job
jobpool_jobs_delayed_total                 counter   job
jobpool_jobs_cancelled_total               counter   job, how
jobpool_job_run_seconds                    histogram job
jobpool_job_queue_wait_seconds             histogram job
jobpool_pool_queued_jobs                   gauge     pool
jobpool_pool_running_jobs                  gauge     pool
jobpool_pool_busy_slots                    gauge     pool
jobpool_pool_slots                         gauge     pool
jobpool_pool_admitted_tasks                gauge     pool
jobpool_pool_admission_limit               gauge     pool
jobpool_pool_scheduled_jobs                gauge     pool
jobpool_workers                            gauge     (none)
========================================== ========= ===================================

Gauges are summed over the live workers (``multiprocess_mode="livesum"``): the host's
queue depth, busy slots and capacity.
"""

from __future__ import annotations

import asyncio
import bisect
import dataclasses
import logging
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    values,
)
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.utils import floatToGoString

from service.background import cancel_and_wait
from service.jobs.events import JobEvents, PoolStats
from service.jobs.registry import Pool
from service.jobs.state import JobState

log = logging.getLogger(__name__)

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
CONTENT_TYPE = CONTENT_TYPE_LATEST
#: Seconds between two moves of this worker's counts into the shared files.
FLUSH_INTERVAL_S = 1.0
#: Request durations, seconds: 1 ms to a minute (``Prefer: wait`` holds up to 60 s).
REQUEST_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
#: Job run times and queue waits, seconds: 1 ms to 10 minutes.
JOB_BUCKETS = (0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600)
#: The route label of a request that matched no route (never its path: unbounded).
UNMATCHED = "unmatched"
METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
#: Routes left out of :meth:`Metrics.figures`' request counts: the dashboard's own, so that
#: watching the service does not change what is watched.
UNWATCHED_PREFIX = "/ui"


@dataclass
class Figures:
    """What the dashboard charts of a host: every worker's figures, summed (counters are
    totals since the host's start; the dashboard turns them into rates)."""

    #: pool -> gauge (``queued_jobs``, ``busy_slots``, ...) -> value, over the live workers.
    pools: dict[str, dict[str, float]] = dataclasses.field(default_factory=dict)
    #: accepted, succeeded, failed, cancelled, rejected: jobs since the start.
    jobs: dict[str, float] = dataclasses.field(default_factory=dict)
    #: Requests answered (the dashboard's own left out), and how many took at most each
    #: bound of :data:`REQUEST_BUCKETS` (cumulative; the last count is every request).
    requests: float = 0.0
    latency: list[float] = dataclasses.field(default_factory=list)
    #: client -> {"requests": answered, "throttled": answered 429}.
    clients: dict[str, dict[str, float]] = dataclasses.field(default_factory=dict)


class _Counts:
    """Increments of one counter by label values, not yet in prometheus_client."""

    __slots__ = ("metric", "pending")

    def __init__(self, metric: Counter) -> None:
        self.metric = metric
        self.pending: dict[tuple[Any, ...], float] = {}

    def add(self, labels: tuple[Any, ...], amount: float = 1) -> None:
        pending = self.pending
        pending[labels] = pending.get(labels, 0) + amount

    def flush(self) -> None:
        pending, self.pending = self.pending, {}
        for labels, amount in pending.items():
            self.metric.labels(*map(str, labels)).inc(amount)


class _Observations:
    """Observations of one histogram by label values: their sum and count per bucket."""

    __slots__ = ("bounds", "metric", "pending")

    def __init__(self, metric: Histogram, bounds: Sequence[float]) -> None:
        self.metric = metric
        self.bounds = tuple(float(b) for b in bounds)
        self.pending: dict[tuple[Any, ...], list[float]] = {}

    def observe(self, labels: tuple[Any, ...], value: float) -> None:
        acc = self.pending.get(labels)
        if acc is None:
            # [sum, then one count per bucket: the bounds, then +Inf]
            acc = self.pending[labels] = [0.0] * (len(self.bounds) + 2)
        acc[0] += value
        acc[1 + bisect.bisect_left(self.bounds, value)] += 1

    def flush(self) -> None:
        pending, self.pending = self.pending, {}
        for labels, acc in pending.items():
            child = self.metric.labels(*map(str, labels))
            # Histogram.observe() adds one observation; these are many, already sorted into
            # buckets. Its per-bucket values (non-cumulative, like observe() writes them)
            # and its sum are the same in both modes; tests/test_metrics.py checks that
            # this gives what observe() would.
            child._sum.inc(acc[0])
            buckets = child._buckets
            for i, count in enumerate(acc[1:]):
                if count:
                    buckets[i].inc(count)


class Metrics(JobEvents):
    """This worker's metrics, and the exposition of every worker's."""

    def __init__(self, *, multiprocess_dir: str | None = None) -> None:
        multiprocess_dir = multiprocess_dir or os.environ.get(MULTIPROC_ENV)
        # prometheus_client picks its value class when it is first imported.
        self.multiprocess = bool(multiprocess_dir) and values.ValueClass._multiprocess
        self.registry = CollectorRegistry(auto_describe=True)
        if self.multiprocess:
            MultiProcessCollector(self.registry, path=multiprocess_dir)  # type: ignore[no-untyped-call]
            target: CollectorRegistry | None = None  # the files are the registry
        else:
            target = self.registry

        def counter(name: str, doc: str, labels: Sequence[str]) -> Counter:
            return Counter(name, doc, labels, registry=target)

        def histogram(
            name: str, doc: str, labels: Sequence[str], buckets: Sequence[float]
        ) -> Histogram:
            return Histogram(name, doc, labels, registry=target, buckets=buckets)

        def gauge(name: str, doc: str, labels: Sequence[str] = ()) -> Gauge:
            return Gauge(name, doc, labels, registry=target, multiprocess_mode="livesum")

        self._requests = _Counts(
            counter(
                "jobpool_http_requests_total",
                "HTTP requests answered, by route template, method and status.",
                ("route", "method", "status"),
            )
        )
        self._request_seconds = _Observations(
            histogram(
                "jobpool_http_request_duration_seconds",
                "Time from a request's arrival to its answer, by route template and method.",
                ("route", "method"),
                REQUEST_BUCKETS,
            ),
            REQUEST_BUCKETS,
        )
        self._submitted = _Counts(
            counter(
                "jobpool_jobs_submitted_total",
                "Jobs accepted (stored, then answered 202 or waited on), by job and pool.",
                ("job", "pool"),
            )
        )
        self._rejected = _Counts(
            counter(
                "jobpool_jobs_rejected_total",
                "Jobs refused before they were stored (503), by job and reason.",
                ("job", "reason"),
            )
        )
        self._completed = _Counts(
            counter(
                "jobpool_jobs_completed_total",
                "Jobs that reached a final state (succeeded, failed, cancelled), by job.",
                ("job", "state"),
            )
        )
        self._client_requests = _Counts(
            counter(
                "jobpool_client_requests_total",
                "Requests of authenticated clients answered, by client and status.",
                ("client", "status"),
            )
        )
        self._retried = _Counts(
            counter(
                "jobpool_jobs_retried_total",
                "Failed attempts run again (their job scheduled after a backoff), by job.",
                ("job",),
            )
        )
        self._delayed = _Counts(
            counter(
                "jobpool_jobs_delayed_total",
                "Jobs submitted to start later (Job-Delay, Job-Not-Before), by job.",
                ("job",),
            )
        )
        self._cancelled = _Counts(
            counter(
                "jobpool_jobs_cancelled_total",
                "Jobs cancelled, by job and how (dequeued, terminated, stopped, abandoned).",
                ("job", "how"),
            )
        )
        self._run_seconds = _Observations(
            histogram(
                "jobpool_job_run_seconds",
                "Time from a job's start to its end, by job.",
                ("job",),
                JOB_BUCKETS,
            ),
            JOB_BUCKETS,
        )
        self._wait_seconds = _Observations(
            histogram(
                "jobpool_job_queue_wait_seconds",
                "Time from a job's creation to its start (queued), by job.",
                ("job",),
                JOB_BUCKETS,
            ),
            JOB_BUCKETS,
        )
        pool = ("pool",)
        self._pool_gauges: dict[str, Gauge] = {
            "queued_jobs": gauge(
                "jobpool_pool_queued_jobs", "Jobs accepted and waiting for their pool.", pool
            ),
            "running_jobs": gauge("jobpool_pool_running_jobs", "Jobs running.", pool),
            "busy_slots": gauge(
                "jobpool_pool_busy_slots", "Threads (io) or processes (cpu) running a task.", pool
            ),
            "slots": gauge("jobpool_pool_slots", "Threads (io) or processes (cpu).", pool),
            "admitted_tasks": gauge(
                "jobpool_pool_admitted_tasks",
                "Tasks admitted and not done (queued or running).",
                pool,
            ),
            "admission_limit": gauge(
                "jobpool_pool_admission_limit", "Admitted tasks at which submits get 503.", pool
            ),
            "scheduled_jobs": gauge(
                "jobpool_pool_scheduled_jobs",
                "Jobs waiting for their time in this host's workers (SQLite store; with Redis"
                " they wait in the fleet's store).",
                pool,
            ),
        }
        self._workers = gauge("jobpool_workers", "Workers serving (gunicorn workers alive).")
        self._sample: Callable[[], list[PoolStats]] = list
        self._loop_task: asyncio.Task[None] | None = None

    # -- the hot path: plain dict updates --------------------------------------------

    def request(
        self, route: str, method: str, status: int, seconds: float, client: str | None = None
    ) -> None:
        """One answered request (the access middleware, per request), of ``client`` when
        its key was known."""
        self._requests.add((route, method, status))
        self._request_seconds.observe((route, method), seconds)
        if client is not None:
            self._client_requests.add((client, status))

    def accepted(self, job: str, pool: Pool) -> None:
        self._submitted.add((job, pool))

    def rejected(self, job: str, reason: str) -> None:
        self._rejected.add((job, reason))

    def started(self, job: str, waited_s: float) -> None:
        self._wait_seconds.observe((job,), waited_s)

    def finished(self, job: str, state: JobState, ran_s: float | None) -> None:
        self._completed.add((job, state.value))
        if ran_s is not None:
            self._run_seconds.observe((job,), ran_s)

    def retried(self, job: str) -> None:
        self._retried.add((job,))

    def scheduled(self, job: str) -> None:
        self._delayed.add((job,))

    def cancelled(self, job: str, how: str) -> None:
        self._cancelled.add((job, how))

    # -- moving the counts into prometheus_client ------------------------------------

    def watch(self, sample: Callable[[], list[PoolStats]]) -> None:
        """Where the pool gauges come from (the job layer's ``pool_stats``)."""
        self._sample = sample

    def flush(self) -> None:
        """Write this worker's pending counts and its pool gauges."""
        for counts in (
            self._requests, self._submitted, self._rejected, self._completed, self._retried,
            self._delayed, self._cancelled, self._client_requests,
        ):  # fmt: skip
            counts.flush()
        for observations in (self._request_seconds, self._run_seconds, self._wait_seconds):
            observations.flush()
        for stats in self._sample():
            for field, gauge in self._pool_gauges.items():
                gauge.labels(stats.pool).set(getattr(stats, field))

    async def start(self) -> None:
        """Count this worker in and flush every :data:`FLUSH_INTERVAL_S` until :meth:`stop`."""
        self._workers.set(1)
        self.flush()
        self._loop_task = asyncio.create_task(self._flush_loop(), name="jobpool-metrics")

    async def _flush_loop(self) -> None:
        while True:
            await asyncio.sleep(FLUSH_INTERVAL_S)
            try:
                self.flush()
            except Exception:  # a full disk must not stop the worker; try again later
                log.exception("metrics flush failed")

    async def stop(self) -> None:
        """Flush what is left; this worker stops counting."""
        await cancel_and_wait(self._loop_task)
        self._loop_task = None
        self.flush()

    def figures(self) -> Figures:
        """The host's figures for the dashboard, read from every worker's files (file I/O:
        call off the loop, after :meth:`flush` on it, as for :meth:`exposition`)."""
        out = Figures(latency=[0.0] * (len(REQUEST_BUCKETS) + 1))
        # The "le" label as prometheus_client writes it ("0.001", "1.0", "+Inf").
        bounds = {
            floatToGoString(b): i  # type: ignore[no-untyped-call]
            for i, b in enumerate(REQUEST_BUCKETS)
        } | {"+Inf": -1}
        jobs = out.jobs = dict.fromkeys(("accepted", "succeeded", "failed", "cancelled",
                                         "rejected"), 0.0)  # fmt: skip
        for family in self.registry.collect():
            name = family.name
            for sample in family.samples:
                labels, value = sample.labels, sample.value
                if name.startswith("jobpool_pool_"):
                    pool = out.pools.setdefault(labels["pool"], {})
                    gauge = name.removeprefix("jobpool_pool_")
                    pool[gauge] = pool.get(gauge, 0.0) + value
                elif not sample.name.endswith(("_total", "_bucket")):
                    continue  # _created, _count, _sum
                elif name == "jobpool_jobs_submitted":
                    jobs["accepted"] += value
                elif name == "jobpool_jobs_rejected":
                    jobs["rejected"] += value
                elif name == "jobpool_jobs_completed" and labels["state"] in jobs:
                    jobs[labels["state"]] += value
                elif name == "jobpool_http_request_duration_seconds":
                    if not labels["route"].startswith(UNWATCHED_PREFIX):
                        out.latency[bounds[labels["le"]]] += value
                elif name == "jobpool_client_requests":
                    row = out.clients.setdefault(labels["client"], dict.fromkeys(
                        ("requests", "throttled"), 0.0))  # fmt: skip
                    row["requests"] += value
                    if labels["status"] == "429":
                        row["throttled"] += value
        out.requests = out.latency[-1]
        return out

    def exposition(self) -> bytes:
        """Prometheus text of every worker (reads the shared files: call off the loop)."""
        return generate_latest(self.registry)
