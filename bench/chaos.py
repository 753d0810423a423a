"""Chaos soak: a steady stream of seed batches, delayed batches, image jobs and fetches of
a flaky upstream (retried) while a random worker is SIGKILLed every few seconds; then the
ledger.

    python -m bench.chaos [--seconds 60] [--kill-every 4] [--clients 4]

Every job that got a 202 must reach a final state: lost = 0 is the target. Each request
carries an Idempotency-Key, and one in flight when its worker died (no answer) is sent
again with it, up to 3 times: a key must never make two jobs (duplicates = 0), and the
"unanswered" left are those whose every try went to a dying worker. Loopback only; bounded
in time; stops by itself.
"""

from __future__ import annotations

import argparse
import os
import random
import signal
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

import orjson
import psutil
import urllib3

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench import server  # noqa: E402
from bench.client import BenchClient  # noqa: E402
from bench.server import server_env  # noqa: E402
from tests.imagegen import photo_like  # noqa: E402
from tests.upstream import UpstreamServer  # noqa: E402

FINAL = {"succeeded", "failed", "cancelled"}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--seconds", type=float, default=60)
    ap.add_argument("--kill-every", type=float, default=4)
    ap.add_argument("--clients", type=int, default=4)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--port", type=int, default=18520)
    ap.add_argument("--settle", type=float, default=120, help="seconds to wait for the rest")
    args = ap.parse_args()
    base = f"http://127.0.0.1:{args.port}"
    bench = BenchClient()
    image = photo_like(800, 600, "jpeg")
    accepted: dict[str, str] = {}  # job id -> kind
    by_key: dict[str, set[str]] = {}  # idempotency key -> the job ids its answers named
    batch_items: dict[str, list[dict[str, str]]] = {}
    outcomes: Counter[str] = Counter()
    lock = threading.Lock()
    stop = threading.Event()
    kills = 0

    def client(n: int, upstream: UpstreamServer) -> None:
        http = urllib3.PoolManager(retries=False, timeout=urllib3.Timeout(connect=5, read=30))
        seq = 0
        while not stop.is_set():
            seq += 1
            key = f"chaos-{n}-{seq}"
            headers = {"Content-Type": "application/json", "Idempotency-Key": key}
            items = None
            if seq % 4 == 0:
                kind, path, body = "image", "/v1/images?op=thumbnail&width=200&height=200", image
                headers["Content-Type"] = "image/jpeg"
            elif seq % 8 == 1:  # a flaky upstream: 503 twice, then 200 (the job retries)
                kind, path = "fetch", "/v1/fetch"
                body = orjson.dumps({"url": upstream.url(f"/busy?key={key}&fails=2&after=0")})
            else:
                kind, path = "batch", "/v1/parcels"
                items = [{"id": f"c{n}-{seq}-{i}", "time": "2017-01-01T00:00:01Z",
                          "data": f"payload {n} {seq} {i}"} for i in range(9)]  # fmt: skip
                body = orjson.dumps({"Data": items})
                if seq % 8 == 2:
                    kind = "delayed"
                    headers["Job-Delay"] = f"{random.uniform(0.5, 3.0):.3f}"  # at most 6 decimals
            for _ in range(3):  # a request its dying worker never answered is sent again
                try:
                    r = http.request(
                        "POST", base + path, body=body, headers=headers | bench.headers
                    )
                    break
                except urllib3.exceptions.HTTPError:
                    r = None
            if r is None:
                with lock:
                    outcomes["unanswered"] += 1
                continue
            with lock:
                if r.status == 202:
                    job = orjson.loads(r.data)["job"]
                    by_key.setdefault(key, set()).add(job)
                    accepted[job] = kind
                    if items is not None:
                        batch_items[job] = items
                else:
                    outcomes[f"http {r.status}"] += 1
            if r.status == 503:
                time.sleep(0.05)

    with tempfile.TemporaryDirectory(prefix="jobpool-chaos-") as tmp:
        env = server_env(Path(tmp), {
            "JOBPOOL_PARCEL_LATENCY_MS": "5-55", "JOBPOOL_FETCH_ALLOW_PRIVATE": "1", **bench.env
        })  # fmt: skip
        proc = server.start(args.port, env, workers=args.workers)
        upstream = UpstreamServer().__enter__()
        try:
            threads = [
                threading.Thread(target=client, args=(i, upstream)) for i in range(args.clients)
            ]
            for t in threads:
                t.start()
            end = time.monotonic() + args.seconds
            while time.monotonic() < end:
                time.sleep(min(args.kill_every, max(0.0, end - time.monotonic())))
                workers = psutil.Process(proc.pid).children()
                if workers and time.monotonic() < end:
                    os.kill(random.choice(workers).pid, signal.SIGKILL)
                    kills += 1
            stop.set()
            for t in threads:
                t.join()
            # Settle: every accepted job must reach a final state.
            http = urllib3.PoolManager(retries=urllib3.Retry(total=10, backoff_factor=0.2),
                                       timeout=urllib3.Timeout(connect=5, read=30),
                                       headers=bench.headers)  # fmt: skip
            states: dict[str, dict[str, object]] = {}
            deadline = time.monotonic() + args.settle
            pending = set(accepted)
            while pending and time.monotonic() < deadline:
                for job in list(pending):
                    r = http.request("GET", f"{base}/v1/jobs/{job}")
                    doc = orjson.loads(r.data) if r.status == 200 else {"state": f"http {r.status}"}
                    states[job] = doc
                    if doc.get("state") in FINAL:
                        pending.discard(job)
                time.sleep(0.5)
            # Spot-check parcels of succeeded batches: each reads back as it was sent.
            wrong_parcels = 0
            checked = [j for j in batch_items if states[j].get("state") == "succeeded"][:50]
            for job in checked:
                for item in batch_items[job]:
                    r = http.request("GET", f"{base}/v1/parcels/{item['id']}")
                    if r.status != 200 or orjson.loads(r.data) != item:
                        wrong_parcels += 1
        finally:
            server.stop(proc)
            upstream.__exit__(None, None, None)
    finals = Counter(str(states.get(j, {}).get("state")) for j in accepted)
    reasons = Counter(str(states[j].get("error"))[:70] for j in accepted
                      if states.get(j, {}).get("state") == "failed")  # fmt: skip
    attempts = Counter(int(states[j].get("attempts") or 0) for j in accepted if j in states)
    lost = sum(n for s, n in finals.items() if s not in FINAL)
    print(f"chaos: {args.seconds:.0f} s, {args.clients} clients, {args.workers} workers, "
          f"{kills} workers SIGKILLed (one every {args.kill_every:g} s)")  # fmt: skip
    kinds = Counter(accepted.values())
    duplicates = sum(len(ids) - 1 for ids in by_key.values())
    print(
        f"accepted (202):   {len(accepted)}  ({kinds['batch']} batches, {kinds['delayed']}"
        f" delayed batches, {kinds['image']} images, {kinds['fetch']} flaky fetches)"
    )
    print(f"  duplicates:     {duplicates}   (jobs beyond one per Idempotency-Key; target 0)")
    retried = sum(1 for j in accepted if states.get(j, {}).get("failed_attempts"))
    print(f"  retried:        {retried}   (jobs with failed attempts, run again)")
    for state in ("succeeded", "failed", "cancelled"):
        print(f"  {state + ':':<16}{finals.get(state, 0)}")
    for reason, n in reasons.most_common():
        print(f"      {n:>5}  {reason}")
    print(f"  lost:           {lost}   (target 0)")
    print(f"attempts:         {dict(sorted(attempts.items()))}")
    print(f"not accepted:     {dict(outcomes)}")
    print(f"parcels checked:  {sum(len(batch_items[j]) for j in checked)}, wrong: {wrong_parcels}")


if __name__ == "__main__":
    main()
