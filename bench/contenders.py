"""What ``bench.ingest`` puts under the same load: jobpool's rows and its peers, each with
how it is started, what answer counts as done, and where its backlog waits.

Peers (``--peers``), each as fair as its stack allows: loopback, the same worker count,
jobpool's keep-alive (``JOBPOOL_KEEPALIVE_S``'s default), logs at warning, no access log:

- ``floor``: the bare Falcon ASGI app (:mod:`bench.floor_app`) with ``gunicorn.conf.py``,
  gunicorn's own ``asgi`` worker, as jobpool runs; keeps the items in memory.
- ``floor-uvicorn``: the same app and config under ``uvicorn_worker.UvicornWorker``.
- ``fastapi``: FastAPI, a pydantic model, async background tasks (:mod:`bench.fastapi_app`),
  under ``uvicorn --workers``; stores nothing.
- ``celery``: FastAPI + Celery, one task per item (:mod:`bench.celery_app`), one worker
  process (solo pool), Redis as broker and result backend; stores durably.
- ``celery-batch``: the same with one task per batch (Celery's chunked shape).
- ``rq``: FastAPI + RQ, one job per item (:mod:`bench.rq_app`), one ``rq worker`` (the
  SimpleWorker: no fork per job, which would cost ~0.3 s of CPU for each job here);
  stores durably.

The durable peers use the run's redis-server (append-only, fsync every second), emptied
before each of them; their CPU is the web side's, the worker's and Redis's.
"""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from bench import redis_server, server
from service.config import Settings

ROOT = Path(__file__).resolve().parent.parent
KEEPALIVE_S = Settings.from_env({}).keepalive_s

CELERY_WORKER = ("-m", "celery", "-A", "bench.celery_app:celery", "worker", "--pool", "solo",
                 "--loglevel", "WARNING",
                 # a single worker: no cluster chatter (heartbeats, gossip, start-up sync)
                 "--without-heartbeat", "--without-gossip", "--without-mingle")  # fmt: skip
FASTAPI = ("fastapi", "uvicorn", "httptools")
RQ_WORKER = ("-m", "rq.cli", "worker", "--url", "{redis}", "--logging_level", "WARNING",
             "--worker-class", "rq.worker.SimpleWorker")  # fmt: skip


@dataclass(frozen=True)
class Contender:
    name: str
    #: what the server loads: ``module:attribute`` (or a factory call, for gunicorn).
    app: str
    #: ``gunicorn`` (gunicorn.conf.py, its asgi worker), ``gunicorn-uvicorn`` (the same
    #: with uvicorn_worker.UvicornWorker) or ``uvicorn`` (uvicorn's own process manager).
    serve: str = "gunicorn"
    #: what its 202 (or 200) stands for, shown in the table.
    stores: str = "nothing"
    #: jobpool's own app: only a 202 counts, and ``--jobpool-env`` applies.
    jobpool: bool = False
    #: needs the run's redis-server (jobpool's fleet store, or a peer's broker).
    redis: bool = False
    #: the command of its task worker (after ``python``); ``{redis}`` is Redis's URL.
    worker: tuple[str, ...] = ()
    #: the Redis list its tasks wait in: what is left there when the load stops is its
    #: backlog.
    queue: str | None = None
    #: the checkout whose code it runs (``--compare`` runs another revision's jobpool).
    root: Path = ROOT
    #: the modules it runs on beyond jobpool's own (``pip install -e '.[bench]'``).
    needs: tuple[str, ...] = ()
    #: each request carries a fresh ``Idempotency-Key`` (``--idempotency``).
    keyed: bool = False


