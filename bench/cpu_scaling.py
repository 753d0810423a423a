"""CPU scaling: does jobpool's cpu pool use every vCPU?

    python -m bench.cpu_scaling [--seconds 20] [--clients 8]

In one run it measures images per second of
  (a) one process running the benchmark operation in a loop (the baseline), and
  (b) jobpool's cpu pool through HTTP, JOBPOOL_CPU_WORKERS = vCPUs, gunicorn workers = vCPUs,
and prints the ratio (target >= 0.85 x vCPUs). The operation is a full decode, a LANCZOS
resize to 2400 px wide and a JPEG encode of photo-like 2-4 megapixel images: well over 50 ms
of CPU each, so the figure measures the pool rather than HTTP. While the pool is saturated
it also probes /healthz and prints its p50/p99 latency.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import psutil
import urllib3

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench import server  # noqa: E402
from bench.client import BenchClient  # noqa: E402
from bench.server import server_env  # noqa: E402
from service.tasks.images.process import process_image  # noqa: E402
from tests.imagegen import photo_like  # noqa: E402

SIZES = [(1632, 1224), (2048, 1536), (2304, 1728)]  # 2.0, 3.1, 4.0 megapixels
QUERY = "op=resize&width=2400&height=1800&format=jpeg&quality=85"
REQUEST = {"op": "resize", "width": 2400, "height": 1800, "format": "jpeg", "quality": 85}
MAX_PIXELS = 50_000_000
BENCH = BenchClient()  # this run's API key


def images() -> list[bytes]:
    return [photo_like(w, h, "jpeg", seed=i) for i, (w, h) in enumerate(SIZES)]


def baseline(data: list[bytes], seconds: float) -> tuple[float, float]:
    """Images per second of one process, and CPU ms per image."""
    done, cpu0, t0 = 0, time.process_time(), time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        process_image(data[done % len(data)], REQUEST, max_pixels=MAX_PIXELS)
        done += 1
    return done / (time.perf_counter() - t0), (time.process_time() - cpu0) / done * 1000


def cpu_split(master: int) -> tuple[float, float]:
    """CPU seconds so far of (gunicorn workers, cpu pool processes) under ``master``."""
    http = pool = 0.0
    for p in psutil.Process(master).children(recursive=True):
        try:
            t = p.cpu_times()
            busy = t.user + t.system
            if "gunicorn" in " ".join(p.cmdline()) and p.ppid() == master:
                http += busy
            else:
                pool += busy
        except psutil.NoSuchProcess:
            pass
    return http, pool


@dataclass
class Split:
    """Where the CPU went during (b), per image finished."""

    http_ms: float  # gunicorn workers: HTTP, validation, the store
    pool_ms: float  # the cpu pool's processes
    client_ms: float  # this benchmark's clients, which share the machine
    other_ms: float  # everything else on the machine (other programs, the kernel)
    pool_busy: float  # share of all vCPUs the pool's processes used


def through_jobpool(
    data: list[bytes], port: int, seconds: float, clients: int, master: int
) -> tuple[float, int, list[float], Split]:
    """Images/s finished through HTTP; refusals; /healthz latencies (ms); where CPU went."""
    url = f"http://127.0.0.1:{port}"
    stop = threading.Event()
    counted = threading.Event()
    done = [0] * clients
    refused = [0] * clients
    health: list[float] = []

    def client(i: int) -> None:
        http = urllib3.PoolManager(retries=False, timeout=urllib3.Timeout(connect=5, read=120))
        n = i
        while not stop.is_set():
            r = http.request(
                "POST", f"{url}/v1/images?{QUERY}", body=data[n % len(data)],
                headers={"Content-Type": "image/jpeg", "Prefer": "wait=60", **BENCH.headers},
            )  # fmt: skip
            n += 1
            if r.status == 200 and counted.is_set():
                done[i] += 1
            elif r.status == 503:
                refused[i] += 1
                time.sleep(0.05)

    def prober() -> None:
        http = urllib3.PoolManager(retries=False, timeout=5)
        while not stop.is_set():
            t = time.perf_counter()
            http.request("GET", f"{url}/healthz")
            if counted.is_set():
                health.append((time.perf_counter() - t) * 1000)
            time.sleep(0.02)

    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    threads.append(threading.Thread(target=prober))
    for t in threads:
        t.start()
    time.sleep(3)  # warm up: processes started, pool saturated
    counted.set()
    t0 = time.perf_counter()
    http0, pool0 = cpu_split(master)
    own0, machine0 = time.process_time(), psutil.cpu_times()
    time.sleep(seconds)
    elapsed = time.perf_counter() - t0
    finished = sum(done)
    http1, pool1 = cpu_split(master)
    own1, machine1 = time.process_time(), psutil.cpu_times()
    stop.set()
    for t in threads:
        t.join()
    per = max(finished, 1)
    busy = sum(machine1) - sum(machine0) - (machine1.idle - machine0.idle)
    cpu = Split(
        http_ms=(http1 - http0) / per * 1000,
        pool_ms=(pool1 - pool0) / per * 1000,
        client_ms=(own1 - own0) / per * 1000,
        pool_busy=(pool1 - pool0) / (elapsed * (psutil.cpu_count() or 1)),
        other_ms=(busy - (http1 - http0) - (pool1 - pool0) - (own1 - own0)) / per * 1000,
    )
    return finished / elapsed, sum(refused), health, cpu


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--seconds", type=float, default=20)
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--port", type=int, default=18510)
    args = ap.parse_args()
    vcpus = psutil.cpu_count() or 1
    data = images()
    one, cpu_ms = baseline(data, args.seconds)
    with tempfile.TemporaryDirectory(prefix="jobpool-cpu-") as tmp:
        env = server_env(Path(tmp), {
            "JOBPOOL_CPU_WORKERS": str(vcpus), "JOBPOOL_WORKERS": str(vcpus),
            "JOBPOOL_IMAGE_BODY_MAX": str(8 << 20), **BENCH.env,
        })  # fmt: skip
        proc = server.start(args.port, env)
        try:
            pool, refused, health, cpu = through_jobpool(
                data, args.port, args.seconds, args.clients, proc.pid
            )
        finally:
            server.stop(proc)
    q = statistics.quantiles(health, n=100) if len(health) >= 2 else [0.0] * 99
    print(f"images: {len(data)} photo-like JPEGs of 2.0-4.0 MP; op: {QUERY}")
    print(f"{'run':<34}{'images/s':>10}")
    print(f"{'(a) one process, in a loop':<34}{one:>10.2f}   ({cpu_ms:.0f} ms CPU per image)")
    print(f"{'(b) jobpool cpu pool via HTTP':<34}{pool:>10.2f}   "
          f"(CPU_WORKERS={vcpus}, {args.clients} clients, {refused} refused)")  # fmt: skip
    print(
        f"{'':<34}{'':>10}   CPU per image: {cpu.http_ms:.0f} ms HTTP side + {cpu.pool_ms:.0f}"
        f" ms pool; {cpu.client_ms:.0f} ms these clients, {cpu.other_ms:.0f} ms the rest"
        f" of the machine"
    )
    print(f"{'':<34}{'':>10}   the pool's processes kept {cpu.pool_busy:.0%} of all vCPUs busy")
    ratio = pool / one
    print(
        f"ratio b/a: {ratio:.2f}  = {ratio / vcpus:.2f} x {vcpus} vCPUs   (target >= 0.85 x vCPUs)"
    )
    print(
        f"/healthz while saturated: p50 {q[49]:.1f} ms, p99 {q[98]:.1f} ms ({len(health)} probes)"
    )


if __name__ == "__main__":
    main()
