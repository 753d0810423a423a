"""What open dashboards cost the host: server CPU with N overview pages open, against idle.

    .venv/bin/python -m bench.ui_cost                 # --pages 10 --seconds 30 --rounds 2
    .venv/bin/python -m bench.ui_cost --http          # pollers instead of Chromium pages

jobpool runs with its production defaults (a worker per vCPU, SQLite) and ``JOBPOOL_UI=on``.
Each round measures the CPU of the server's whole process tree for ``--seconds`` with no
dashboard open, then again with ``--pages`` overview pages of an operator open in headless
Chromium (Debian's ``chromium``; the pages poll ``/ui/live.json`` every
``JOBPOOL_UI_POLL_S``, as a person's would), and prints the difference as a share of one
core. ``--http`` replaces the pages by plain HTTP clients asking for the same figures at
the same pace (no browser needed). Then the cost of one ``/ui/live.json`` request, asked
back to back on one connection (``--requests``).

The browser's own CPU is not the server's and is not counted. The machine is shared:
compare the figures of one run, and prefer several rounds.
"""

from __future__ import annotations

import argparse
import re
import shutil
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import urllib3

from bench.ingest import tree_cpu
from bench.server import free_port, server_env, start, stop
from service.keys import entry_for, new_key

CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]  # fmt: skip
COOKIE = "__Host-jobpool-session"


def log_in(http: urllib3.PoolManager, base: str, key: str) -> str:
    """The session cookie of ``key`` (the login form, posted as a browser would)."""
    answer = http.request(
        "POST", f"{base}/ui/login", body=f"key={key}", redirect=False,
        headers={"Content-Type": "application/x-www-form-urlencoded",
                 "Sec-Fetch-Site": "same-origin"},
    )  # fmt: skip
    found = re.search(rf"{COOKIE}=([^;]+)", answer.headers.get("Set-Cookie", ""))
    if answer.status != 303 or found is None:
        raise RuntimeError(f"login failed: {answer.status}")
    return found.group(1)


def live_requests(http: urllib3.PoolManager, base: str, key: str) -> float:
    """``/ui/live.json`` requests the host has answered (its metrics)."""
    text = http.request("GET", f"{base}/metrics", headers={"Authorization": f"Bearer {key}"})
    pattern = r'jobpool_http_requests_total\{[^}]*route="/ui/live.json"[^}]*\} ([\d.e+]+)'
    return sum(float(v) for v in re.findall(pattern, text.data.decode()))


def measure(pid: int, seconds: float) -> float:
    """Server CPU seconds over ``seconds``."""
    before = tree_cpu(pid)
    time.sleep(seconds)
    return tree_cpu(pid) - before


class Pages:
    """``n`` overview pages open in headless Chromium, logged in as an operator."""

    def __init__(self, base: str, key: str, n: int) -> None:
        from playwright.sync_api import sync_playwright

        binary = shutil.which("chromium") or shutil.which("chromium-browser")
        if binary is None:
            raise SystemExit("chromium is not installed (apt-get install chromium); or --http")
        self._pw = sync_playwright().start()
        self.browser = self._pw.chromium.launch(executable_path=binary, args=CHROMIUM_ARGS)
        self.context = self.browser.new_context()
        self.pages: list[Any] = []
        first = self.context.new_page()
        first.goto(f"{base}/ui/login")
        first.get_by_label("API key").fill(key)
        first.get_by_role("button", name="Log in").click()
        first.wait_for_url(re.compile(r"/ui$"))
        self.pages.append(first)
        for _ in range(n - 1):
            page = self.context.new_page()
            page.goto(f"{base}/ui")
            self.pages.append(page)
        self.base = base

    def visible(self) -> list[str]:
        return [p.evaluate("document.visibilityState") for p in self.pages]

    def updates(self) -> int:
        return sum(
            int(p.locator("#live-status").get_attribute("data-updates") or 0) for p in self.pages
        )

    def idle(self, seconds: float) -> None:
        """Let the pages run (Playwright's calls keep the browser's loop going)."""
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            self.pages[0].wait_for_timeout(250)

    def close(self) -> None:
        self.browser.close()
        self._pw.stop()


