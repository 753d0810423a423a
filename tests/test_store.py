"""The store interface, the same tests on both backends: SQLite shards and a shared Redis.

Each test makes "workers" with ``backend.store()``: SQLite stores on one directory (the
workers of one host), Redis stores on one server (workers of one host, or of several with
``host=``). Where the backends differ on purpose (SQLite runs what a worker accepted, Redis
shares the queue), the tests state the behaviour both promise: every accepted job runs,
attempts are counted, nothing is started twice while its worker lives.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import pytest

from service.config import StoreUrl
from service.errors import StoreUnavailable
from service.ids import new_id
from service.jobs.record import (
    BatchProgress,
    FailedAttempt,
    ItemRef,
    JobEnd,
    JobQuery,
    JobRecord,
)
from service.jobs.redis.store import RedisStore
from service.jobs.registry import POOLS
from service.jobs.sqlite.store import SqliteStore
from service.jobs.state import (
    ADD,
    CANCEL,
    DUE,
    FINISH,
    MOVES,
    REQUEUE,
    RETRY,
    START,
    JobState,
    Move,
)
from service.jobs.store import Store

ROOM = {"io": 100, "cpu": 100}


def record(name: str = "test.echo", **kw: Any) -> JobRecord:
    base: dict[str, Any] = {
        "id": new_id(),
        "name": name,
        "owner": "alice",
        "state": JobState.QUEUED,
        "created_at": 1000.0,
        "args": {"x": 1},
    }
    base.update(kw)
    return JobRecord(**base)


def lane_of(name: str) -> str:
    return "cpu" if name.startswith("cpu") else "io"


class Backend:
    """Makes stores of one kind that share their backing (a directory, a Redis)."""

    def __init__(self, kind: str, tmp_path: Path, redis_url: str | None) -> None:
        self.kind = kind
        self.tmp_path = tmp_path
        self.redis_url = redis_url

    def store(
        self, *, ttl: float = 60, result_max: int = 1 << 20, host: str = "a", lease_s: float = 30
    ) -> Store:
        if self.kind == "sqlite":
            return SqliteStore(self.tmp_path / "jobs", result_ttl_s=ttl, result_max=result_max)
        assert self.redis_url is not None
        return RedisStore(
            StoreUrl("redis", self.redis_url),
            state_dir=self.tmp_path / host,
            lane_of=lane_of,
            pools=POOLS,
            result_ttl_s=ttl,
            result_max=result_max,
            lease_s=lease_s,
            queue_max=1000,
        )

    async def opened(self, **kw: Any) -> Store:
        s = self.store(**kw)
        await s.open()
        return s


@pytest.fixture(params=["sqlite", "redis"])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Backend:
    url = request.getfixturevalue("redis_url") if request.param == "redis" else None
    return Backend(request.param, tmp_path, url)


async def to_run_again(store: Store) -> dict[str, JobRecord]:
    """What a worker runs after a restart: its own unfinished jobs (SQLite) or what it
    claims from the shared queue (Redis), each started once."""
    out: dict[str, JobRecord] = {}
    for r in await store.unfinished():
        assert await store.start(r.id, 3000.0)
        out[r.id] = r
    for r in await store.claim(ROOM, 3000.0):
        out[r.id] = r
    return out


async def test_each_open_store_claims_its_own_slot(backend: Backend) -> None:
    """Two workers of a host get slots 0 and 1; a slot given up is claimed again."""
    a, b = await backend.opened(), await backend.opened()
    assert (a.slot, b.slot) == (0, 1)
    await a.close()
    c = await backend.opened()
    assert c.slot == 0
    await b.close()
    await c.close()


async def test_a_job_offered_running_is_stored_running(backend: Backend) -> None:
    """add() of a running job stores it running with one attempt; a queued one stays queued."""
    a = await backend.opened()
    now = time.time()
    running = record(state=JobState.RUNNING, started_at=now, attempts=1, created_at=now)
    queued = record(created_at=now)
    assert await a.add(running) is JobState.RUNNING
    assert await a.add(queued) is JobState.QUEUED
    got = await a.get(running.id)
    assert got is not None
    assert (got.state, got.attempts, got.started_at) == (JobState.RUNNING, 1, now)
    got = await a.get(queued.id)
    assert got is not None
    assert (got.state, got.attempts, got.started_at) == (JobState.QUEUED, 0, None)
    await a.close()


async def test_large_arguments_and_results_come_back_whole(backend: Backend) -> None:
    """An image-sized argument runs again intact after a restart; get() reads its result
    (and, as for every job, not its arguments)."""
    a = await backend.opened()
    big, small = os.urandom(600_000), {"x": 1}
    large, little = record(args={"data": big}), record(args=small)
    for job in (large, little):
        await a.add(job)
    await a.close()  # both left queued
    b = await backend.opened()
    again = await to_run_again(b)
    assert again[large.id].args == {"data": big}
    assert again[little.id].args == small
    output = os.urandom(700_000)
    await b.finish(again[large.id], JobState.SUCCEEDED, 3001.0, result={"data": output}, error=None)
    got = await b.get(large.id)
    assert got is not None
    assert (got.state, got.result, got.args) == (JobState.SUCCEEDED, {"data": output}, {})
    await b.close()


async def test_jobs_are_read_and_cancelled_across_workers(backend: Backend) -> None:
    """A job stored by one worker is read and cancelled through another."""
    a, b = await backend.opened(), await backend.opened(host="b")
    job = record()
    await a.add(job)
    got = await b.get(job.id)
    assert got is not None
    assert got.state is JobState.QUEUED
    assert await b.cancel(job.id, 2000.0) is JobState.CANCELLED
    assert await a.start(job.id, 2001.0) is False  # the owner sees the cancel and skips it
    assert await a.claim(ROOM, 2001.0) == []  # and nobody else runs it
    final = await a.get(job.id)
    assert final is not None
    assert final.state is JobState.CANCELLED
    assert final.finished_at == 2000.0
    assert await b.cancel(job.id, 2002.0) is JobState.CANCELLED  # again: same answer
    assert await b.cancel(new_id(), 1.0) is None
    await a.close()
    await b.close()


async def test_only_a_queued_job_can_be_cancelled(backend: Backend) -> None:
    """cancel() of a running or finished job changes nothing and answers its state."""
    a = await backend.opened()
    job = record()
    await a.add(job)
    assert await a.start(job.id, 1.0)
    assert await a.cancel(job.id, 2.0) is JobState.RUNNING
    await a.finish(job, JobState.SUCCEEDED, 3.0, result=[1], error=None)
    assert await a.cancel(job.id, 4.0) is JobState.SUCCEEDED
    got = await a.get(job.id)
    assert got is not None
    assert (got.state, got.result, got.finished_at) == (JobState.SUCCEEDED, [1], 3.0)
    await a.close()


async def test_jobs_left_by_a_dead_process_run_again(backend: Backend) -> None:
    """After a restart, what was left running or queued runs again, attempts counted."""
    a = await backend.opened()
    running, queued, done = record(), record(), record()
    for job in (running, queued, done):
        await a.add(job)
    await a.start(running.id, 1.0)
    await a.start(done.id, 1.0)
    await a.finish(done, JobState.SUCCEEDED, 2.0, result={"ok": True}, error=None)
    await a.close()  # as a crash would: the running job is never handed back
    b = await backend.opened()
    again = await to_run_again(b)
    assert set(again) == {running.id, queued.id}
    left = {i: await b.get(i) for i in again}
    assert {i: (r.state, r.attempts) for i, r in left.items() if r} == {
        running.id: (JobState.RUNNING, 2),
        queued.id: (JobState.RUNNING, 1),
    }
    interrupted = left[running.id]
    assert interrupted is not None
    assert "interrupted" in (interrupted.error or "")
    assert interrupted.interrupted  # the field, not the text, says a crash cut it off
    queued_again = left[queued.id]
    assert queued_again is not None
    assert not queued_again.interrupted
    other = await backend.opened()  # a live worker beside b takes none of them
    assert await other.adopt_orphans() == []
    assert await other.claim(ROOM, 4000.0) == []
    await other.close()
    await b.close()


async def test_a_requeued_job_runs_again(backend: Backend) -> None:
    """requeue() puts a running job back: queued, its attempt kept, the reason stored."""
    a = await backend.opened()
    job = record()
    await a.add(job)
    await a.start(job.id, 1.0)
    await a.requeue(job.id, error="interrupted by shutdown")
    got = await a.get(job.id)
    assert got is not None
    assert (got.state, got.attempts, got.error, got.interrupted) == (
        JobState.QUEUED,
        1,
        "interrupted by shutdown",
        False,  # a shutdown is not a crash: no quarantine
    )
    if a.shares_queue:
        assert [r.id for r in await a.claim(ROOM, 2.0)] == [job.id]
    else:
        assert await a.start(job.id, 2.0)
    got = await a.get(job.id)
    assert got is not None
    assert (got.state, got.attempts) == (JobState.RUNNING, 2)
    await a.close()


async def test_a_final_state_is_written_once(backend: Backend) -> None:
    """A second finish() (a job that ran twice) does not overwrite the first outcome."""
    a = await backend.opened()
    job = record()
    await a.add(job)
    await a.start(job.id, 1.0)
    await a.finish(job, JobState.SUCCEEDED, 2.0, result="first", error=None)
    await a.finish(job, JobState.FAILED, 3.0, error="second")
    got = await a.get(job.id)
    assert got is not None
    assert (got.state, got.result, got.error, got.finished_at) == (
        JobState.SUCCEEDED,
        "first",
        None,
        2.0,
    )
    await a.close()


async def test_batch_progress_and_end_are_recorded(backend: Backend) -> None:
    """progress() counts items; finish() with the last items ends the batch with its result."""
    a = await backend.opened()
    job = record("parcel", items=["a", "b", "c"])
    await a.add(job)
    await a.start(job.id, 1.0)
    await a.progress(job, BatchProgress(1, 1, [("a", "A")]))
    mid = await a.get(job.id)
    assert mid is not None
    assert (mid.state, mid.done, mid.failed, mid.items) == (JobState.RUNNING, 1, 1, ["a", "b", "c"])
    result = {"total": 3, "done": 2, "failed": 1}
    await a.finish(job, JobState.FAILED, 2.0, result=result, error="1 of 3 items failed",
                   progress=BatchProgress(2, 1, [("c", "C")]))  # fmt: skip
    end = await a.get(job.id)
    assert end is not None
    assert (end.state, end.done, end.failed, end.result, end.error) == (
        JobState.FAILED,
        2,
        1,
        result,
        "1 of 3 items failed",
    )
    assert await a.get_item("parcel", "alice", "a") == "A"
    assert await a.get_item("parcel", "alice", "c") == "C"
    await a.close()


async def test_items_are_stored_per_owner_and_newest_wins(backend: Backend) -> None:
    """Item results are found by (job name, owner, key); a newer job's item wins."""
    a = await backend.opened()
    now = time.time()
    old = record("parcel", items=[1], id=new_id(lambda: now - 1))
    new = record("parcel", items=[1], id=new_id(lambda: now))
    for job in (old, new):
        await a.add(job)
    await a.progress(new, BatchProgress(1, 0, [("p1", {"v": "new"})]))
    await a.progress(old, BatchProgress(1, 0, [("p1", {"v": "old"})]))  # late, but older
    assert await a.get_item("parcel", "alice", "p1") == {"v": "new"}
    assert await a.get_item("parcel", "bob", "p1") is None
    assert await a.get_item("other", "alice", "p1") is None
    doc = await a.get(new.id)
    assert doc is not None
    assert (doc.done, doc.failed) == (1, 0)
    await a.close()


