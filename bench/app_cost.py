"""Server CPU per seed batch inside the app, without HTTP: the floor app against jobpool.

    python -m bench.app_cost [--requests 6000] [--concurrency 32] [--rounds 3]
                             [--compare REF]

Each app runs under falcon's ASGI test conductor (jobpool with its lifespan: pools, the
SQLite store in a temporary directory, auth on, client limits off so one client can send
everything), fed the seed's 9-item batch ``--concurrency`` at a time, in a process of its
own. It prints the process's CPU microseconds per request of each (that process's threads,
jobpool's io threads and checkpointer included), median and each round, and the
difference: what the job layer, the store and the middleware add to a request, apart from
gunicorn's HTTP parsing and the sockets that ``bench.ingest`` measures too. Run one
measurement (``--measure jobpool``) under ``py-spy record --gil`` to see where that
difference goes.

``--compare REF`` (repeatable) adds jobpool at another git revision as ``jobpool@REF``: a
worktree (removed after the run) whose ``service`` package the measuring process imports
ahead of this one's, so that before/after figures come from one run.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import subprocess
import sys
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import orjson

ROOT = Path(__file__).resolve().parent.parent
BATCH = orjson.dumps(
    {
        "Data": [
            {"id": str(i), "time": f"2026-11-22T10:00:0{i}Z", "data": "x" * 40} for i in range(9)
        ]
    }
)
WARM_UP = 50


async def cpu_per_request(app: Any, headers: dict[str, str], requests: int, at_once: int) -> float:
    from falcon import testing

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


def measure(app: str, requests: int, at_once: int) -> float:
    """CPU microseconds per request of ``app`` (``floor`` or ``jobpool``) in this process.
    The caller put the checkout to measure first on ``sys.path``: nothing imports
    ``service`` before this runs."""
    from service.app import create_app
    from service.config import Settings
    from service.keys import entry_for, env_entries, new_key

    if app == "floor":
        from bench import floor_app

        return asyncio.run(cpu_per_request(floor_app.app, {}, requests, at_once))
    key = new_key()
    with tempfile.TemporaryDirectory(prefix="jobpool-appcost-") as tmp:
        settings = Settings.from_env(
            {},
            state_dir=Path(tmp),
            cpu_workers=1,
            io_queue_max=1_000_000,
            client_rate=0,
            client_max_inflight=0,
            api_keys=env_entries(entry_for("bench", key)),
        )
        headers = {"Authorization": f"Bearer {key}"}
        return asyncio.run(cpu_per_request(create_app(settings), headers, requests, at_once))


def measure_apart(app: str, root: Path, args: argparse.Namespace) -> float:
    """:func:`measure` in a process of its own, on the code of the checkout at ``root``."""
    out = subprocess.run(
        [sys.executable, "-m", "bench.app_cost", "--measure", app, "--service-root", str(root),
         "--requests", str(args.requests), "--concurrency", str(args.concurrency)],
        cwd=ROOT, capture_output=True, text=True, check=False,
    )  # fmt: skip
    if out.returncode != 0:
        raise SystemExit(f"{app} at {root}:\n{out.stderr}")
    found = json.loads(out.stdout.strip().splitlines()[-1])
    if not Path(found["service"]).resolve().is_relative_to(root.resolve()):
        raise SystemExit(f"{app}: measured {found['service']}, not the code under {root}")
    return float(found["us"])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--requests", type=int, default=6000)
    ap.add_argument("--concurrency", type=int, default=32)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument(
        "--compare", action="append", default=[], metavar="REF",
        help="also measure jobpool at git revision REF, as jobpool@REF (repeatable)",
    )  # fmt: skip
    ap.add_argument("--measure", choices=["floor", "jobpool"], help="measure one app, here")
    ap.add_argument("--service-root", type=Path, default=ROOT, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.measure:
        sys.path.insert(0, str(args.service_root))
        us = measure(args.measure, args.requests, args.concurrency)
        print(json.dumps({"us": us, "service": sys.modules["service"].__file__}))
        return
    from bench.checkout import checkout

    with ExitStack() as stack:
        rows = [("floor", "floor", ROOT), ("jobpool", "jobpool", ROOT)]
        rows += [
            (f"jobpool@{ref}", "jobpool", stack.enter_context(checkout(ref)))
            for ref in args.compare
        ]
        results: dict[str, list[float]] = {name: [] for name, _, _ in rows}
        for r in range(args.rounds):
            for name, app, root in rows if r % 2 == 0 else reversed(rows):
                results[name].append(measure_apart(app, root, args))
    floor = statistics.median(results["floor"])
    print(
        f"seed batch in-process, {args.requests} requests, {args.concurrency} at once, "
        f"{args.rounds} round(s): median CPU us per request (each round)"
    )
    width = max(len(name) for name in results) + 2
    for name, values in results.items():
        median = statistics.median(values)
        extra = "" if name == "floor" else f"   (+{median - floor:.0f} us over the floor)"
        rounds = ", ".join(f"{v:.0f}" for v in values)
        print(f"{name:<{width}}{median:7.0f} us  ({rounds}){extra}")


if __name__ == "__main__":
    main()
