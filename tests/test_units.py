"""Pure pieces on their own: settings, ids, job states, admission, batch validation."""

from __future__ import annotations

import asyncio
import collections
import os
import re
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from service import ids
from service.config import Settings
from service.errors import ConfigError, Invalid, Overloaded, TooManyTasks
from service.jobs.admission import Admission
from service.jobs.batches import CHUNK_MAX, chunk_size, pack
from service.jobs.state import FINAL, JobState, after_interruption, can_cancel, can_move
from service.tasks.parcels import parse_batch


def test_settings_defaults_fill_in_the_host() -> None:
    """Unset workers and cpu workers default to the vCPU count; sizes have their defaults."""
    s = Settings.from_env({})
    assert s.workers >= 1
    assert s.cpu_workers >= 1
    assert s.body_max == 1 << 20
    assert s.parcel_latency_ms is None
    assert s.bind == "127.0.0.1:8000"


@pytest.mark.parametrize(
    ("name", "value", "message"),
    [
        ("JOBPOOL_IO_THREADS", "many", "not an integer"),
        ("JOBPOOL_IO_THREADS", "0", "out of range"),
        ("JOBPOOL_BODY_MAX", "-1", "out of range"),
        ("JOBPOOL_BIND", "localhost", "HOST:PORT"),
        ("JOBPOOL_BIND", "127.0.0.1:99999", "HOST:PORT"),
        ("JOBPOOL_PARCEL_LATENCY_MS", "55-5", "LO-HI"),
        ("JOBPOOL_PARCEL_LATENCY_MS", "fast", "millisecond range"),
        ("JOBPOOL_LOG_LEVEL", "loud", "not one of"),
        ("JOBPOOL_MAX_ATTEMPTS", "0", "out of range"),
        ("JOBPOOL_STORE_URL", "postgres://db/jobs", "not a sqlite:///DIR, redis://"),
        ("JOBPOOL_STORE_URL", "sqlite://relative/dir", "absolute directory"),
        ("JOBPOOL_STORE_URL", "sqlite:///", "absolute directory"),
        ("JOBPOOL_STORE_URL", "redis://:6379/0", "names no host"),
        ("JOBPOOL_STORE_URL", "redis://cache:port/0", "invalid port"),
        ("JOBPOOL_STORE_URL", "redis://cache:6379/zero", "must be a number"),
        ("JOBPOOL_LEASE_S", "1", "out of range"),
        ("JOBPOOL_FLEET_QUEUE_MAX", "0", "out of range"),
    ],
)
def test_bad_setting_names_the_variable(name: str, value: str, message: str) -> None:
    """An invalid value raises ConfigError whose one line names the variable and the reason."""
    with pytest.raises(ConfigError) as info:
        Settings.from_env({name: value})
    assert info.value.detail.startswith(f"{name}: ")
    assert message in info.value.detail
    assert "\n" not in info.value.detail


@pytest.mark.parametrize(
    ("raw", "scheme", "target"),
    [
        ("sqlite:///var/lib/jobpool", "sqlite", "/var/lib/jobpool"),
        ("sqlite:////var/lib/jobpool", "sqlite", "/var/lib/jobpool"),
        ("redis://cache.internal:6379/2", "redis", "redis://cache.internal:6379/2"),
        ("redis://localhost", "redis", "redis://localhost"),
        (
            "rediss://:s3cret@cache.internal:6380/0",
            "rediss",
            "rediss://:s3cret@cache.internal:6380/0",
        ),
    ],
)
def test_store_url_parses(raw: str, scheme: str, target: str) -> None:
    """JOBPOOL_STORE_URL takes an absolute SQLite directory or a redis:// / rediss:// URL."""
    url = Settings.from_env({"JOBPOOL_STORE_URL": raw}).store
    assert (url.scheme, url.target) == (scheme, target)


def test_store_url_defaults_to_sqlite_in_the_state_dir() -> None:
    """Without JOBPOOL_STORE_URL the SQLite files live in JOBPOOL_STATE_DIR."""
    url = Settings.from_env({"JOBPOOL_STATE_DIR": "/srv/jobs"}).store
    assert (url.scheme, url.path) == ("sqlite", Path("/srv/jobs"))
    assert not url.is_redis


