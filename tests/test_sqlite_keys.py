"""Idempotency-key holds on one host: another process's hold excludes, its death frees."""

from __future__ import annotations

import asyncio
import hashlib
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from service.errors import KeyInFlight
from service.jobs.record import IdempotencyKey
from service.jobs.sqlite.keys import BUCKETS, KeyLocks

#: Another process: holds the key named by argv[2] in the directory argv[1], says so, and
#: keeps it until it is killed.
HOLDER = """
import asyncio, sys
from pathlib import Path
from service.jobs.record import IdempotencyKey
from service.jobs.sqlite.keys import KeyLocks

async def main():
    locks = KeyLocks(Path(sys.argv[1]))
    locks.open()
    async with locks.hold(IdempotencyKey("alice", sys.argv[2], b"f", 0.0)):
        print("held", flush=True)
        await asyncio.sleep(60)

asyncio.run(main())
"""


def key(name: str) -> IdempotencyKey:
    return IdempotencyKey("alice", name, b"f", 0.0)


def bucket(name: str) -> int:
    return int.from_bytes(hashlib.sha256(key(name).name.encode()).digest()[:2]) % BUCKETS


def same_bucket_as(name: str) -> str:
    """Another key name whose hold shares ``name``'s bucket."""
    return next(f"other-{i}" for i in range(10**7) if bucket(f"other-{i}") == bucket(name))


@pytest.fixture
def holder(tmp_path: Path) -> Iterator[subprocess.Popen[bytes]]:
    proc = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(tmp_path / "keys"), "first"],
        stdout=subprocess.PIPE, cwd=Path(__file__).resolve().parent.parent,
    )  # fmt: skip
    assert proc.stdout is not None
    assert proc.stdout.readline() == b"held\n"
    yield proc
    proc.kill()
    proc.wait(10)


def test_a_key_held_by_another_worker_is_409_and_freed_when_it_dies(
    tmp_path: Path, holder: subprocess.Popen[bytes]
) -> None:
    """The same key held by another process: 409 at once; a key of the same bucket waits,
    then 409; once that process dies (SIGKILL), both are taken."""
    locks = KeyLocks(tmp_path / "keys")
    locks.open()

    async def take(name: str) -> None:
        async with locks.hold(key(name)):
            pass

    with pytest.raises(KeyInFlight, match="still being accepted"):
        asyncio.run(take("first"))
    with pytest.raises(KeyInFlight, match="lock are being accepted"):
        asyncio.run(take(same_bucket_as("first")))
    holder.kill()
    holder.wait(10)
    asyncio.run(take("first"))
    asyncio.run(take(same_bucket_as("first")))
    locks.close()


def test_one_process_holds_a_bucket_once(tmp_path: Path) -> None:
    """Within one process, the same key while held is 409, and another key of its bucket
    waits for it rather than sharing the lock (a process never conflicts with itself)."""

    async def scenario(directory: Path) -> list[str]:
        locks = KeyLocks(directory)
        locks.open()
        order: list[str] = []

        async def first() -> None:
            async with locks.hold(key("first")):
                order.append("first in")
                await asyncio.sleep(0.05)
                order.append("first out")

        async def second() -> None:
            await asyncio.sleep(0)
            async with locks.hold(key(same_bucket_as("first"))):
                order.append("second in")

        async def again() -> None:
            await asyncio.sleep(0)
            with pytest.raises(KeyInFlight):
                async with locks.hold(key("first")):
                    order.append("again in")

        await asyncio.gather(first(), second(), again())
        locks.close()
        return order

    assert asyncio.run(scenario(tmp_path / "keys")) == ["first in", "first out", "second in"]