async def test_item_keys_cannot_collide_across_owners(backend: Backend) -> None:
    """Owner "a:b" with key "c" and owner "a" with key "b:c" are two different items."""
    a = await backend.opened()
    one = record("parcel", owner="a:b", items=[1], id=new_id())
    two = record("parcel", owner="a", items=[1], id=new_id())
    await a.add(one)
    await a.add(two)
    await a.progress(one, BatchProgress(1, 0, [("c", 1)]))
    await a.progress(two, BatchProgress(1, 0, [("b:c", 2)]))
    assert await a.get_item("parcel", "a:b", "c") == 1
    assert await a.get_item("parcel", "a", "b:c") == 2
    await a.close()


async def test_jobs_end_together_in_one_write(backend: Backend) -> None:
    """finish_many ends several jobs at once, each with its own state, result and items."""
    a = await backend.opened()
    ok = record("parcel", items=[1, 2], state=JobState.RUNNING)
    bad = record("parcel", items=[3], state=JobState.RUNNING)
    for job in (ok, bad):
        assert await a.add(job) is JobState.RUNNING
    await a.finish_many(
        [
            JobEnd(ok, JobState.SUCCEEDED, {"done": 2}, None, BatchProgress(2, 0, [("k1", 1)])),
            JobEnd(bad, JobState.FAILED, None, "ValueError: no", BatchProgress(0, 1, [])),
        ],
        5.0,
    )
    got_ok, got_bad = await a.get(ok.id), await a.get(bad.id)
    assert got_ok is not None
    assert got_bad is not None
    assert (got_ok.state, got_ok.result, got_ok.done, got_ok.finished_at) == (
        JobState.SUCCEEDED, {"done": 2}, 2, 5.0,
    )  # fmt: skip
    assert (got_bad.state, got_bad.error, got_bad.failed) == (
        JobState.FAILED, "ValueError: no", 1,
    )  # fmt: skip
    assert await a.get_item("parcel", "alice", "k1") == 1
    await a.close()


