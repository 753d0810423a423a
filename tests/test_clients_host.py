"""Host-wide client limits on their own (no server): a table shared by the host's workers."""

from __future__ import annotations

import multiprocessing
import multiprocessing.synchronize
import os
import signal
from pathlib import Path

import pytest

from service.clients.host import HostLimits
from service.clients.limits import ClientLimits
from service.errors import RateLimited, TooManyJobs
from tests.test_security_units import Clock


def limits(tmp_path: Path, clock: Clock, **kw: float) -> HostLimits:
    options = {"rate": 0.0, "burst": 1, "max_inflight": 0, **kw}
    h = HostLimits(tmp_path / "limits", clock=clock, **options)  # type: ignore[arg-type]
    h.open()
    return h


async def test_token_bucket_allows_a_burst_then_the_rate(tmp_path: Path) -> None:
    """burst 3 at 2/s: three at once, then one each half second; Retry-After rounds up."""
    clock = Clock()
    h = limits(tmp_path, clock, rate=2.0, burst=3)
    for _ in range(3):
        await h.take("alice")
    with pytest.raises(RateLimited) as info:
        await h.take("alice")
    assert info.value.retry_after_s == 1
    await h.take("bob")  # another client has its own bucket
    clock.now += 0.5
    await h.take("alice")
    with pytest.raises(RateLimited):
        await h.take("alice")
    clock.now += 100
    for _ in range(3):
        await h.take("alice")
    with pytest.raises(RateLimited):
        await h.take("alice")
    h.close()


async def test_two_workers_share_one_bucket_and_one_cap(tmp_path: Path) -> None:
    """Two HostLimits on one directory (two workers) draw from the same budget."""
    clock = Clock()
    one = limits(tmp_path, clock, rate=1.0, burst=4, max_inflight=3)
    two = limits(tmp_path, clock, rate=1.0, burst=4, max_inflight=3)
    assert one.slot != two.slot
    await one.take("alice")
    await two.take("alice")
    await one.take("alice")
    await two.take("alice")
    with pytest.raises(RateLimited):
        await one.take("alice")
    one.acquire("alice")
    two.acquire("alice")
    two.acquire("alice")
    with pytest.raises(TooManyJobs):
        one.acquire("alice")
    one.acquire("bob")
    assert one.inflight("alice") == two.inflight("alice") == 3
    two.release("alice")
    one.acquire("alice")
    two.close()  # a worker that stops gives back what it counted
    assert one.inflight("alice") == 2
    one.close()


async def take_until_each_refuses(client: str, *workers: ClientLimits) -> int:
    """Take tokens for ``client`` from each worker in turn until every one has refused
    once; how many were admitted in all."""
    admitted, refused = 0, [False] * len(workers)
    while not all(refused):
        for n, worker in enumerate(workers):
            try:
                await worker.take(client)
            except RateLimited:
                refused[n] = True
            else:
                admitted += 1
    return admitted


async def test_leased_tokens_never_admit_more_than_the_bucket(tmp_path: Path) -> None:
    """With leases (rate 1000/s, burst 100), two workers together admit exactly the burst."""
    clock = Clock()
    one = limits(tmp_path, clock, rate=1000.0, burst=100)
    two = limits(tmp_path, clock, rate=1000.0, burst=100)
    assert one.lease_max > 1
    assert await take_until_each_refuses("alice", one, two) == 100
    clock.now += 0.0105  # 10.5 tokens later: 10 more, whichever worker asks
    for _ in range(10):
        await two.take("alice")
    with pytest.raises(RateLimited):
        await two.take("alice")
    one.close()
    two.close()


async def test_zero_switches_each_limit_off(tmp_path: Path) -> None:
    """rate 0 and max_inflight 0: nothing is refused and no table is made."""
    h = limits(tmp_path, Clock(), rate=0.0, max_inflight=0)
    for _ in range(10_000):
        await h.take("alice")
        h.acquire("alice")
    assert not (tmp_path / "limits").exists()


def test_counts_survive_a_restart_only_as_far_as_resumed_jobs(tmp_path: Path) -> None:
    """force counts resumed jobs over the cap; release never goes below what was counted."""
    h = limits(tmp_path, Clock(), max_inflight=2)
    for _ in range(3):
        h.force("alice")
    assert h.inflight("alice") == 3
    with pytest.raises(TooManyJobs):
        h.acquire("alice")
    for _ in range(5):
        h.release("alice")
    assert h.inflight("alice") == 0
    h.close()


def hold_jobs(
    directory: str, owner: str, count: int, ready: multiprocessing.synchronize.Event
) -> None:
    """A worker process: count ``count`` jobs of ``owner`` in flight, then wait to be killed."""
    h = HostLimits(Path(directory), rate=0.0, burst=1, max_inflight=100)
    h.open()
    for _ in range(count):
        h.acquire(owner)
    ready.set()
    signal.pause()


def test_a_killed_worker_does_not_hold_a_clients_jobs_forever(tmp_path: Path) -> None:
    """Another process's counts apply here; SIGKILL it and the next refusal sweeps them."""
    clock = Clock()
    ctx = multiprocessing.get_context("spawn")
    ready = ctx.Event()
    child = ctx.Process(target=hold_jobs, args=(str(tmp_path / "limits"), "alice", 3, ready))
    child.start()
    try:
        assert ready.wait(60)
        h = limits(tmp_path, clock, max_inflight=4)
        assert h.inflight("alice") == 3
        h.acquire("alice")
        with pytest.raises(TooManyJobs):
            h.acquire("alice")
    finally:
        assert child.pid is not None
        os.kill(child.pid, signal.SIGKILL)
        child.join(30)
    with pytest.raises(TooManyJobs):
        h.acquire("alice")  # swept less than a second ago: not yet
    clock.now += 1.5
    h.acquire("alice")  # the dead worker's 3 are gone; ours are 2 now
    assert h.inflight("alice") == 2
    h.close()
    again = limits(tmp_path, clock, max_inflight=4)  # a new worker finds a clean table
    assert again.inflight("alice") == 0
    again.close()
