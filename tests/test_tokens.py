"""Host cpu tokens between workers: each ``HostTokens`` here stands for one worker (its own
open files, so its ``flock`` locks conflict with the others' as between processes)."""

from __future__ import annotations

import asyncio
import random
from pathlib import Path

from service.jobs.tokens import HostTokens


def workers(tmp_path: Path, count: int, shares: list[int]) -> list[HostTokens]:
    return [HostTokens(tmp_path, count, slot=i, share=s) for i, s in enumerate(shares)]


async def test_a_worker_alone_borrows_every_token(tmp_path: Path) -> None:
    """With nobody else waiting, a worker owed one token of four may hold all four."""
    a, _b = workers(tmp_path, 4, [1, 3])
    holds = [a.hold() for _ in range(4)]
    tokens = [await h.__aenter__() for h in holds]
    assert sorted(tokens) == [0, 1, 2, 3]
    for h in holds:
        await h.__aexit__(None, None, None)


async def test_a_freed_token_goes_to_the_worker_that_is_owed_it(tmp_path: Path) -> None:
    """A worker holding its share and more leaves a freed token to a waiting worker that
    is under its share, even though its own jobs wait too."""
    a, b = workers(tmp_path, 2, [1, 1])
    first, second = a.hold(), a.hold()
    await first.__aenter__()
    await second.__aenter__()  # a borrowed b's share while b was idle
    b_hold, a_hold = b.hold(), a.hold()  # kept: a dropped one would give its token back
    b_got = asyncio.create_task(b_hold.__aenter__())
    a_again = asyncio.create_task(a_hold.__aenter__())
    await asyncio.sleep(0.05)
    assert not b_got.done()
    assert b.held == 0
    assert a.others_waiting()
    await second.__aexit__(None, None, None)
    await asyncio.wait_for(b_got, 5)
    assert (a.held, b.held) == (1, 1)
    assert not a_again.done()  # a is at its share and b may want more: a waits
    a_again.cancel()
    await first.__aexit__(None, None, None)
    await b_hold.__aexit__(None, None, None)


async def test_never_more_holders_than_tokens(tmp_path: Path) -> None:
    """Three workers with uneven demand: at no moment more than the host's tokens held, and
    every job gets a token."""
    ws = workers(tmp_path, 3, [1, 1, 1])
    holding = most = done = 0

    async def job(w: HostTokens) -> None:
        nonlocal holding, most, done
        async with w.hold():
            holding += 1
            most = max(most, holding)
            await asyncio.sleep(random.uniform(0, 0.004))
            holding -= 1
        done += 1

    demand = [60, 15, 5]
    await asyncio.wait_for(
        asyncio.gather(*(job(w) for w, n in zip(ws, demand, strict=True) for _ in range(n))), 60
    )
    assert done == sum(demand)
    assert most == 3
    assert not any(w.others_waiting() for w in ws)  # nobody is left counted as waiting


async def test_a_new_worker_clears_what_its_slot_left_waiting(tmp_path: Path) -> None:
    """A worker killed while its jobs waited leaves its count behind; the worker that takes
    its slot starts from zero, so the others may borrow again."""
    a, dead = workers(tmp_path, 1, [1, 1])
    held = a.hold()
    await held.__aenter__()
    dead_hold = dead.hold()
    waiter = asyncio.create_task(dead_hold.__aenter__())
    await asyncio.sleep(0.02)
    assert a.others_waiting()
    waiter.cancel()  # the task is gone; suppose its count were not cleared (a SIGKILL)
    dead._waiting = 3
    dead._publish()
    assert a.others_waiting()
    HostTokens(tmp_path, 1, slot=1, share=1)  # its replacement
    assert not a.others_waiting()
    await held.__aexit__(None, None, None)