async def test_an_item_kept_as_itself_reads_back_as_the_item(backend: Backend) -> None:
    """An item result given as ItemRef(i) is the job's own item i, read back as such."""
    items = [{"id": "p0", "data": "zero"}, {"id": "p1", "data": "one"}]
    a = await backend.opened()
    job = record("parcel", items=items, state=JobState.RUNNING)
    await a.add(job)
    await a.progress(job, BatchProgress(1, 0, [("p1", ItemRef(1))]))
    assert await a.get_item("parcel", "alice", "p1") == items[1]
    await a.finish(job, JobState.SUCCEEDED, 9.0, error=None,
                   progress=BatchProgress(2, 0, [("p0", ItemRef(0))]))  # fmt: skip
    assert await a.get_item("parcel", "alice", "p0") == items[0]
    assert await a.get_item("parcel", "bob", "p0") is None
    await a.close()


async def test_finished_jobs_expire_after_the_ttl(backend: Backend) -> None:
    """purge deletes jobs finished longer ago than the TTL, and only those."""
    a = await backend.opened(ttl=100)
    old, recent, queued = (record(id=new_id(lambda t=t: t)) for t in (900.0, 1800.0, 850.0))
    for job in (old, recent, queued):
        await a.add(job)
    await a.finish(old, JobState.SUCCEEDED, 1000.0, result=1, error=None)
    await a.finish(recent, JobState.SUCCEEDED, 1950.0, result=1, error=None)
    assert await a.purge(2000.0) == 1
    assert await a.get(old.id) is None
    assert await a.get(recent.id) is not None
    assert await a.get(queued.id) is not None
    await a.close()


