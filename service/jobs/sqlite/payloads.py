"""Large job arguments and results of the SQLite store, kept as files beside its shards.

Why files: SQLite rewrites a whole row when any column of it changes, and writes every page
to the WAL and again to the database at the checkpoint, two syscalls a page. An uploaded
image kept in its job's row cost the HTTP side of an image job more CPU than anything else
(measured with bench.cpu_scaling: 32 ms of server CPU per image with payloads in the row,
17 ms in a table of their own, written once). A file is one write.

Durability matches the database's: with ``synchronous=NORMAL`` a commit is safe from a
crash of the process and becomes safe from a power cut at the next checkpoint. A file is
written before the row that points at it is committed (a crash in between leaves a file
without a row, swept when it is old), and the checkpointer calls :meth:`PayloadFiles.sync`
before each checkpoint, so a row on disk never points at a file that is not.

One directory for all shards of a host: a job adopted from a dead worker's shard keeps its
files where they are. A file is named by its job's id, and ids sort by creation time,
which is how old files are found without a look-up table.

``JOBPOOL_PAYLOAD_MAX_BYTES`` caps the directory for new jobs: arguments that would pass it
are refused (the submit gets 503), while the result of a job already accepted is always
written, so the cap never costs an accepted job its result. Each worker knows the total as
of its last scan (every ``RESCAN_S``) plus what it wrote and dropped since, so workers
writing at once may pass the cap by what they write in that time.
"""

from __future__ import annotations

import contextlib
import math
import os
import threading
import time
from collections.abc import Callable, Iterable
from pathlib import Path

from service.ids import ID_LENGTH

KINDS = ("args", "result")
#: Seconds between two scans of the directory for its total size (when capped).
RESCAN_S = 5.0


class PayloadMissing(Exception):
    """A row points at a payload file that is not there (lost in a power cut)."""


class PayloadsFull(OSError):
    """Writing this payload would pass ``JOBPOOL_PAYLOAD_MAX_BYTES``."""


class PayloadFiles:
    """The payload files under ``directory``; methods are safe to call from threads."""

    def __init__(self, directory: Path, *, max_bytes: int = 0) -> None:
        self.directory = directory
        self.max_bytes = max_bytes
        self._unsynced: list[Path] = []
        self._lock = threading.Lock()
        self._total = 0
        self._scanned = -math.inf

    def open(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)

    def path(self, job_id: str, kind: str) -> Path:
        return self.directory / f"{job_id}.{kind}"

    def put(self, job_id: str, kind: str, data: bytes) -> None:
        """Write a payload; arguments over the cap raise :class:`PayloadsFull`."""
        if self.max_bytes:
            self._reserve(len(data), capped=kind == "args")
        path = self.path(job_id, kind)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
        finally:
            os.close(fd)
        with self._lock:
            self._unsynced.append(path)

    def get(self, job_id: str, kind: str) -> bytes:
        try:
            return self.path(job_id, kind).read_bytes()
        except FileNotFoundError:
            what = "arguments" if kind == "args" else kind
            raise PayloadMissing(f"job {job_id}: its {what} file is missing (lost)") from None

    def _reserve(self, size: int, *, capped: bool) -> None:
        with self._lock:
            if time.monotonic() - self._scanned > RESCAN_S:
                self._total = sum(_size(e) for e in os.scandir(self.directory))
                self._scanned = time.monotonic()
            if capped and self._total + size > self.max_bytes:
                raise PayloadsFull(
                    f"the payload files would pass JOBPOOL_PAYLOAD_MAX_BYTES ({self.max_bytes})"
                )
            self._total += size

    def drop(self, job_ids: Iterable[str], kinds: Iterable[str] = KINDS) -> None:
        for job_id in job_ids:
            for kind in kinds:
                path = self.path(job_id, kind)
                try:
                    size = path.stat().st_size if self.max_bytes else 0
                    path.unlink()
                except FileNotFoundError:
                    continue
                with self._lock:
                    self._total -= size

    def sync(self) -> None:
        """Make the files written so far durable (before a checkpoint makes their rows so)."""
        with self._lock:
            paths, self._unsynced = self._unsynced, []
        for path in paths:
            try:
                fd = os.open(path, os.O_RDONLY)
            except FileNotFoundError:
                continue  # already dropped
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        if paths:
            fd = os.open(self.directory, os.O_RDONLY)
            try:
                os.fsync(fd)  # the new names
            finally:
                os.close(fd)

    def sweep(self, before_id: str, kept: Callable[[str], bool]) -> int:
        """Delete files of jobs made before ``before_id`` that ``kept`` says are gone."""
        removed = 0
        for entry in os.scandir(self.directory):
            job_id, _, kind = entry.name.partition(".")
            if len(job_id) != ID_LENGTH or kind not in KINDS or job_id >= before_id:
                continue
            if not kept(job_id):
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(entry.path)
                removed += 1
        return removed


def _size(entry: os.DirEntry[str]) -> int:
    try:
        return entry.stat().st_size
    except FileNotFoundError:
        return 0  # dropped while we looked
