"""The server under test: started on loopback, the same way by every benchmark, once it
answers /readyz, and stopped by its PID. jobpool and the Falcon floor run with
``gunicorn.conf.py``; the FastAPI peers under uvicorn's own process manager."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

import urllib3

ROOT = Path(__file__).resolve().parent.parent
#: Seconds a server has to answer /readyz.
START_S = 30


def free_port() -> int:
    """A loopback port free right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def server_env(
    state: Path, extra: Mapping[str, str] | None = None, *, root: Path = ROOT
) -> dict[str, str]:
    """This environment without its ``JOBPOOL_*`` settings, the code of the checkout at
    ``root``, a state directory of the run's own, warnings only in the log, then ``extra``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("JOBPOOL_")}
    env.update({
        "PYTHONPATH": str(root), "JOBPOOL_STATE_DIR": str(state), "JOBPOOL_LOG_LEVEL": "warning",
    })  # fmt: skip
    env.update(extra or {})
    return env


def start(
    port: int,
    env: Mapping[str, str],
    *,
    app: str = "service.asgi:app",
    workers: int | None = None,
    root: Path = ROOT,
    config: str | None = None,
    settle_s: float = 0.0,
) -> subprocess.Popen[bytes]:
    """gunicorn serving ``app`` on 127.0.0.1:``port`` with ``config`` (by default the
    ``gunicorn.conf.py`` of the checkout at ``root``), once it answers /readyz (then
    ``settle_s`` more, for its other workers to finish booting)."""
    config = config or str(root / "gunicorn.conf.py")
    cmd = [sys.executable, "-m", "gunicorn", "-c", config, "--bind", f"127.0.0.1:{port}"]
    if workers is not None:
        cmd += ["--workers", str(workers)]
    return start_command([*cmd, app], port, env, cwd=root, settle_s=settle_s)


def start_command(
    cmd: Sequence[str],
    port: int,
    env: Mapping[str, str],
    *,
    cwd: Path = ROOT,
    settle_s: float = 0.0,
) -> subprocess.Popen[bytes]:
    """``cmd``, a server that will listen on 127.0.0.1:``port``, once it answers /readyz
    (then ``settle_s`` more)."""
    proc = subprocess.Popen(
        cmd, cwd=cwd, env=dict(env), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    http = urllib3.PoolManager(retries=False, timeout=2)
    deadline = time.monotonic() + START_S
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            if http.request("GET", f"http://127.0.0.1:{port}/readyz").status == 200:
                time.sleep(settle_s)
                return proc
        except urllib3.exceptions.HTTPError:
            pass
        time.sleep(0.2)
    stop(proc)
    raise RuntimeError(f"{' '.join(cmd)} did not start")


def stop(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM (a graceful drain), then SIGKILL if it is not gone within a minute."""
    proc.terminate()
    try:
        proc.wait(60)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