async def count_items(store: Store) -> int:
    if isinstance(store, SqliteStore):
        assert store._conn is not None
        (n,) = store._conn.execute("SELECT count(*) FROM item_results").fetchone()
        return int(n)
    assert isinstance(store, RedisStore)
    assert store._client is not None
    return len(await store._client.keys("jobpool:item:*"))


async def test_keyed_results_expire_with_the_ttl(backend: Backend) -> None:
    """A keyed item older than the TTL is not served, and is gone after the sweep (Redis
    lets it expire by itself)."""
    a = await backend.opened(ttl=100)
    old = record("parcel", id=new_id(lambda: 1000.0), items=[1])
    await a.add(old)
    await a.progress(old, BatchProgress(1, 0, [("p1", {"v": 1})]))
    assert await a.get_item("parcel", "alice", "p1") is None
    for _ in range(20):  # SQLite sweeps keyed items every few rounds
        await a.purge(5000.0)
    assert await count_items(a) == 0
    await a.close()


async def test_a_result_over_the_cap_fails_the_job(backend: Backend) -> None:
    """A result larger than JOBPOOL_RESULT_MAX is not stored; the job fails saying why."""
    a = await backend.opened(result_max=1000)
    job = record()
    await a.add(job)
    await a.start(job.id, 1.0)
    await a.finish(job, JobState.SUCCEEDED, 2.0, result=b"x" * 5000, error=None)
    got = await a.get(job.id)
    assert got is not None
    assert got.state is JobState.FAILED
    assert "JOBPOOL_RESULT_MAX" in (got.error or "")
    assert got.result is None
    await a.close()


