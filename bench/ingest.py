"""Seed-batch ingest benchmark: the framework floor and jobpool, in one run, same load.

    python -m bench.ingest [--duration 10] [--connections 32] [--rounds 2] [--redis]

Starts each server with gunicorn.conf.py (same worker class, loop, worker count), drives it
with wrk posting the seed's 9-item batch with an API key (jobpool runs with auth on and its
client limits on, set too high to refuse anything, so their cost is in the figures), and
prints requests/s, p50/p99 latency, errors and
server CPU microseconds per request (the server's whole process tree, from psutil), plus
jobpool's ratio to the floor. Rounds alternate floor/jobpool so drift on this shared
machine hits both alike.

``--stages`` adds jobpool stopped short after validating the batch and after its durable
accept (:mod:`bench.stages`), to show what each stage of the request path costs.

``--redis`` adds jobpool with the fleet store (``JOBPOOL_STORE_URL=redis://…``) to each
round: a redis-server of its own (loopback, a temp dir, append-only file fsynced every
second, as a fleet should run it), emptied before each round. Its CPU is counted with the
server's, since on one host the two share the cores.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import psutil

from bench import server
from bench.client import BenchClient
from bench.server import server_env

ROOT = Path(__file__).resolve().parent.parent
LUA = Path(__file__).with_name("seed_batch.lua")
#: jobpool stopped short (--stages): name -> the app gunicorn loads.
STAGES = {"validated": "bench.stages:validated()", "accepted": "bench.stages:accepted()"}


@dataclass
class Result:
    name: str
    rps: float
    accepted_rps: float
    p50_ms: float
    p99_ms: float
    errors: int
    cpu_us_per_req: float


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


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def start_redis(directory: Path) -> tuple[subprocess.Popen[bytes], int]:
    binary = shutil.which("redis-server")
    if binary is None:
        raise SystemExit("--redis needs redis-server (apt-get install redis-server)")
    port = free_port()
    proc = subprocess.Popen(
        [binary, "--port", str(port), "--bind", "127.0.0.1", "--dir", str(directory),
         "--save", "", "--appendonly", "yes", "--appendfsync", "everysec"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if redis_command(port, "PING") == "+PONG":
            return proc, port
        time.sleep(0.05)
    proc.kill()
    raise RuntimeError("redis-server did not start")


def redis_command(port: int, *args: str) -> str:
    payload = f"*{len(args)}\r\n".encode()
    for arg in args:
        payload += b"$%d\r\n%s\r\n" % (len(arg), arg.encode())
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
            s.sendall(payload)
            return s.recv(4096).split(b"\r\n", 1)[0].decode()
    except OSError:
        return ""


def drive(
    name: str,
    proc: subprocess.Popen[bytes],
    port: int,
    args: argparse.Namespace,
    key: str,
    extra_pids: tuple[int, ...] = (),
) -> Result:
    before = tree_cpu(proc.pid) + sum(tree_cpu(p) for p in extra_pids)
    out = subprocess.run(
        ["wrk", f"-t{args.threads}", f"-c{args.connections}", f"-d{args.duration}s",
         "-s", str(LUA), f"http://127.0.0.1:{port}/v1/parcels"],
        capture_output=True, text=True, check=True,
        env={**os.environ, "JOBPOOL_BENCH_KEY": key},  # seed_batch.lua sends it
    ).stdout  # fmt: skip
    time.sleep(0.5)  # let the last jobs of the run finish: their CPU belongs to the run
    cpu = tree_cpu(proc.pid) + sum(tree_cpu(p) for p in extra_pids) - before
    total = int(re.search(r"(\d+) requests in", out).group(1))  # type: ignore[union-attr]
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    statuses = dict(
        (int(s), int(n))
        for s, n in re.findall(r"(\d+)=(\d+)", out.split("STATUS", 1)[1].split("\n")[0])
    )
    lat = re.search(r"LAT p50=(\d+) p99=(\d+)", out)
    socket_errors = sum(int(n) for n in re.findall(r"(?:connect|read|write|timeout) (\d+)", out))
    accepted = statuses.get(202, 0)
    errors = total - accepted + socket_errors
    return Result(
        name=name,
        rps=rps,
        accepted_rps=rps * accepted / total if total else 0.0,
        p50_ms=int(lat.group(1)) / 1000 if lat else 0.0,
        p99_ms=int(lat.group(2)) / 1000 if lat else 0.0,
        errors=errors,
        cpu_us_per_req=cpu / total * 1e6 if total else 0.0,
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--duration", type=int, default=10)
    ap.add_argument("--connections", type=int, default=32)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--workers", type=int, default=psutil.cpu_count() or 1)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--port", type=int, default=18500)
    ap.add_argument(
        "--jobpool-env", action="append", default=[], metavar="NAME=VALUE",
        help="extra environment for the jobpool servers (repeatable)",
    )  # fmt: skip
    ap.add_argument(
        "--redis", action="store_true",
        help="also run jobpool on the Redis store (starts its own redis-server)",
    )  # fmt: skip
    ap.add_argument(
        "--stages", action="store_true",
        help="also run jobpool stopped after validation and after the durable accept",
    )  # fmt: skip
    args = ap.parse_args()
    servers = [("floor", "bench.floor_app:app")]
    if args.stages:
        servers += [
            ("validated", "bench.stages:validated()"),
            ("accepted", "bench.stages:accepted()"),
        ]
    servers.append(("jobpool", "service.asgi:app"))
    if args.redis:
        servers.append(("jp-redis", "service.asgi:app"))
    results: dict[str, list[Result]] = {name: [] for name, _ in servers}
    bench = BenchClient()
    with tempfile.TemporaryDirectory(prefix="jobpool-bench-") as tmp:
        redis: tuple[subprocess.Popen[bytes], int] | None = None
        if args.redis:
            redis = start_redis(Path(tmp))
        try:
            for r in range(args.rounds):
                for name, app in servers:
                    # The floor too gets the key: gunicorn.conf.py wants keys.
                    env = server_env(Path(tmp) / f"{name}-{r}", bench.env)
                    extra: tuple[int, ...] = ()
                    if name != "floor":
                        env.update(kv.split("=", 1) for kv in args.jobpool_env)
                    if name == "jp-redis" and redis is not None:
                        redis_command(redis[1], "FLUSHALL")
                        env["JOBPOOL_STORE_URL"] = f"redis://127.0.0.1:{redis[1]}/0"
                        extra = (redis[0].pid,)
                    proc = server.start(args.port, env, app=app, workers=args.workers, settle_s=1.0)
                    try:
                        results[name].append(drive(name, proc, args.port, args, bench.key, extra))
                    finally:
                        server.stop(proc)
        finally:
            if redis is not None:
                redis[0].terminate()
                redis[0].wait(30)
    print(
        f"seed batch, {args.workers} workers, wrk -t{args.threads} -c{args.connections} "
        f"-d{args.duration}s, {args.rounds} round(s), best round shown"
    )
    print(f"{'server':<10}{'req/s':>10}{'202/s':>10}{'p50 ms':>9}{'p99 ms':>9}{'errors':>9}"
          f"{'CPU us/req':>12}")  # fmt: skip
    best = {name: max(rs, key=lambda x: x.accepted_rps) for name, rs in results.items()}
    for res in best.values():
        print(f"{res.name:<10}{res.rps:>10.0f}{res.accepted_rps:>10.0f}{res.p50_ms:>9.2f}"
              f"{res.p99_ms:>9.2f}{res.errors:>9}{res.cpu_us_per_req:>12.0f}")  # fmt: skip
    for name in results:
        if name != "floor":
            ratio = best[name].accepted_rps / best["floor"].accepted_rps
            target = "" if name in STAGES else "   (target >= 0.70x)"
            print(f"{name} / floor (accepted req/s): {ratio:.2f}x{target}")
    for name, rs in results.items():
        rounds = ", ".join(f"{x.accepted_rps:.0f} @ {x.cpu_us_per_req:.0f}" for x in rs)
        print(f"  {name} rounds (202/s @ CPU us/req): {rounds}")
    # Each round runs the servers back to back: its ratio is the one least bent by the load
    # others put on a shared machine.
    for name, rs in results.items():
        if name != "floor":
            pairs = zip(rs, results["floor"], strict=True)
            ratios = [x.accepted_rps / f.accepted_rps for x, f in pairs if f.accepted_rps]
            print(f"  {name} / floor by round: " + ", ".join(f"{r:.2f}x" for r in ratios))


if __name__ == "__main__":
    main()