def test_a_redis_password_never_shows() -> None:
    """The password of a Redis URL is hidden in errors, logs and the settings' repr."""
    with pytest.raises(ConfigError) as info:
        Settings.from_env({"JOBPOOL_STORE_URL": "redis://user:s3cret@cache/db"})
    assert "s3cret" not in info.value.detail
    s = Settings.from_env({"JOBPOOL_STORE_URL": "rediss://:s3cret@cache:6380/0"})
    assert "s3cret" not in repr(s)
    assert s.store.redacted() == "rediss://:***@cache:6380/0"


def test_latency_range_parses() -> None:
    """JOBPOOL_PARCEL_LATENCY_MS takes LO-HI or one value; off switches it off."""
    assert Settings.from_env({"JOBPOOL_PARCEL_LATENCY_MS": "5-55"}).parcel_latency_ms == (5, 55)
    assert Settings.from_env({"JOBPOOL_PARCEL_LATENCY_MS": "30"}).parcel_latency_ms == (30, 30)
    assert Settings.from_env({"JOBPOOL_PARCEL_LATENCY_MS": "off"}).parcel_latency_ms is None


@pytest.mark.parametrize(
    ("cpu_workers", "gunicorn_workers", "expected"),
    [(2, 2, [1, 1]), (4, 2, [2, 2]), (5, 2, [3, 2]), (1, 4, [1, 1, 1, 1]), (8, 3, [3, 3, 2])],
)
def test_cpu_budget_is_shared_by_slot(
    cpu_workers: int, gunicorn_workers: int, expected: list[int]
) -> None:
    """The host's cpu budget is split over the workers by slot, at least one each."""
    s = Settings.from_env({}, cpu_workers=cpu_workers, gunicorn_workers=gunicorn_workers)
    assert [s.cpu_processes_for(slot) for slot in range(gunicorn_workers)] == expected


def test_ids_are_unique_time_ordered_and_well_formed() -> None:
    """Ids sort by creation time, never repeat, and pass is_valid."""
    clock = iter([1000.0, 1000.0, 1000.001, 2000.0]).__next__
    made = [ids.new_id(clock) for _ in range(4)]
    assert made[2] > made[0]
    assert made[2] > made[1]
    assert made[3] > made[2]
    assert len({ids.new_id() for _ in range(10_000)}) == 10_000
    assert all(ids.is_valid(i) and len(i) == ids.ID_LENGTH for i in made)
    assert not ids.is_valid("../../etc/passwd")
    assert ids.RANDOM_BITS >= 80


def test_id_digits_are_the_time_then_random() -> None:
    """The first 10 digits are the millisecond in base 32; the other 16 are random, every
    digit drawn about as often as any other; a forked child draws bytes of its own."""
    made = [ids.new_id(lambda: 1234.5678) for _ in range(4096)]
    assert {i[: ids.ID_TIME_CHARS] for i in made} == {"0000015nm7"}  # 1234567 ms
    counts = collections.Counter(c for i in made for c in i[ids.ID_TIME_CHARS :])
    assert set(counts) == set(ids.ALPHABET)
    assert max(counts.values()) < 1.25 * min(counts.values())
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: same buffer position as the parent unless it was dropped
        os.write(write, ids.new_id().encode())
        os._exit(0)
    os.waitpid(pid, 0)
    child = os.read(read, 64).decode()
    os.close(read)
    os.close(write)
    assert child[ids.ID_TIME_CHARS :] != ids.new_id()[ids.ID_TIME_CHARS :]


@given(st.text(max_size=40))
def test_is_valid_rejects_what_new_id_cannot_make(text: str) -> None:
    """is_valid is false for any string outside the id alphabet or length."""
    if len(text) != ids.ID_LENGTH or set(text) - set(ids.ALPHABET):
        assert not ids.is_valid(text)


@given(st.text(ids.ALPHABET + "89AZiloux-", min_size=24, max_size=28) | st.builds(ids.new_id))
def test_id_pattern_says_what_is_valid_checks(text: str) -> None:
    """The id pattern /openapi.json shows matches exactly the texts is_valid accepts."""
    assert (re.fullmatch(ids.PATTERN, text) is not None) is ids.is_valid(text)


def test_final_states_have_no_way_out() -> None:
    """Nothing leaves succeeded, failed or cancelled; only a queued job can be cancelled."""
    for state in FINAL:
        assert not any(can_move(state, other) for other in JobState)
    assert can_cancel(JobState.QUEUED)
    assert not can_cancel(JobState.RUNNING)
    assert after_interruption(1, 3) is JobState.QUEUED
    assert after_interruption(3, 3) is JobState.FAILED