async def test_unusable_state_directory_is_a_clear_error(backend: Backend, tmp_path: Path) -> None:
    """A store whose directory cannot be made raises StoreUnavailable naming it."""
    blocker = tmp_path / "file"
    blocker.write_bytes(b"in the way")
    backend.tmp_path = blocker / "state"
    with pytest.raises(StoreUnavailable, match=r"cannot .* in .*file"):
        await backend.opened()


async def in_state(store: Store, state: JobState) -> JobRecord:
    """A job brought to ``state`` through the store's own operations."""
    if state is JobState.SCHEDULED:  # long after the test: nothing makes it due meanwhile
        job = record(state=JobState.SCHEDULED, not_before=time.time() + 3600)
        await store.add(job)
        return job
    job = record()
    await store.add(job)
    if state is JobState.QUEUED:
        return job
    if state is JobState.CANCELLED:
        assert await store.cancel(job.id, 1.0) is JobState.CANCELLED
        return job
    assert await store.start(job.id, 1.0)
    if state in (JobState.SUCCEEDED, JobState.FAILED):
        await store.finish(job, state, 2.0, result=None, error=None)
    return job


async def apply(store: Store, move: Move, job: JobRecord) -> None:
    """The store operation that ``move`` declares, on ``job``."""
    if move is START:
        await store.start(job.id, 5.0)
    elif move is DUE:
        if isinstance(store, RedisStore):  # the shared queue promotes due jobs itself
            await store.promote(time.time() + 7200)
        else:
            await store.due(job.id)
    elif move is RETRY:
        failed = FailedAttempt(1, 1.0, 2.0, "boom")
        await store.retry(job, not_before=time.time() + 3600, error="boom", attempt=failed)
    elif move is FINISH:
        await store.finish(job, JobState.SUCCEEDED, 5.0, result=None, error=None)
    elif move is REQUEUE:
        await store.requeue(job.id, error="cut off")
    elif move is CANCEL:
        await store.cancel(job.id, 5.0)
    else:
        raise AssertionError(f"no operation for {move.name}")


@pytest.mark.parametrize("move", [m for m in MOVES if m is not ADD], ids=lambda m: m.name)
async def test_every_move_changes_exactly_the_states_it_declares(
    backend: Backend, move: Move
) -> None:
    """Each move of service/jobs/state.py, tried on a job in every state, changes the job
    iff its declaration lists that state, and to a state it declares."""
    store = await backend.opened()
    for state in JobState:
        job = await in_state(store, state)
        before = await store.get(job.id)
        assert before is not None
        assert before.state is state
        await apply(store, move, job)
        after = await store.get(job.id)
        assert after is not None
        if state in move.sources:
            assert after.state in move.targets, (move.name, state, after.state)
        else:
            assert after.state is state, (move.name, state, after.state)
    await store.close()


