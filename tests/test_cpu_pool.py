"""The cpu pool's slots with real processes: kept ones stay, spares stop when idle."""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path

from service.jobs.cpu_pool import CpuPool
from service.jobs.tokens import HostTokens


def spin(seconds: float) -> int:
    deadline = time.process_time() + seconds
    while time.process_time() < deadline:
        pass
    return os.getpid()


def hold_until(path: str) -> int:
    """Run until ``path`` exists (the test says when the job ends)."""
    while not os.path.exists(path):
        time.sleep(0.01)
    return os.getpid()


def alive(pool: CpuPool) -> list[bool]:
    return [executor is not None for executor in pool._slots]


async def test_a_spare_process_stops_when_idle_and_a_kept_one_stays(tmp_path: Path) -> None:
    """A worker owed one of two tokens borrows the other for a second process while nobody
    else wants it; that spare process stops after its idle time, the kept one stays."""
    tokens = HostTokens(tmp_path, 2, slot=0, share=1)
    pool = CpuPool(processes=2, keep=1, nice=0, tokens=tokens, spare_idle_s=0.3)
    try:
        await pool.run(spin, (0.0,), {}, 30)
        assert alive(pool) == [True, False]  # one job at a time: the lowest slot alone
        gate = str(tmp_path / "go")
        both = asyncio.gather(*(pool.run(hold_until, (gate,), {}, 30) for _ in range(2)))
        for _ in range(600):  # while both run, both slots have a process (up to 30 s)
            if pool.busy == 2:
                break
            await asyncio.sleep(0.05)
        assert alive(pool) == [True, True]
        await asyncio.to_thread(Path(gate).touch)
        pids = await both
        assert len(set(pids)) == 2  # nobody else wanted the second token: it was borrowed
        for _ in range(600):  # the retirement is a timer on this loop: poll it, up to 30 s
            if alive(pool) == [True, False]:
                break
            await asyncio.sleep(0.05)
        assert alive(pool) == [True, False]
        assert await pool.run(spin, (0.0,), {}, 30) in pids  # the kept process serves on
        assert alive(pool) == [True, False]
    finally:
        pool.close(wait=True)
        tokens.close()
