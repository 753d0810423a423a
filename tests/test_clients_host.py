"""Host-wide client limits on their own (no server): a table shared by the host's workers.

Each test "worker" holds a slot lock as the job store holds its shard's, and its limits are
told that slot and how to see whether another slot's worker is alive, as the app wires them.
"""

from __future__ import annotations

import multiprocessing
import multiprocessing.synchronize
import os
import signal
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from service.clients.host import HostLimits
from service.clients.limits import ClientLimits, LimitSettings, for_store
from service.config import Settings
from service.errors import RateLimited, TooManyJobs
from service.jobs.slots import claim_slot, is_held
from service.jobs.sqlite.store import SqliteStore
from tests.test_security_units import Clock

#: The slot locks of the test workers (the store's are ``jobs-N.lock``).
SLOT_LOCK = "worker-{}.lock"


class Slots:
    """A host's worker slots, claimed the way the job store claims them."""

    def __init__(self, directory: Path) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        self.directory = directory
        self.fds: dict[int, int] = {}

    def claim(self) -> int:
        slot, self.fds[slot] = claim_slot(self.directory, SLOT_LOCK)
        return slot

    def let_go(self, slot: int) -> None:
        """The slot's worker is gone (its lock released, as the kernel does at its death)."""
        os.close(self.fds.pop(slot))

    def alive(self, slot: int) -> bool:
        return is_held(self.directory / SLOT_LOCK.format(slot))

    def close(self) -> None:
        for fd in self.fds.values():
            os.close(fd)
        self.fds.clear()


@pytest.fixture
def slots(tmp_path: Path) -> Iterator[Slots]:
    s = Slots(tmp_path / "slots")
    yield s
    s.close()


def limits(tmp_path: Path, slots: Slots, clock: Clock, **kw: float) -> HostLimits:
    """The limits of a new worker of the host: a slot of its own, then open."""
    options = {"rate": 0.0, "burst": 1, "max_inflight": 0, **kw}
    allowed = LimitSettings(**options)  # type: ignore[arg-type]
    h = HostLimits(tmp_path / "limits", allowed, alive=slots.alive, clock=clock)
    h.open(slots.claim())
    return h


async def test_token_bucket_allows_a_burst_then_the_rate(tmp_path: Path, slots: Slots) -> None:
    """burst 3 at 2/s: three at once, then one each half second; Retry-After rounds up."""
    clock = Clock()
    h = limits(tmp_path, slots, clock, rate=2.0, burst=3)
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


async def test_two_workers_share_one_bucket_and_one_cap(tmp_path: Path, slots: Slots) -> None:
    """Two HostLimits on one directory (two workers) draw from the same budget."""
    clock = Clock()
    one = limits(tmp_path, slots, clock, rate=1.0, burst=4, max_inflight=3)
    two = limits(tmp_path, slots, clock, rate=1.0, burst=4, max_inflight=3)
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


async def test_leased_tokens_never_admit_more_than_the_bucket(tmp_path: Path, slots: Slots) -> None:
    """With leases (rate 1000/s, burst 100), two workers together admit exactly the burst."""
    clock = Clock()
    one = limits(tmp_path, slots, clock, rate=1000.0, burst=100)
    two = limits(tmp_path, slots, clock, rate=1000.0, burst=100)
    assert one.bucket.lease_max > 1
    assert await take_until_each_refuses("alice", one, two) == 100
    clock.now += 0.0105  # 10.5 tokens later: 10 more, whichever worker asks
    for _ in range(10):
        await two.take("alice")
    with pytest.raises(RateLimited):
        await two.take("alice")
    one.close()
    two.close()


async def test_zero_switches_each_limit_off(tmp_path: Path, slots: Slots) -> None:
    """rate 0 and max_inflight 0: nothing is refused and no table is made."""
    h = limits(tmp_path, slots, Clock(), rate=0.0, max_inflight=0)
    for _ in range(10_000):
        await h.take("alice")
        h.acquire("alice")
    assert not (tmp_path / "limits").exists()


