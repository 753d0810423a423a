"""What the dashboard shows of one host: its pools, job and request counts (every worker's,
from the metrics' shared files), and its processes (psutil).

A snapshot costs a read of every worker's metrics files and a look at ~10 processes, so a
worker makes at most one per :attr:`HostView.max_age_s` and hands the same one to every
open dashboard that asks meanwhile: ten dashboards cost what one does.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import time
from collections.abc import Callable
from typing import Any

import psutil

from service.metrics import REQUEST_BUCKETS, Metrics

__all__ = ["HostView", "Processes"]

#: Processes the panel lists at most (a host with more shows the first ones).
PROCESSES_MAX = 64
#: Seconds between two looks for the processes of the tree (psutil reads every process of
#: the machine to find children); in between, the ones known are looked at again.
TREE_EVERY_S = 10.0


class Processes:
    """The host's gunicorn processes: the master, its workers, and what each worker started
    (the forkserver and the cpu processes). Kept between looks so CPU shares are measured
    over the time between two looks."""

    def __init__(self, *, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self._seen: dict[int, psutil.Process] = {}
        self._kinds: dict[int, str] = {}
        self._family: list[tuple[psutil.Process, str, int | None]] = []
        self._next_tree = 0.0

    def sample(self) -> list[dict[str, Any]]:
        if self.clock() >= self._next_tree:
            self._family = self._tree()
            self._next_tree = self.clock() + TREE_EVERY_S
        rows: list[dict[str, Any]] = []
        alive: set[int] = set()
        for proc, kind, worker_pid in self._family:
            row = self._row(proc, kind, worker_pid)
            if row is not None:
                rows.append(row)
                alive.add(proc.pid)
        for pid in set(self._seen) - alive:
            self._seen.pop(pid, None)
            self._kinds.pop(pid, None)
        if len(alive) < len(self._family):
            self._next_tree = 0.0  # one has gone: look at the tree again next time
        return rows

    def _tree(self) -> list[tuple[psutil.Process, str, int | None]]:
        """(process, kind, its worker's pid) of the master, the workers and their children."""
        me = psutil.Process()
        parent = me.parent()
        master = parent if parent is not None and self._is_gunicorn(parent) else None
        try:
            workers = master.children() if master is not None else [me]
        except psutil.Error:
            workers = [me]
        family: list[tuple[psutil.Process, str, int | None]] = []
        if master is not None:
            family.append((master, "master", None))
        for worker in workers:
            family.append((worker, "worker", None))
            with contextlib.suppress(psutil.Error):
                family += [(p, "", worker.pid) for p in worker.children(recursive=True)]
        return family[:PROCESSES_MAX]

    def _row(self, proc: psutil.Process, kind: str, worker: int | None) -> dict[str, Any] | None:
        known = self._seen.setdefault(proc.pid, proc)
        try:
            with known.oneshot():
                if not kind:
                    kind = self._kinds.get(proc.pid) or self._kind_of(known)
                    self._kinds[proc.pid] = kind
                return {
                    "pid": proc.pid,
                    "kind": kind,
                    "worker": worker,
                    "status": known.status(),
                    "cpu_percent": round(known.cpu_percent(None), 1),
                    "rss_bytes": known.memory_info().rss,
                    "started_at": known.create_time(),
                }
        except psutil.Error:
            return None

    @staticmethod
    def _kind_of(proc: psutil.Process) -> str:
        """A worker's child: the forkserver, multiprocessing's tracker, or a cpu process."""
        try:
            line = " ".join(proc.cmdline())
        except psutil.Error:
            return "cpu"
        if "forkserver" in line and "main()" in line:
            return "forkserver"
        if "resource_tracker" in line:
            return "tracker"
        return "cpu"

    @staticmethod
    def _is_gunicorn(proc: psutil.Process) -> bool:
        try:
            return "gunicorn" in " ".join(proc.cmdline())
        except psutil.Error:
            return False


class HostView:
    """Snapshots of this host for the dashboard, made at most once per ``max_age_s``."""

    def __init__(
        self,
        metrics: Metrics | None,
        *,
        host_id: str,
        max_age_s: float,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.metrics = metrics
        self.host_id = host_id
        self.name = socket.gethostname()
        self.max_age_s = max_age_s
        self.clock = clock
        self.processes = Processes()
        self._last: dict[str, Any] | None = None
        self._making: asyncio.Future[dict[str, Any]] | None = None

    async def snapshot(self) -> dict[str, Any]:
        """This host now, or as it was at most ``max_age_s`` ago; concurrent askers share
        one look."""
        last = self._last
        if last is not None and self.clock() - last["at"] < self.max_age_s:
            return last
        if self._making is None:
            if self.metrics is not None:
                self.metrics.flush()  # on the loop, which adds to the counts
            self._making = asyncio.ensure_future(asyncio.to_thread(self._make))
        making = self._making
        try:
            snap = await asyncio.shield(making)
        finally:
            if self._making is making and making.done():
                self._making = None
        self._last = snap
        return snap

    def _make(self) -> dict[str, Any]:
        """Off the event loop: file reads and /proc."""
        snap: dict[str, Any] = {
            "host": self.name,
            "id": self.host_id,
            "pid": os.getpid(),
            "at": self.clock(),
            "metrics": self.metrics is not None,
            "processes": self.processes.sample(),
        }
        if self.metrics is not None:
            figures = self.metrics.figures()
            snap |= {
                "pools": figures.pools,
                "jobs": figures.jobs,
                "requests": figures.requests,
                "latency": figures.latency,
                "latency_bounds": list(REQUEST_BUCKETS),
                "clients": figures.clients,
            }
        return snap