async def test_listing_gives_each_owners_jobs_newest_first_by_filter(backend: Backend) -> None:
    """list_jobs walks an owner's jobs newest first, by state, name and id bounds, across
    workers' parts of the store, and never another owner's."""
    a, b = await backend.opened(), await backend.opened()
    made: list[JobRecord] = []
    for i in range(12):
        store = a if i % 2 else b
        job = record("test.echo" if i % 3 else "cpu.thing", owner="alice" if i < 10 else "bob")
        await store.add(job)
        made.append(job)
    done = made[0]
    await b.start(done.id, 2.0)
    await b.finish(done, JobState.SUCCEEDED, 3.0, result=None, error=None)
    gone = made[1]
    await a.cancel(gone.id, 4.0)
    alice = [j.id for j in made if j.owner == "alice"]

    async def ids(store: Store, **kw: Any) -> list[str]:
        query = JobQuery(**{"owner": "alice", "limit": 100, **kw})
        return [r.id for r in await store.list_jobs(query)]

    assert await ids(a) == sorted(alice, reverse=True)
    assert await ids(b) == sorted(alice, reverse=True)
    assert await ids(a, limit=3) == sorted(alice, reverse=True)[:3]
    assert await ids(a, states=frozenset({JobState.SUCCEEDED})) == [done.id]
    assert await ids(a, states=frozenset({JobState.CANCELLED})) == [gone.id]
    both = frozenset({JobState.SUCCEEDED, JobState.CANCELLED})
    assert await ids(a, states=both) == sorted([done.id, gone.id], reverse=True)
    queued = sorted(set(alice) - {done.id, gone.id}, reverse=True)
    assert await ids(a, states=frozenset({JobState.QUEUED})) == queued
    cpu = [j.id for j in made if j.owner == "alice" and j.name == "cpu.thing"]
    assert await ids(a, name="cpu.thing") == sorted(cpu, reverse=True)
    middle = sorted(alice)[3]
    assert await ids(a, id_below=middle) == sorted(alice, reverse=True)[-3:]
    assert await ids(a, id_from=middle) == sorted(alice, reverse=True)[:-3]
    assert [r.id for r in await a.list_jobs(JobQuery(owner="bob", limit=9))] == sorted(
        (j.id for j in made if j.owner == "bob"), reverse=True
    )
    everyone = await a.list_jobs(JobQuery(owner=None, limit=100))
    assert [r.id for r in everyone] == sorted((j.id for j in made), reverse=True)
    listed = (await a.list_jobs(JobQuery(owner="alice", limit=1)))[0]
    assert (listed.args, listed.result) == ({}, None)  # a listing reads no payloads
    await a.close()
    await b.close()


async def test_a_job_that_names_a_callback_ends_with_its_delivery_in_the_outbox(
    backend: Backend,
) -> None:
    """Ending a job with a callback (finished, cancelled before it started, or stored
    already ended) writes its delivery in the same write, due at once; a job without one,
    and a second end, write none."""
    a, b = await backend.opened(), await backend.opened()
    ran, dropped, plain = record(callback="http://a/1"), record(callback="http://a/2"), record()
    inline = record(
        callback="http://a/3", state=JobState.SUCCEEDED, started_at=2.75, finished_at=2.75,
        attempts=1, result={"total": 0},
    )  # fmt: skip
    for job in (ran, dropped, plain, inline):
        await a.add(job)
    await a.start(ran.id, 1.0)
    await a.finish(ran, JobState.SUCCEEDED, 2.0, result=1, error=None)
    await a.finish(ran, JobState.FAILED, 3.0, error="again")
    assert await b.cancel(dropped.id, 2.5) is JobState.CANCELLED
    await a.start(plain.id, 1.0)
    await a.finish(plain, JobState.SUCCEEDED, 2.0, result=1, error=None)
    assert await a.take_deliveries(10, 1.5, 100.0) == []  # none was due before the ends
    taken = await a.take_deliveries(10, 3.0, 100.0)
    assert sorted((d.job_id, d.url, d.attempt, d.first_at) for d in taken) == sorted(
        [
            (ran.id, "http://a/1", 1, 2.0),
            (dropped.id, "http://a/2", 1, 2.5),
            (inline.id, "http://a/3", 1, 2.75),
        ]
    )
    got = await a.get(ran.id)
    assert got is not None
    assert got.delivery is not None
    assert (got.callback, got.delivery.state, got.delivery.attempts) == ("http://a/1", "pending", 1)
    plain_doc = await a.get(plain.id)
    assert plain_doc is not None
    assert plain_doc.delivery is None
    await a.close()
    await b.close()