PEERS = {
    c.name: c
    for c in [
        Contender("floor", "bench.floor_app:app", stores="memory"),
        Contender("floor-uvicorn", "bench.floor_app:app", serve="gunicorn-uvicorn",
                  stores="memory", needs=("uvicorn_worker", "httptools")),
        Contender("fastapi", "bench.fastapi_app:app", serve="uvicorn", needs=FASTAPI),
        Contender("celery", "bench.celery_app:app", serve="uvicorn", stores="Redis AOF",
                  redis=True, worker=CELERY_WORKER, queue="celery", needs=(*FASTAPI, "celery")),
        Contender("celery-batch", "bench.celery_app:batch_app", serve="uvicorn",
                  stores="Redis AOF", redis=True, worker=CELERY_WORKER, queue="celery",
                  needs=(*FASTAPI, "celery")),
        Contender("rq", "bench.rq_app:app", serve="uvicorn", stores="Redis AOF", redis=True,
                  worker=RQ_WORKER, queue="rq:queue:default", needs=(*FASTAPI, "rq")),
    ]
}  # fmt: skip
DEFAULT_PEERS = ("floor", "floor-uvicorn", "fastapi", "celery")


def missing(contenders: list[Contender]) -> list[str]:
    """The modules these contenders need that this environment lacks."""
    needed = dict.fromkeys(m for c in contenders for m in c.needs)
    return [m for m in needed if importlib.util.find_spec(m) is None]


def jobpool(
    name: str = "jobpool",
    *,
    app: str = "service.asgi:app",
    stores: str = "SQLite",
    redis: bool = False,
    root: Path = ROOT,
    keyed: bool = False,
) -> Contender:
    return Contender(name, app, stores=stores, jobpool=True, redis=redis, root=root, keyed=keyed)


@dataclass(frozen=True)
class Running:
    """A contender serving: the processes whose CPU it costs, and its backlog (tasks
    waiting in Redis; 0 for those that keep none)."""

    pids: tuple[int, ...]
    backlog: Callable[[], int]
    #: the run's redis-server, when this contender uses it (its CPU is in ``pids`` too).
    redis_pid: int | None = None


@contextmanager
def running(
    contender: Contender,
    port: int,
    env: Mapping[str, str],
    *,
    workers: int,
    redis: tuple[subprocess.Popen[bytes], int] | None,
) -> Iterator[Running]:
    """``contender`` serving on 127.0.0.1:``port`` (its worker too), stopped afterwards."""
    env = dict(env)
    extra: tuple[int, ...] = ()
    url = ""
    if contender.redis:
        if redis is None:
            raise ValueError(f"{contender.name} needs the run's redis-server")
        url = f"redis://127.0.0.1:{redis[1]}/0"
        redis_server.command(redis[1], "FLUSHALL")
        env["BENCH_REDIS_URL"] = url
        if contender.jobpool:
            env["JOBPOOL_STORE_URL"] = url
        extra = (redis[0].pid,)
    procs: list[subprocess.Popen[bytes]] = []
    try:
        if contender.worker:
            cmd = [sys.executable, *(a.format(redis=url) for a in contender.worker)]
            worker = subprocess.Popen(
                cmd, cwd=contender.root, env=env,
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            )  # fmt: skip
            procs.append(worker)
        procs.insert(0, _serve(contender, port, env, workers))
        queue, redis_port = contender.queue, redis[1] if redis else 0

        def backlog() -> int:
            return redis_server.length(redis_port, queue) if queue else 0

        yield Running(
            pids=(*(p.pid for p in procs), *extra),
            backlog=backlog,
            redis_pid=extra[0] if extra else None,
        )
    finally:
        for proc in procs:
            server.stop(proc)


def _serve(
    contender: Contender, port: int, env: Mapping[str, str], workers: int
) -> subprocess.Popen[bytes]:
    # settle_s: /readyz answers from the first worker up; give the others time to boot.
    if contender.serve == "uvicorn":
        cmd = [sys.executable, "-m", "uvicorn", contender.app, "--host", "127.0.0.1",
               "--port", str(port), "--workers", str(workers), "--loop", "uvloop",
               "--http", "httptools", "--log-level", "warning", "--no-access-log",
               "--timeout-keep-alive", str(KEEPALIVE_S)]  # fmt: skip
        return server.start_command(cmd, port, env, cwd=contender.root, settle_s=1.0)
    # gunicorn-uvicorn: jobpool's gunicorn.conf.py with uvicorn's worker class.
    config = "python:bench.gunicorn_uvicorn" if contender.serve == "gunicorn-uvicorn" else None
    return server.start(
        port, env, app=contender.app, workers=workers, root=contender.root, config=config,
        settle_s=1.0,
    )  # fmt: skip