def test_counts_survive_a_restart_only_as_far_as_resumed_jobs(tmp_path: Path, slots: Slots) -> None:
    """force counts resumed jobs over the cap; release never goes below what was counted."""
    h = limits(tmp_path, slots, Clock(), max_inflight=2)
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
    """A worker process: hold a slot, count ``count`` jobs of ``owner`` in flight, then wait
    to be killed."""
    slots = Slots(Path(directory) / "slots")
    allowed = LimitSettings(rate=0.0, burst=1, max_inflight=100)
    h = HostLimits(Path(directory) / "limits", allowed, alive=slots.alive)
    h.open(slots.claim())
    for _ in range(count):
        h.acquire(owner)
    ready.set()
    signal.pause()


def test_a_killed_worker_does_not_hold_a_clients_jobs_forever(tmp_path: Path, slots: Slots) -> None:
    """Another process's counts apply here; SIGKILL it and the next refusal sweeps them."""
    clock = Clock()
    ctx = multiprocessing.get_context("spawn")
    ready = ctx.Event()
    child = ctx.Process(target=hold_jobs, args=(str(tmp_path), "alice", 3, ready))
    child.start()
    try:
        assert ready.wait(60)
        h = limits(tmp_path, slots, clock, max_inflight=4)
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
    again = limits(tmp_path, slots, clock, max_inflight=4)  # a new worker finds a clean table
    assert again.inflight("alice") == 0
    again.close()


def test_a_replacement_clears_its_slot_and_the_old_worker_leaves_it_alone(
    tmp_path: Path, slots: Slots
) -> None:
    """A worker whose slot was taken over before it closed (its store let go first) does
    not clear its replacement's counts."""
    clock = Clock()
    old = limits(tmp_path, slots, clock, max_inflight=10)
    for _ in range(4):
        old.acquire("alice")
    slots.let_go(old.slot)
    new = HostLimits(
        tmp_path / "limits", old.settings, alive=slots.alive, clock=clock
    )  # the next worker takes the same slot: what the old one counted is not its own
    new.open(slots.claim())
    assert new.slot == old.slot
    assert new.inflight("alice") == 0
    new.force("alice")  # one of them resumed
    old.close()
    assert new.inflight("alice") == 1
    new.close()


async def test_from_the_store_the_limits_count_in_the_shard_slot(
    tmp_path: Path, make_settings: Callable[..., Settings]
) -> None:
    """for_store wires the limits to the SQLite shard locks: a live worker's counts stay
    through a sweep, and go once its shard is let go."""
    settings = make_settings(client_rate=0.0, client_max_inflight=5)
    stores = [
        SqliteStore(settings.store.path, result_ttl_s=60, result_max=1 << 20) for _ in range(2)
    ]
    workers: list[HostLimits] = []
    for store in stores:
        await store.open()
        worker = for_store(settings, store)
        assert isinstance(worker, HostLimits)
        worker.open(store.slot)
        workers.append(worker)
    one, two = workers
    assert one.slot != two.slot
    for _ in range(3):
        one.acquire("alice")
    assert two.sweep() == 0
    assert two.inflight("alice") == 3
    await stores[0].close()  # the worker's shard is free: it is gone, as far as the host sees
    assert two.sweep() == 1
    assert two.inflight("alice") == 0
    await stores[1].close()
    two.close()


def test_opening_probes_no_other_slot_and_the_first_client_at_its_cap_sweeps(
    tmp_path: Path, slots: Slots
) -> None:
    """A worker's start asks after no other slot (its siblings are claiming theirs then);
    the first acquire that meets the cap sweeps at once, and clears a dead slot's counts."""
    clock = Clock()
    dead = limits(tmp_path, slots, clock, max_inflight=2)
    dead.acquire("alice")
    dead.acquire("alice")
    mine = slots.claim()
    slots.let_go(dead.slot)  # killed: its counts stay in the table
    asked: list[int] = []

    def alive(slot: int) -> bool:
        asked.append(slot)
        return slots.alive(slot)

    h = HostLimits(tmp_path / "limits", dead.settings, alive=alive, clock=clock)
    h.open(mine)
    assert asked == []
    assert h.inflight("alice") == 2
    h.acquire("alice")  # at the cap: the sweep finds the dead slot and clears it
    assert asked == [dead.slot]
    assert h.inflight("alice") == 1
    h.close()
