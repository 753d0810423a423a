"""The thread that checkpoints a shard's WAL into its database file.

Why a thread: a checkpoint is where the fsyncs are (commits on the loop skip them, see
:mod:`.group_commit`), and an fsync may take milliseconds the event loop must not wait.
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
import threading
from pathlib import Path

from service.jobs.sqlite.payloads import PayloadFiles
from service.jobs.sqlite.shards import connect

log = logging.getLogger(__name__)

#: Seconds between two checkpoints: how long a commit waits to be safe from a power cut.
CHECKPOINT_INTERVAL_S = 0.5
#: Seconds ``stop`` waits for a checkpoint under way to end.
STOP_WAIT_S = 5


class Checkpointer:
    """Checkpoints ``path`` every ``CHECKPOINT_INTERVAL_S``, after syncing the payload files
    written since the last one (so that no row on disk points at a file that is not)."""

    def __init__(self, path: Path, files: PayloadFiles) -> None:
        self.path = path
        self.files = files
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="jobpool-checkpoint", daemon=True)

    def start(self) -> None:
        self._thread.start()

    async def stop(self) -> None:
        self._stop.set()
        await asyncio.to_thread(self._thread.join, STOP_WAIT_S)

    def _run(self) -> None:
        conn = connect(self.path)
        try:
            while not self._stop.wait(CHECKPOINT_INTERVAL_S):
                try:
                    self.files.sync()  # before their rows reach the database file
                    conn.execute("PRAGMA wal_checkpoint(PASSIVE)")
                except (sqlite3.Error, OSError) as ex:
                    log.warning("checkpoint failed: %s", ex)
        finally:
            conn.close()
