"""Server CPU per seed batch inside the app, without HTTP: the floor app against jobpool.

    python -m bench.app_cost [--requests 6000] [--concurrency 32]

Both apps run in this process under falcon's ASGI test conductor (jobpool with its
lifespan: pools, the SQLite store in a temporary directory, auth on, client limits off so
one client can send everything), fed the seed's 9-item batch ``--concurrency`` at a time.
It prints the process's CPU microseconds per request of each (this process's threads,
jobpool's io threads and checkpointer included) and the difference: what the job layer,
the store and the middleware add to a request, apart from gunicorn's HTTP parsing and the
sockets that ``bench.ingest`` measures too. Run it under ``py-spy record --gil`` to see
where that difference goes.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import orjson
from falcon import testing

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench import floor_app  # noqa: E402
from bench.client import BenchClient  # noqa: E402
from service.app import create_app  # noqa: E402
from service.config import Settings  # noqa: E402
from service.keys import env_entries  # noqa: E402

BATCH = orjson.dumps(
    {
        "Data": [
            {"id": str(i), "time": f"2026-11-22T10:00:0{i}Z", "data": "x" * 40} for i in range(9)
        ]
    }
)
WARM_UP = 50


async def cpu_per_request(app: Any, headers: dict[str, str], requests: int, at_once: int) -> float:
    async with testing.ASGIConductor(app, headers=headers) as client:

        async def one() -> None:
            r = await client.simulate_post(
                "/v1/parcels", body=BATCH, headers={"Content-Type": "application/json"}
            )
            if r.status_code != 202:
                raise RuntimeError(f"{r.status_code}: {r.text}")

        for _ in range(WARM_UP):
            await one()
        rounds = max(1, requests // at_once)
        start = time.process_time()
        for _ in range(rounds):
            await asyncio.gather(*(one() for _ in range(at_once)))
            await asyncio.sleep(0.002)  # let the batches end, as between packets on a socket
        return (time.process_time() - start) / (rounds * at_once) * 1e6


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--requests", type=int, default=6000)
    ap.add_argument("--concurrency", type=int, default=32)
    args = ap.parse_args()
    bench = BenchClient()
    floor = asyncio.run(cpu_per_request(floor_app.app, {}, args.requests, args.concurrency))
    with tempfile.TemporaryDirectory(prefix="jobpool-appcost-") as tmp:
        settings = Settings.from_env(
            {},
            state_dir=Path(tmp),
            cpu_workers=1,
            io_queue_max=1_000_000,
            client_rate=0,
            client_max_inflight=0,
            api_keys=env_entries(bench.env["JOBPOOL_API_KEYS"]),
        )
        jobpool = asyncio.run(
            cpu_per_request(create_app(settings), bench.headers, args.requests, args.concurrency)
        )
    print(f"seed batch in-process, {args.requests} requests, {args.concurrency} at once")
    print(f"floor    {floor:7.0f} us CPU per request")
    print(f"jobpool  {jobpool:7.0f} us CPU per request   (+{jobpool - floor:.0f} us)")


if __name__ == "__main__":
    main()