async def test_a_taken_delivery_is_leased_and_settled_once(backend: Backend) -> None:
    """A taken delivery is not taken again before its lease ends; then it is, as the next
    attempt, and the outcome of the older attempt is refused. Settled pending it is due at
    its next time; delivered, never again."""
    a = await backend.opened()
    job = record(callback="http://a/1")
    await a.add(job)
    await a.start(job.id, 1.0)
    await a.finish(job, JobState.SUCCEEDED, 2.0, result=1, error=None)
    (first,) = await a.take_deliveries(5, 2.0, 10.0)
    assert await a.take_deliveries(5, 9.0, 20.0) == []
    (second,) = await a.take_deliveries(5, 10.0, 20.0)  # its lease ran out: a worker died
    assert (first.attempt, second.attempt) == (1, 2)
    assert not await a.settle_delivery(first, "delivered", 11.0, status=200)
    assert await a.settle_delivery(second, "pending", 11.0, next_at=15.0, status=500,
                                   error="HTTP 500")  # fmt: skip
    got = await a.get(job.id)
    assert got is not None
    assert got.delivery is not None
    assert (got.delivery.state, got.delivery.last_status, got.delivery.last_error) == (
        "pending", 500, "HTTP 500",
    )  # fmt: skip
    assert await a.take_deliveries(5, 14.0, 30.0) == []
    (third,) = await a.take_deliveries(5, 15.0, 30.0)
    assert await a.settle_delivery(third, "delivered", 16.0, status=204)
    assert await a.take_deliveries(5, 1000.0, 2000.0) == []
    got = await a.get(job.id)
    assert got is not None
    assert got.delivery is not None
    assert (got.delivery.state, got.delivery.attempts, got.delivery.delivered_at) == (
        "delivered", 3, 16.0,
    )  # fmt: skip
    await a.close()


async def test_a_delivery_given_up_is_sent_again_on_request(backend: Backend) -> None:
    """A failed delivery is kept; a re-send (through any worker) makes it due at once, its
    horizon from then; a job without a delivery cannot be re-sent."""
    a, b = await backend.opened(), await backend.opened()
    job, plain = record(callback="http://a/1"), record()
    for r in (job, plain):
        await a.add(r)
        await a.start(r.id, 1.0)
        await a.finish(r, JobState.FAILED, 2.0, error="boom")
    (taken,) = await a.take_deliveries(5, 2.0, 10.0)
    assert await a.settle_delivery(taken, "failed", 3.0, status=503, error="given up")
    assert await a.take_deliveries(5, 1000.0, 2000.0) == []
    assert await b.resend_delivery(job.id, 50.0)
    assert not await b.resend_delivery(plain.id, 50.0)
    (again,) = await a.take_deliveries(5, 50.0, 60.0)
    assert (again.job_id, again.attempt, again.first_at) == (job.id, 2, 50.0)
    await a.close()
    await b.close()


async def test_deliveries_go_with_their_expired_jobs(backend: Backend) -> None:
    """Purging a job past the TTL takes its pending delivery with it."""
    a = await backend.opened(ttl=100)
    job = record(id=new_id(lambda: 900.0), callback="http://a/1")
    await a.add(job)
    await a.finish(job, JobState.SUCCEEDED, 1000.0, result=1, error=None)
    for _ in range(13):  # SQLite drops them in every few purges (a scan)
        await a.purge(2000.0)
    assert await a.take_deliveries(5, 3000.0, 4000.0) == []
    await a.close()
