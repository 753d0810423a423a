"""Host-local slots: each gunicorn worker of a host holds one numbered, ``flock``ed file.

The slot number shares out the host's cpu budget, and names the part of the store a worker
owns; the kernel releases the lock when its holder dies, so the worker that replaces a dead
one claims the same number and takes over what it left.
"""

from __future__ import annotations

import fcntl
import os
import secrets
from pathlib import Path

from service.hostfiles import made_once

HOST_ID_FILE = "host-id"


def claim_slot(directory: Path, pattern: str) -> tuple[int, int]:
    """Lock the lowest free file ``pattern.format(n)`` in ``directory``: (n, its fd)."""
    slot = 0
    while True:
        fd = os.open(directory / pattern.format(slot), os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            slot += 1
            continue
        return slot, fd


def is_held(path: Path) -> bool:
    """Whether a live process holds the lock ``claim_slot`` takes on ``path``; never blocks.

    The probe takes the free lock for an instant: a worker claiming that very slot then
    takes the next one, as it would beside a janitor adopting the slot's shard.
    """
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)  # releases the probe's lock, if it took it
    return False


def host_id(directory: Path) -> str:
    """This host's id: made once (random), kept in ``directory``, the same after a restart.

    Concurrent first starts agree (:func:`~service.hostfiles.made_once`).
    """
    # Not a secret: readable as any file the service writes.
    return made_once(directory / HOST_ID_FILE, lambda: secrets.token_hex(6), mode=0o666)
