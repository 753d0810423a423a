"""Seed-batch ingest benchmark: jobpool and its peers, in one run, under the same load.

    python -m bench.ingest [--peers floor,floor-uvicorn,fastapi,celery] [--rounds 3]
                           [--duration 10] [--threads 1] [--connections 32]
                           [--idempotency] [--redis] [--stages] [--compare REF]

Starts each server (by default 2 workers on this 2-vCPU host: one per vCPU, as jobpool
does), drives it with wrk posting the seed's 9-item batch with an API key (jobpool runs
with auth on and its client limits on, set too high to refuse anything, so their cost is
in the figures; the peers ignore the key), and prints for each: req/s; 2xx/s (jobpool's
202s; any 2xx of a peer, though all answer 202); p50/p99 latency; non-2xx (other answers
and socket errors); server CPU microseconds per request (its whole process tree, and a
peer's task worker and Redis too, Redis's own share printed apart); the backlog a durable
peer left queued when the load stopped; and jobpool/x, jobpool's 2xx/s over the row's.
Medians over the rounds come first, then each round's figures; each round runs every
server once, in reverse order every other round, so drift on this shared machine hits all
alike.

Peers (``--peers``, comma-separated, ``all`` or ``none``; see :mod:`bench.contenders`):
``floor`` and ``floor-uvicorn`` (the bare Falcon app under gunicorn's asgi worker and
under uvicorn's), ``fastapi`` (pydantic model, async background tasks, stores nothing),
and the durable ``celery``, ``celery-batch`` and ``rq`` (one task per item, or per batch,
on a local Redis, one worker process). A durable peer's CPU also covers running its
backlog, for up to ``--drain-s`` after the load; a figure marked ``+`` had work left.

``--stages`` adds jobpool stopped short after validating the batch and after its durable
accept (:mod:`bench.stages`), to show what each stage of the request path costs.

``--idempotency`` adds jobpool with a fresh ``Idempotency-Key`` on every request
(``jp-keyed``): what a careful client's key costs.

``--redis`` adds jobpool with the fleet store (``JOBPOOL_STORE_URL=redis://…``). The run's
redis-server (loopback, a temp dir, append-only file fsynced every second, as a fleet
should run it) is started when a row needs it, and emptied before each such row.

``--compare REF`` (repeatable) adds jobpool at another git revision as ``jobpool@REF``,
from a worktree removed after the run, so that before/after figures come from one run.

Benchmarks: this host has 2 vCPUs shared with other work, so compare rows within one run,
over several rounds, never figures across runs; the issue's table used ``-t1 -c32``.
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import tempfile
import time
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

import psutil

from bench import redis_server
from bench.checkout import ROOT, checkout
from bench.client import BenchClient
from bench.contenders import DEFAULT_PEERS, PEERS, Contender, Running, jobpool, missing, running
from bench.server import free_port, server_env

LUA = Path(__file__).with_name("seed_batch.lua")


@dataclass
class Result:
    name: str
    rps: float
    #: requests/s answered as done: 202 for jobpool, any 2xx for a peer.
    ok_rps: float
    p50_ms: float
    p99_ms: float
    #: answers that were not done, and socket errors.
    not_ok: int
    cpu_us_per_req: float
    #: of which the run's redis-server (0 for a row without it).
    redis_us_per_req: float
    #: tasks still queued when the load stopped (durable peers), and whether they all ran
    #: before the CPU was read.
    backlog: int
    drained: bool


def tree_cpu(pid: int) -> float:
    """User+system CPU seconds of a process and all its descendants (live ones)."""
    total = 0.0
    try:
        root = psutil.Process(pid)
        procs = [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return 0.0
    for p in procs:
        try:
            t = p.cpu_times()
            total += t.user + t.system + t.children_user + t.children_system
        except psutil.NoSuchProcess:
            pass
    return total


def drive(
    contender: Contender, serving: Running, port: int, args: argparse.Namespace, key: str
) -> Result:
    def cpu() -> float:
        return sum(tree_cpu(pid) for pid in serving.pids)

    def redis_cpu() -> float:
        return tree_cpu(serving.redis_pid) if serving.redis_pid else 0.0

    before, redis_before = cpu(), redis_cpu()
    out = subprocess.run(
        ["wrk", f"-t{args.threads}", f"-c{args.connections}", f"-d{args.duration}s",
         "-s", str(LUA), f"http://127.0.0.1:{port}/v1/parcels"],
        capture_output=True, text=True, check=True,
        env={  # seed_batch.lua sends the API key, and Idempotency-Keys if asked
            **os.environ,
            "JOBPOOL_BENCH_KEY": key,
            "JOBPOOL_BENCH_IDEMPOTENCY": "1" if contender.keyed else "",
        },
    ).stdout  # fmt: skip
    backlog = serving.backlog()
    deadline = time.monotonic() + args.drain_s
    while (left := serving.backlog()) > 0 and time.monotonic() < deadline:
        time.sleep(0.2)
    time.sleep(0.5)  # let the last jobs of the run finish: their CPU belongs to the run
    spent, redis_spent = cpu() - before, redis_cpu() - redis_before
    total = int(re.search(r"(\d+) requests in", out).group(1))  # type: ignore[union-attr]
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    statuses = {
        k: int(n) for k, n in re.findall(r"(\w+)=(\d+)", out.split("STATUS", 1)[1].split("\n")[0])
    }
    lat = re.search(r"LAT p50=(\d+) p99=(\d+)", out)
    socket_errors = sum(int(n) for n in re.findall(r"(?:connect|read|write|timeout) (\d+)", out))
    done = statuses["202"] + (0 if contender.jobpool else statuses["other2xx"])
    return Result(
        name=contender.name,
        rps=rps,
        ok_rps=rps * done / total if total else 0.0,
        p50_ms=int(lat.group(1)) / 1000 if lat else 0.0,
        p99_ms=int(lat.group(2)) / 1000 if lat else 0.0,
        not_ok=total - done + socket_errors,
        cpu_us_per_req=spent / total * 1e6 if total else 0.0,
        redis_us_per_req=redis_spent / total * 1e6 if total else 0.0,
        backlog=backlog,
        drained=left <= 0,
    )


def lineup(args: argparse.Namespace, stack: ExitStack) -> list[Contender]:
    """The rows of this run, in the order of its first round."""
    names = (
        list(PEERS) if args.peers == "all"
        else [] if args.peers == "none"
        else [n.strip() for n in args.peers.split(",") if n.strip()]
    )  # fmt: skip
    unknown = [n for n in names if n not in PEERS]
    if unknown:
        raise SystemExit(f"--peers: unknown {unknown}; known: {', '.join(PEERS)}, all, none")
    rows = [PEERS[n] for n in names]
    if args.stages:
        rows += [
            jobpool("validated", app="bench.stages:validated()", stores="nothing"),
            jobpool("accepted", app="bench.stages:accepted()", stores="SQLite (job row)"),
        ]
    if lacking := missing(rows):
        raise SystemExit(f"these peers need {', '.join(lacking)}: pip install -e '.[bench]'")
    rows.append(jobpool())
    if args.idempotency:
        rows.append(jobpool("jp-keyed", stores="SQLite, +key", keyed=True))
    if args.redis:
        rows.append(jobpool("jp-redis", stores="Redis AOF", redis=True))
    for ref in args.compare:
        rows.append(jobpool(f"jobpool@{ref}", root=stack.enter_context(checkout(ref))))
    return rows


def ratio(base: Result, row: Result) -> float:
    """jobpool's done requests/s over a row's, in the same round."""
    return base.ok_rps / row.ok_rps if row.ok_rps else 0.0


def print_table(args: argparse.Namespace, results: dict[str, list[Result]]) -> None:
    width = max(10, *(len(name) + 2 for name in results))
    stores = {c.name: c.stores for c in args.rows}
    base = results["jobpool"]
    queued = {c.name for c in args.rows if c.queue}
    print(
        f"seed batch, {args.workers} workers, wrk -t{args.threads} -c{args.connections} "
        f"-d{args.duration}s, {args.rounds} round(s): medians "
        "(jobpool/x: jobpool's 2xx/s over the row's, median of the rounds' ratios)"
    )
    print(f"{'server':<{width}}{'req/s':>8}{'2xx/s':>8}{'p50 ms':>8}{'p99 ms':>8}"
          f"{'non-2xx':>8}{'CPU us/req':>11}{'backlog':>9}{'jobpool/x':>10}  stores")  # fmt: skip
    for name, rs in results.items():

        def med(field: str, rs: list[Result] = rs) -> float:
            return statistics.median(getattr(r, field) for r in rs)

        cpu = f"{med('cpu_us_per_req'):.0f}{'' if all(r.drained for r in rs) else '+'}"
        backlog = f"{med('backlog'):.0f}" if name in queued else "-"
        jp = statistics.median(ratio(b, r) for b, r in zip(base, rs, strict=True))
        print(
            f"{name:<{width}}{med('rps'):>8.0f}{med('ok_rps'):>8.0f}{med('p50_ms'):>8.2f}"
            f"{med('p99_ms'):>8.2f}{med('not_ok'):>8.0f}{cpu:>11}{backlog:>9}"
            f"{jp:>9.2f}x  {stores[name]}"
        )
    print("each round: 2xx/s @ CPU us/req (jobpool/x)")
    for name, rs in results.items():
        cells = [
            f"{r.ok_rps:.0f} @ {r.cpu_us_per_req:.0f}{'' if r.drained else '+'}"
            f" ({ratio(b, r):.2f}x)"
            for b, r in zip(base, rs, strict=True)
        ]
        print(f"  {name:<{width}}" + "   ".join(cells))
    with_redis = {n: rs for n, rs in results.items() if any(r.redis_us_per_req for r in rs)}
    if with_redis:
        print("of the CPU us/req, the run's redis-server's (median; each round):")
    for name, rs in with_redis.items():
        each = "   ".join(f"{r.redis_us_per_req:.0f}" for r in rs)
        median = statistics.median(r.redis_us_per_req for r in rs)
        print(f"  {name:<{width}}{median:.0f}   ({each})")
    if not all(r.drained for rs in results.values() for r in rs):
        print(f"+: tasks were still queued {args.drain_s:.0f} s after the load; CPU undercounted")


#: jobpool runs as in production (its access log on, at its default level) but for its
#: client limits: one benchmark client is one client (``--jobpool-env`` sets them back).
JOBPOOL_DEFAULTS = {
    "JOBPOOL_LOG_LEVEL": "info",
    "JOBPOOL_CLIENT_RATE": "0",
    "JOBPOOL_CLIENT_MAX_INFLIGHT": "0",
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--duration", type=int, default=10, help="seconds of load per server")
    ap.add_argument("--connections", type=int, default=32)
    ap.add_argument("--threads", type=int, default=1, help="wrk's threads")
    ap.add_argument("--workers", type=int, default=psutil.cpu_count() or 1)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument(
        "--port", type=int, default=0, help="the servers' port (default: a free one each time)"
    )
    ap.add_argument(
        "--peers", default=",".join(DEFAULT_PEERS),
        help=f"comma-separated, 'all' or 'none'; of: {', '.join(PEERS)}",
    )  # fmt: skip
    ap.add_argument(
        "--drain-s", type=float, default=30,
        help="seconds a durable peer gets to run its backlog after the load (CPU counted)",
    )  # fmt: skip
    ap.add_argument(
        "--jobpool-env", action="append", default=[], metavar="NAME=VALUE",
        help="extra environment for this checkout's jobpool rows, not the --compare ones,"
        " so a setting is measured against the code without it (repeatable)",
    )  # fmt: skip
    ap.add_argument(
        "--idempotency", action="store_true",
        help="also run jobpool with a fresh Idempotency-Key on every request (jp-keyed)",
    )  # fmt: skip
    ap.add_argument(
        "--redis", action="store_true",
        help="also run jobpool on the Redis store (starts its own redis-server)",
    )  # fmt: skip
    ap.add_argument(
        "--stages", action="store_true",
        help="also run jobpool stopped after validation and after the durable accept",
    )  # fmt: skip
    ap.add_argument(
        "--compare", action="append", default=[], metavar="REF",
        help="also run jobpool at git revision REF, as jobpool@REF (repeatable)",
    )  # fmt: skip
    args = ap.parse_args()
    bench = BenchClient()
    with ExitStack() as stack:
        args.rows = lineup(args, stack)
        results: dict[str, list[Result]] = {c.name: [] for c in args.rows}
        tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="jobpool-bench-")))
        redis = None
        if any(c.redis for c in args.rows):
            redis = redis_server.start(tmp)
            stack.callback(redis_server.stop, redis[0])
        for r in range(args.rounds):
            for c in args.rows if r % 2 == 0 else reversed(args.rows):
                env = server_env(tmp / f"{c.name}-{r}", bench.env, root=c.root)
                if c.jobpool:
                    env.update(JOBPOOL_DEFAULTS)
                    if c.root == ROOT:  # the --compare rows run as they are
                        env.update(kv.split("=", 1) for kv in args.jobpool_env)
                # A free port each time: other benchmarks may run on this host too.
                port = args.port or free_port()
                with running(c, port, env, workers=args.workers, redis=redis) as serving:
                    results[c.name].append(drive(c, serving, port, args, bench.key))
    print_table(args, results)


if __name__ == "__main__":
    main()
