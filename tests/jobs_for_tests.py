"""Jobs that exist only for tests: importable by name, as the cpu pool requires."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path
from typing import Any

from service.jobs.context import current
from service.jobs.registry import job
from service.jobs.retry import Backoff, DoNotRetry


@job("test.echo", pool="io", timeout=10)
def echo(**kwargs: Any) -> dict[str, Any]:
    return kwargs


@job("test.sleep", pool="io", timeout=30)
def sleep(seconds: float, tag: str = "") -> dict[str, Any]:
    time.sleep(seconds)
    return {"slept": seconds, "tag": tag}


@job("test.wait_for", pool="io", timeout=60)
def wait_for(path: str) -> dict[str, Any]:
    """Run until the file ``path`` exists: a job the test ends when it chooses."""
    while not os.path.exists(path):
        time.sleep(0.02)
    return {"released": path}


@job("test.fail", pool="io", timeout=10)
def fail(message: str) -> None:
    raise RuntimeError(message)


@job("test.cpu_spin", pool="cpu", timeout=60)
def cpu_spin(seconds: float, tag: str = "") -> dict[str, Any]:
    deadline = time.process_time() + seconds
    n = 0
    while time.process_time() < deadline:
        n += 1
    return {"pid": os.getpid(), "nice": os.nice(0), "tag": tag}


@job("test.cpu_stuck", pool="cpu", timeout=1)
def cpu_stuck() -> None:
    while True:
        time.sleep(0.05)


@job("test.cpu_crash", pool="cpu", timeout=10)
def cpu_crash() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


@job("test.cpu_fail", pool="cpu", timeout=10)
def cpu_fail(message: str) -> None:
    raise ValueError(message)


@job("test.slow_item", pool="io", timeout=10)
def slow_item(item: Any, *, seconds: float = 0.0) -> Any:
    time.sleep(seconds)
    if item == "bad":
        raise ValueError("bad item")
    return item


@job("test.kill_worker", pool="io", timeout=10)
def kill_worker() -> None:
    """Kill the gunicorn worker running it, as a segfault or the OOM killer would."""
    os.kill(os.getpid(), signal.SIGKILL)


@job("test.cpu_stuck_pid", pool="cpu", timeout=1)
def cpu_stuck_pid(pid_file: str) -> None:
    """Write this process's pid, then never return (until killed)."""
    with open(pid_file, "w") as f:
        f.write(str(os.getpid()))
    while True:
        time.sleep(0.05)


@job("test.io_stuck", pool="io", timeout=1)
def io_stuck(seconds: float) -> None:
    time.sleep(seconds)


@job("test.where", pool="io", timeout=30)
def where(seconds: float = 0.0) -> dict[str, Any]:
    """Sleep, then say which server ran it (its state directory) and which process."""
    time.sleep(seconds)
    return {"state_dir": os.environ.get("JOBPOOL_STATE_DIR"), "pid": os.getpid()}


@job("test.cpu_where", pool="cpu", timeout=30)
def cpu_where(seconds: float = 0.0) -> dict[str, Any]:
    """Spin, then say which server ran it (a cpu process inherits its server's environment)."""
    deadline = time.process_time() + seconds
    while time.process_time() < deadline:
        pass
    return {"state_dir": os.environ.get("JOBPOOL_STATE_DIR"), "pid": os.getpid()}


@job("test.cpu_span", pool="cpu", timeout=60)
def cpu_span(seconds: float) -> dict[str, float]:
    """Spin; answer when (wall clock) and under which forkserver (so which worker) it ran."""
    began = time.time()
    deadline = time.process_time() + seconds
    while time.process_time() < deadline:
        pass
    return {"began": began, "ended": time.time(), "pid": os.getpid(), "ppid": os.getppid()}


@job("test.span", pool="io", timeout=30)
def span(seconds: float = 0.0) -> dict[str, float]:
    """Sleep; answer when the run began and ended (wall clock), to see what ran beside it."""
    began = time.time()
    time.sleep(seconds)
    return {"began": began, "ended": time.time()}


@job(
    "test.flaky", pool="io", timeout=10, retries=2,
    backoff=Backoff(base_s=0.3, factor=2.0, max_s=5.0, jitter=False),
)  # fmt: skip
def flaky(path: str, fails: int = 2) -> dict[str, Any]:
    """Fail the first ``fails`` runs (counted in the file ``path``), then succeed."""
    counter = Path(path)
    runs = int(counter.read_text()) + 1 if counter.exists() else 1
    counter.write_text(str(runs))
    if runs <= fails:
        raise RuntimeError(f"flaky run {runs}")
    return {"runs": runs}


@job("test.fails_for_good", pool="io", timeout=10, retries=3, backoff=Backoff(base_s=0.1))
def fails_for_good() -> None:
    raise DoNotRetry("this will never work")


@job("test.slow_then_fine", pool="io", timeout=0.5, retries=1, backoff=Backoff(base_s=0.1))
def slow_then_fine(path: str) -> str:
    """Time out on the first run (a timeout is a failed attempt), return on the second."""
    if not os.path.exists(path):
        Path(path).touch()
        time.sleep(3)
    return "fine"


@job("test.cooperative", pool="io", timeout=60)
def cooperative(steps: int = 3000) -> dict[str, Any]:
    """Work in small steps, reporting progress and stopping when asked."""
    run = current()
    for step in range(steps):
        run.check()
        run.progress(step, steps, "working")
        time.sleep(0.02)
    return {"steps": steps}


@job("test.stubborn", pool="io", timeout=60)
def stubborn(path: str) -> str:
    """Ignore stop requests; run until the file ``path`` exists."""
    while not os.path.exists(path):
        time.sleep(0.02)
    return "done anyway"


@job("test.cpu_progress", pool="cpu", timeout=60)
def cpu_progress(pid_file: str) -> None:
    """In a cpu process: write its pid, report progress, then never return (until stopped)."""
    with open(pid_file, "w") as f:
        f.write(str(os.getpid()))
    for step in range(10**9):
        current().progress(step, None, "spinning")
        time.sleep(0.05)


def inline_unless_slow(options: dict[str, Any]) -> bool:
    return not options.get("seconds")


@job("test.maybe_inline", pool="io", timeout=10, item_key=str, inline_when=inline_unless_slow)
def maybe_inline(item: Any, *, seconds: float = 0.0) -> Any:
    """An item that runs inline unless the batch asks it to take time."""
    time.sleep(seconds)
    if item == "bad":
        raise ValueError("bad item")
    return item


@job("test.held_item", pool="io", timeout=60, item_key=str)
def held_item(item: Any, *, path: str) -> Any:
    """A batch item: ``"hold"`` runs until the file ``path`` exists, any other ends at once.
    Keyed (as parcels are), so the batch's counts are written as its chunks end."""
    while item == "hold" and not os.path.exists(path):
        time.sleep(0.02)
    return item