class JobLife(RuleBasedStateMachine):
    """Random walks over the allowed transitions: finals stay final, attempts stay bounded."""

    def __init__(self) -> None:
        super().__init__()
        self.state = JobState.QUEUED
        self.attempts = 0

    @precondition(lambda self: self.state is JobState.QUEUED)
    @rule()
    def start(self) -> None:
        assert can_move(self.state, JobState.RUNNING)
        self.state = JobState.RUNNING
        self.attempts += 1

    @precondition(lambda self: self.state is JobState.RUNNING)
    @rule(ok=st.booleans())
    def finish(self, ok: bool) -> None:
        target = JobState.SUCCEEDED if ok else JobState.FAILED
        assert can_move(self.state, target)
        self.state = target

    @precondition(lambda self: self.state is JobState.RUNNING)
    @rule()
    def interrupt(self) -> None:
        target = after_interruption(self.attempts, 3)
        assert can_move(self.state, target)
        self.state = target

    @precondition(lambda self: can_cancel(self.state))
    @rule()
    def cancel(self) -> None:
        self.state = JobState.CANCELLED

    @rule(dst=st.sampled_from(list(JobState)))
    def nothing_leaves_a_final_state(self, dst: JobState) -> None:
        if self.state in FINAL:
            assert not can_move(self.state, dst)

    @invariant()
    def attempts_are_bounded(self) -> None:
        assert self.attempts <= 3 or self.state in FINAL


TestJobLife = JobLife.TestCase


async def test_admission_refuses_when_full_and_frees_on_release() -> None:
    """A full admission raises Overloaded at once; a release makes room."""
    a = Admission("io", 3)
    await a.acquire(2)
    with pytest.raises(Overloaded):
        await a.acquire(2)
    a.release(1)
    await a.acquire(2)
    assert a.in_use == 3
    with pytest.raises(TooManyTasks, match="can never fit"):
        await a.acquire(4)


async def test_admission_wait_is_bounded_and_first_come_first_served() -> None:
    """Waiters are served in order, and one that waits too long is refused."""
    a = Admission("cpu", 2, wait_s=0.5)
    await a.acquire(2)
    order: list[str] = []

    async def take(name: str, n: int) -> None:
        await a.acquire(n)
        order.append(name)

    big = asyncio.create_task(take("big", 2))
    await asyncio.sleep(0.01)
    small = asyncio.create_task(take("small", 1))
    await asyncio.sleep(0.01)
    a.release(1)  # one free: the small one must not overtake the big one at the head
    await asyncio.sleep(0.01)
    assert order == []
    a.release(1)
    await big
    assert order == ["big"]
    with pytest.raises(Overloaded):
        await small  # never room for it within its 0.5 s


def test_batch_over_the_item_limit_is_refused() -> None:
    """More items than JOBPOOL_BATCH_MAX is a 422 naming the setting."""
    items = [{"id": str(i), "time": "2017-01-01T00:00:01Z", "data": ""} for i in range(11)]
    with pytest.raises(Invalid, match="JOBPOOL_BATCH_MAX"):
        parse_batch({"Data": items}, max_items=10)
    assert parse_batch({"Data": items[:10]}, max_items=10) == items[:10]


def test_pack_keeps_every_item_once_in_order() -> None:
    """Chunks cover every batch's items exactly once, in order, none over the size."""
    for sizes in ([1], [9], [9, 9, 9], [3, 1, 7, 2], [300, 5], [1] * 20):
        for size in (1, 2, 4, 9, 10, 256):
            chunks = pack(sizes, size)
            flat = [(n, i) for c in chunks for n, start, stop in c for i in range(start, stop)]
            assert flat == [(n, i) for n, total in enumerate(sizes) for i in range(total)]
            assert all(0 < sum(stop - start for _, start, stop in c) <= size for c in chunks)
            assert all(sum(stop - start for _, start, stop in c) == size for c in chunks[:-1])


def test_chunk_size_follows_the_cost_of_an_item() -> None:
    """Unknown or slow items go one to a chunk (each on a thread); fast ones many."""
    assert chunk_size(None) == 1
    assert chunk_size(0.030) == 1  # 30 ms of storage latency per parcel
    assert chunk_size(0.0005) == 4
    assert chunk_size(0.000002) == CHUNK_MAX
    assert chunk_size(0.0) == CHUNK_MAX
