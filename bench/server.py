"""The server under test: started with ``gunicorn.conf.py`` on loopback, the same way by
every benchmark, and stopped by its PID."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Mapping
from pathlib import Path

import urllib3

ROOT = Path(__file__).resolve().parent.parent
#: Seconds a server has to answer /readyz.
START_S = 30


def server_env(state: Path, extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """This environment without its ``JOBPOOL_*`` settings, the code of this checkout, a state
    directory of the run's own, warnings only in the log, then ``extra``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("JOBPOOL_")}
    env.update({
        "PYTHONPATH": str(ROOT), "JOBPOOL_STATE_DIR": str(state), "JOBPOOL_LOG_LEVEL": "warning",
    })  # fmt: skip
    env.update(extra or {})
    return env


def start(
    port: int,
    env: Mapping[str, str],
    *,
    app: str = "service.asgi:app",
    workers: int | None = None,
    settle_s: float = 0.0,
) -> subprocess.Popen[bytes]:
    """gunicorn serving ``app`` on 127.0.0.1:``port``, once it answers /readyz (then
    ``settle_s`` more, for its other workers to finish booting)."""
    cmd = [sys.executable, "-m", "gunicorn", "-c", str(ROOT / "gunicorn.conf.py"),
           "--bind", f"127.0.0.1:{port}", app]  # fmt: skip
    if workers is not None:
        cmd[-1:-1] = ["--workers", str(workers)]
    proc = subprocess.Popen(
        cmd, cwd=ROOT, env=dict(env), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    http = urllib3.PoolManager(retries=False, timeout=2)
    deadline = time.monotonic() + START_S
    while time.monotonic() < deadline:
        try:
            if http.request("GET", f"http://127.0.0.1:{port}/readyz").status == 200:
                time.sleep(settle_s)
                return proc
        except urllib3.exceptions.HTTPError:
            pass
        time.sleep(0.2)
    proc.kill()
    proc.wait()
    raise RuntimeError(f"{app} did not start")


def stop(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM (a graceful drain), then SIGKILL if it is not gone within a minute."""
    proc.terminate()
    try:
        proc.wait(60)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
