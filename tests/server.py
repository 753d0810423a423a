"""The real server for tests: gunicorn on a free loopback port, stopped by its PID."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import orjson
import psutil
import urllib3

from tests.clients import ALICE, API_KEYS, bearer

ROOT = Path(__file__).resolve().parent.parent
START_DEADLINE_S = 30.0
LISTENING = re.compile(r"Listening at: http://127\.0\.0\.1:(\d+)")
BOOTED = re.compile(r'"msg":"ASGI server listening on [^"]*","pid":(\d+)')


def refused_start(env: dict[str, str]) -> tuple[int, list[str]]:
    """Run ``gunicorn -c gunicorn.conf.py`` with ``env``, as for a start-up that must fail
    at once: its exit status and the lines of its stderr."""
    proc = subprocess.run(
        [sys.executable, "-m", "gunicorn", "-c", "gunicorn.conf.py", "--bind", "127.0.0.1:0"],
        cwd=ROOT, env=env, capture_output=True, timeout=60, check=False,
    )  # fmt: skip
    return proc.returncode, proc.stderr.decode().strip().splitlines()


class Response:
    def __init__(self, r: urllib3.BaseHTTPResponse) -> None:
        self.status = r.status
        self.headers = r.headers
        self.data = r.data

    def json(self) -> Any:
        return orjson.loads(self.data)

    def __repr__(self) -> str:
        return f"<Response {self.status} {self.data[:300]!r}>"


class Server:
    """``with Server(state_dir, env={...}) as srv: srv.post(...)``.

    Auth is on with the test keys (alice, bob); requests go as alice unless ``key=`` says
    otherwise (``key=None``: no Authorization header).
    """

    def __init__(
        self,
        state_dir: Path,
        *,
        env: dict[str, str] | None = None,
        app: str = "tests.extension_app:app",
        workers: int | None = 2,
        args: tuple[str, ...] = (),
        expect_workers: int | None = None,
    ) -> None:
        self.state_dir = state_dir
        self.env = env or {}
        self.app = app
        self.workers = workers
        self.args = args
        self.expect_workers = expect_workers
        self.log_path = state_dir.parent / f"{state_dir.name}-server.log"
        n = 1
        while self.log_path.exists():  # a restart on the same state dir: a log of its own
            n += 1
            self.log_path = state_dir.parent / f"{state_dir.name}-server-{n}.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.port: int | None = None
        self._log_start = 0
        self.http = urllib3.PoolManager(retries=False, timeout=urllib3.Timeout(connect=5, read=60))

    # -- life cycle -------------------------------------------------------------------

    def start(self) -> Server:
        env = {k: v for k, v in os.environ.items() if not k.startswith("JOBPOOL_")}
        env.update({
            "JOBPOOL_STATE_DIR": str(self.state_dir),
            "JOBPOOL_LOG_LEVEL": "info",
            "PYTHONPATH": str(ROOT),
            "JOBPOOL_API_KEYS": API_KEYS,
            **self.env,
        })  # fmt: skip
        cmd = [
            sys.executable, "-m", "gunicorn", "-c", str(ROOT / "gunicorn.conf.py"),
            "--bind", "127.0.0.1:0", *self.args, self.app,
        ]  # fmt: skip
        if self.workers is not None:
            cmd[5:5] = ["--workers", str(self.workers)]
        self.log_file = open(self.log_path, "ab")  # noqa: SIM115 - closed in stop()
        # Started again (same state dir): read only what this run writes to the log.
        self.port = None
        self._log_start = self.log_path.stat().st_size
        self.proc = subprocess.Popen(
            cmd, cwd=ROOT, env=env, stdout=self.log_file, stderr=subprocess.STDOUT
        )
        deadline = time.monotonic() + START_DEADLINE_S
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"gunicorn exited {self.proc.returncode}:\n{self.log()}")
            if self.port is None:
                found = LISTENING.findall(self.log_since_start())
                self.port = int(found[-1]) if found else None
            if self.port is not None and self._ready():
                return self
            time.sleep(0.1)
        self.stop(signal.SIGKILL)
        raise RuntimeError(f"gunicorn did not become ready in {START_DEADLINE_S} s:\n{self.log()}")

    def _ready(self) -> bool:
        try:
            ok = self.get("/readyz").status == 200
        except urllib3.exceptions.HTTPError:
            return False
        # Every worker must have booted, or early requests race their start-up.
        expected = self.expect_workers or self.workers or 1
        return ok and len(self.worker_pids()) >= expected and self.booted() >= expected

    def booted(self) -> int:
        """Workers of this start that said they listen (once per listener: counted by pid)."""
        return len(set(BOOTED.findall(self.log_since_start())))

    def log_since_start(self) -> str:
        with open(self.log_path, "rb") as f:
            f.seek(self._log_start)
            return f.read().decode(errors="replace")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def worker_pids(self) -> list[int]:
        assert self.proc is not None
        try:
            children = psutil.Process(self.proc.pid).children()
        except psutil.NoSuchProcess:
            return []
        pids = []
        for child in children:
            with contextlib.suppress(psutil.NoSuchProcess):
                if "gunicorn" in " ".join(child.cmdline()):
                    pids.append(child.pid)
        return pids

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 60) -> int | None:
        """Signal the master (only the process we started) and wait for it."""
        if self.proc is None:
            return None
        self.http.clear()  # idle keep-alive connections would hold a graceful stop
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.kill_all()
        code = self.proc.returncode
        self.log_file.close()
        self.proc = None
        return code

    def kill_all(self) -> None:
        """SIGKILL the master and every process under it, as a host crash would."""
        assert self.proc is not None
        try:
            tree = psutil.Process(self.proc.pid)
            family = [tree, *tree.children(recursive=True)]
        except psutil.NoSuchProcess:
            family = []
        for p in family:
            with contextlib.suppress(psutil.NoSuchProcess):
                p.kill()
        self.proc.wait(10)

    def __enter__(self) -> Server:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- HTTP -------------------------------------------------------------------------

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def request(
        self,
        method: str,
        path: str,
        *,
        json: Any = None,
        body: bytes | None = None,
        headers: dict[str, str] | None = None,
        key: str | None = ALICE,
    ) -> Response:
        headers = dict(headers or {})
        if key is not None and "Authorization" not in headers:
            headers.update(bearer(key))
        if json is not None:
            body = orjson.dumps(json)
            headers.setdefault("Content-Type", "application/json")
        # Reads are retried over a connection reset: the tests kill workers on purpose.
        # Not on answers: a 429 or 503 with Retry-After is what some tests look for.
        retries = (
            urllib3.Retry(total=5, backoff_factor=0.2, respect_retry_after_header=False)
            if method == "GET"
            else False
        )
        r = self.http.request(method, self.url(path), body=body, headers=headers, retries=retries)
        return Response(r)

    def get(self, path: str, **kw: Any) -> Response:
        return self.request("GET", path, **kw)

    def post(self, path: str, **kw: Any) -> Response:
        return self.request("POST", path, **kw)

    def delete(self, path: str, **kw: Any) -> Response:
        return self.request("DELETE", path, **kw)

    def wait_final(self, job_id: str, timeout: float = 30) -> dict[str, Any]:
        """Poll a job until it is final; fail the test if it is not within ``timeout``."""
        deadline = time.monotonic() + timeout
        doc: dict[str, Any] = {}
        while time.monotonic() < deadline:
            doc = self.get(f"/v1/jobs/{job_id}").json()
            if doc.get("state") in ("succeeded", "failed", "cancelled"):
                return doc
            time.sleep(0.05)
        raise AssertionError(f"job {job_id} not final after {timeout} s: {doc}")