class Pollers:
    """``n`` HTTP clients asking for the figures every ``poll_s``, as open pages do."""

    def __init__(self, base: str, cookie: str, n: int, poll_s: float) -> None:
        self.stop = threading.Event()
        self.count = 0
        self._lock = threading.Lock()
        self.threads = [
            threading.Thread(target=self._run, args=(base, cookie, poll_s, i / n), daemon=True)
            for i in range(n)
        ]
        for t in self.threads:
            t.start()

    def _run(self, base: str, cookie: str, poll_s: float, offset: float) -> None:
        http = urllib3.PoolManager(retries=False, timeout=10)
        headers = {"Cookie": f"{COOKIE}={cookie}"}
        time.sleep(offset * poll_s)  # pages opened one after the other do not poll in step
        while not self.stop.is_set():
            started = time.monotonic()
            http.request("GET", f"{base}/ui/live.json", headers=headers)
            with self._lock:
                self.count += 1
            self.stop.wait(max(0.0, poll_s - (time.monotonic() - started)))

    def close(self) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(15)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pages", type=int, default=10)
    parser.add_argument("--seconds", type=float, default=30)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--poll-s", type=int, default=2, help="JOBPOOL_UI_POLL_S")
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--http", action="store_true", help="HTTP pollers, no browser")
    args = parser.parse_args()

    key = new_key()
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    with tempfile.TemporaryDirectory(prefix="jobpool-ui-cost-") as tmp:
        env = server_env(Path(tmp) / "state", {
            "JOBPOOL_UI": "on", "JOBPOOL_UI_POLL_S": str(args.poll_s),
            "JOBPOOL_API_KEYS": entry_for("ops", key, "operator"),
        })  # fmt: skip
        proc = start(port, env, settle_s=2)
        http = urllib3.PoolManager(retries=False, timeout=10)
        try:
            time.sleep(3)  # the workers' start-up work is over
            print(f"jobpool, production defaults, JOBPOOL_UI_POLL_S={args.poll_s}; "
                  f"{args.pages} {'pollers' if args.http else 'Chromium pages'}, "
                  f"{args.seconds:g} s per measure")  # fmt: skip
            print(f"{'round':>5} {'idle %core':>11} {'open %core':>11} {'cost %core':>11} "
                  f"{'polls/s':>8} {'CPU µs/poll':>12}")  # fmt: skip
            costs = []
            for n in range(1, args.rounds + 1):
                idle = measure(proc.pid, args.seconds)
                watchers: Pages | Pollers
                if args.http:
                    watchers = Pollers(base, log_in(http, base, key), args.pages, args.poll_s)
                    time.sleep(args.poll_s * 2)
                else:
                    watchers = Pages(base, key, args.pages)
                    watchers.idle(args.poll_s * 2)
                    hidden = [s for s in watchers.visible() if s != "visible"]
                    if hidden:
                        print(f"  note: {len(hidden)} pages are {hidden[0]} (they do not poll)")
                polls0 = live_requests(http, base, key)
                before = tree_cpu(proc.pid)
                t0 = time.monotonic()
                if isinstance(watchers, Pages):
                    watchers.idle(args.seconds)
                else:
                    time.sleep(args.seconds)
                busy = tree_cpu(proc.pid) - before
                elapsed = time.monotonic() - t0
                polls = live_requests(http, base, key) - polls0 - 1  # less this scrape's own
                watchers.close()
                cost = (busy - idle) / elapsed * 100
                costs.append(cost)
                print(f"{n:>5} {idle / args.seconds * 100:>11.2f} {busy / elapsed * 100:>11.2f} "
                      f"{cost:>11.2f} {polls / elapsed:>8.1f} "
                      f"{(busy - idle) / max(polls, 1) * 1e6:>12.0f}")  # fmt: skip
            print(f"{args.pages} open dashboards: {min(costs):.2f}-{max(costs):.2f} % of one core")

            cookie = log_in(http, base, key)
            headers = {"Cookie": f"{COOKIE}={cookie}"}
            one = urllib3.HTTPConnectionPool("127.0.0.1", port, maxsize=1, retries=False)
            for _ in range(50):
                one.request("GET", "/ui/live.json", headers=headers)
            before = tree_cpu(proc.pid)
            t0 = time.monotonic()
            for _ in range(args.requests):
                one.request("GET", "/ui/live.json", headers=headers)
            elapsed = time.monotonic() - t0
            spent = tree_cpu(proc.pid) - before
            print(f"/ui/live.json back to back ({args.requests} requests, one connection):"
                  f" {spent / args.requests * 1e6:.0f} µs of server CPU and"
                  f" {elapsed / args.requests * 1e3:.2f} ms each")  # fmt: skip
        finally:
            stop(proc)


if __name__ == "__main__":
    main()
