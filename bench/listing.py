"""Listing a client's jobs (``GET /v1/jobs``) on a store of a million jobs: indexed, and
the same queries with the indexes dropped (what a scan would cost).

    python -m bench.listing [--jobs 1000000] [--repeat 20]

Fills one SQLite shard (a temporary directory) with ``--jobs`` jobs of ``--clients``
clients (alice among them), as the store writes them (99% succeeded, 1% failed, a few
queued and scheduled; two job names; ids spread over a day), then times
``SqliteStore.list_jobs`` for the listings a client makes: the newest page, a page deep
in a cursor walk, a rare state, a job name, a time range. Prints milliseconds per query
(median of ``--repeat``), indexed and not.
"""

from __future__ import annotations

import argparse
import asyncio
import pickle
import random
import sqlite3
import statistics
import tempfile
import time
from pathlib import Path

from service.ids import id_floor, new_id
from service.jobs.record import JobQuery
from service.jobs.sqlite.schema import INSERT_JOB
from service.jobs.sqlite.store import SqliteStore
from service.jobs.state import JobState

DAY_S = 86_400.0


def fill(directory: Path, jobs: int, clients: int) -> tuple[str, float]:
    """Write ``jobs`` jobs into shard 0 directly; returns an id in the middle and the time
    of the first job."""
    store = SqliteStore(directory, result_ttl_s=DAY_S, result_max=1 << 20)

    async def make() -> None:
        await store.open()  # the schema and indexes, as the service makes them
        await store.close()

    asyncio.run(make())
    conn = sqlite3.connect(directory / "jobs-0.db")
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute("PRAGMA synchronous = OFF")
    start = time.time() - DAY_S
    args = pickle.dumps({"url": "https://example.com/"})
    rng = random.Random(7)
    middle = ""
    rows = []
    for n in range(jobs):
        at = start + DAY_S * n / jobs
        job_id = new_id(lambda at=at: at)
        if n >= jobs // 2 and not middle and n % clients == 0:
            middle = job_id
        roll = rng.random()
        state = (
            JobState.FAILED if roll < 0.01 else
            JobState.QUEUED if roll < 0.0102 else
            JobState.SCHEDULED if roll < 0.0104 else JobState.SUCCEEDED
        )  # fmt: skip
        name = "fetch" if rng.random() < 0.2 else "parcel"
        owner = "alice" if n % clients == 0 else f"client-{n % clients}"
        rows.append((job_id, name, owner, state.value, at, at, 1, args, None, None))
        if len(rows) == 50_000:
            conn.executemany(INSERT_JOB, rows)
            conn.commit()
            rows = []
    conn.executemany(INSERT_JOB, rows)
    conn.commit()
    conn.execute("ANALYZE")
    conn.close()
    return middle, start


def timed(store: SqliteStore, query: JobQuery, repeat: int) -> float:
    async def run() -> float:
        samples = []
        for _ in range(repeat):
            began = time.perf_counter()
            found = await store.list_jobs(query)
            samples.append(time.perf_counter() - began)
            assert found or query.states, query
        return statistics.median(samples) * 1000

    return asyncio.run(run())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--jobs", type=int, default=1_000_000)
    ap.add_argument("--clients", type=int, default=20)
    ap.add_argument("--repeat", type=int, default=20)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="jobpool-listing-") as tmp:
        directory = Path(tmp)
        began = time.perf_counter()
        middle, start = fill(directory, args.jobs, args.clients)
        print(
            f"{args.jobs} jobs of {args.clients} clients written in"
            f" {time.perf_counter() - began:.0f} s; alice has {args.jobs // args.clients}"
        )
        queries = {
            "newest 50": JobQuery(owner="alice", limit=51),
            "50 below a cursor mid-way": JobQuery(owner="alice", limit=51, id_below=middle),
            "state=failed (1%)": JobQuery(
                owner="alice", limit=51, states=frozenset({JobState.FAILED})
            ),
            "state=queued,scheduled (0.04%)": JobQuery(
                owner="alice", limit=51, states=frozenset({JobState.QUEUED, JobState.SCHEDULED})
            ),
            "job=fetch": JobQuery(owner="alice", limit=51, name="fetch"),
            "an hour, 6 h ago": JobQuery(
                owner="alice",
                limit=51,
                id_from=id_floor(start + 17 * 3600),
                id_below=id_floor(start + 18 * 3600),
            ),
        }

        def measure() -> dict[str, float]:
            store = SqliteStore(directory, result_ttl_s=DAY_S, result_max=1 << 20)

            async def opened() -> None:
                await store.open()

            asyncio.run(opened())
            try:
                return {name: timed(store, q, args.repeat) for name, q in queries.items()}
            finally:
                asyncio.run(store.close())

        indexed = measure()
        conn = sqlite3.connect(directory / "jobs-0.db")
        for index in ("jobs_by_owner", "jobs_unsucceeded"):
            conn.execute(f"DROP INDEX {index}")
        conn.commit()
        conn.close()
        # The store makes its indexes again at open: read the dropped file directly.
        scanned = {}
        for name, query in queries.items():
            scanned[name] = timed_raw(directory / "jobs-0.db", query, max(1, args.repeat // 10))
    print(f"{'listing':<34}{'indexed ms':>12}{'no index ms':>13}")
    for name in queries:
        print(f"{name:<34}{indexed[name]:>12.2f}{scanned[name]:>13.1f}")


def timed_raw(path: Path, query: JobQuery, repeat: int) -> float:
    """The same query on the file without its indexes (a table scan)."""
    from service.jobs.sqlite.schema import list_jobs_sql

    states = sorted(s.value for s in query.states)
    sql = list_jobs_sql(
        owner=True, states=len(states), succeeded=False, name=query.name is not None,
        id_from=query.id_from is not None, id_below=query.id_below is not None,
    )  # fmt: skip
    params = [
        p for p in (query.owner, *states, query.name, query.id_from, query.id_below)
        if p is not None
    ]  # fmt: skip
    conn = sqlite3.connect(path)
    samples = []
    for _ in range(repeat):
        began = time.perf_counter()
        conn.execute(sql, [*params, query.limit]).fetchall()
        samples.append(time.perf_counter() - began)
    conn.close()
    return statistics.median(samples) * 1000


if __name__ == "__main__":
    main()
