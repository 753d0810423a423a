"""The fleet store: every worker of every host shares one Redis.

Same interface and behaviour as the SQLite store, plus what a fleet needs: a job accepted
by one host is read, waited on and cancelled through any other; queued jobs wait in Redis
streams, and a worker with room takes the oldest (:meth:`RedisStore.claim`), so a busy host
does not sit on work an idle one could run; a running job holds a lease its worker renews,
and when a host dies its leases run out and the others put its jobs back in the queue.
The layout and each state change are in :mod:`service.jobs.redis.scripts`.

Why one pipeline per loop tick: the commands of all the requests a worker handles in one
event-loop tick go to Redis in one round trip, while the previous one is in flight the next
gathers. Each state change is one script, so a batch holds no half-done change.

Why the worker still claims a host-local slot (a ``flock``ed file in the state directory):
the slot shares out the host's cpu budget, and names this worker in Redis
(``host/host-id/slot``), so the worker that replaces a dead one finds what it left at once,
without waiting for its leases to run out.

Jobs in flight per client are counted here, by the scripts that change a job's state (see
:mod:`service.jobs.redis.scripts`), and :meth:`RedisStore.add` refuses a client's job over
``client_max_inflight`` (``JOBPOOL_CLIENT_MAX_INFLIGHT``) with :class:`TooManyJobs`: the
store is the one place that sees every host's jobs, and the check and the write are one
step. Every ``RECOUNT_S`` one worker of the fleet counts them again from the streams, so
a count that drifted (workers of an older version during a rolling upgrade) is made exact
again. Other modules may run scripts of their own through the same pipeline
(:meth:`RedisStore.define`, :meth:`RedisStore.script`): :mod:`service.clients.fleet` does.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import heapq
import logging
import os
import pickle
import socket
import time
from collections.abc import Callable, Mapping, Sequence
from contextlib import AbstractAsyncContextManager
from pathlib import Path
from typing import Any

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoScriptError, RedisError, ResponseError

from service.background import cancel_and_wait
from service.config import StoreUrl
from service.errors import Overloaded, StoreUnavailable, TooManyJobs
from service.ids import id_floor, id_time
from service.jobs.document import CancelHow
from service.jobs.record import (
    BatchProgress,
    CallbackStatus,
    Delivery,
    DeliveryState,
    FailedAttempt,
    IdempotencyKey,
    ItemRef,
    JobEnd,
    JobQuery,
    JobRecord,
    Progress,
    decode_attempts,
    decode_progress,
    encode_attempts,
    encode_progress,
)
from service.jobs.redis.packing import pack_in_c
from service.jobs.redis.scripts import PRELUDE, SCRIPTS
from service.jobs.registry import Pool
from service.jobs.slots import claim_slot, host_id
from service.jobs.state import JobState, is_final
from service.jobs.store import INTERRUPTED, KeyTaken, capped_result

log = logging.getLogger(__name__)

PREFIX = "jobpool:"
CONNECT_TIMEOUT_S = 2.0
COMMAND_TIMEOUT_S = 5.0
RECOVER_BATCH = 200  # entries looked at per XPENDING / XAUTOCLAIM round
PURGE_BATCH = 2000
STALE_CONSUMER_LEASES = 10  # a consumer with nothing pending, idle this many leases, is dropped
#: Least seconds between two recounts of the jobs in flight per client, fleet-wide. A
#: recount is one script over every job in flight: measured here, 80 ms for 20,000 (two
#: full queues at the default JOBPOOL_FLEET_QUEUE_MAX), under 1 ms for a few hundred.
RECOUNT_S = 300.0


#: What get() reads of a job's hash: all but its arguments, which only running needs.
RECORD_FIELDS = (
    b"name", b"owner", b"state", b"created", b"started", b"finished", b"attempts", b"error",
    b"items", b"done", b"failed", b"result", b"interrupted", b"not_before", b"interruptions",
    b"failed_attempts", b"cancel_requested_at", b"cancelled_how", b"progress", b"callback",
    b"traceparent", b"d_state", b"d_attempts", b"d_status", b"d_error", b"d_at",
)  # fmt: skip


def _dumps(value: Any) -> bytes:
    return pickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL)


def _num(value: float) -> str:
    return repr(float(value))


def _fields(flat: Sequence[bytes]) -> dict[bytes, bytes]:
    return dict(zip(flat[::2], flat[1::2], strict=True))


#: How add() asks for each state a new job may be stored in.
_WANT = {
    JobState.RUNNING: "1",
    JobState.QUEUED: "0",
    JobState.SCHEDULED: "s",
    JobState.SUCCEEDED: "f",
    JobState.FAILED: "f",
}


def _record(job_id: str, h: Mapping[bytes, bytes]) -> JobRecord:
    items = h.get(b"items")
    result = h.get(b"result")
    error = h.get(b"error")
    started, finished = h.get(b"started"), h.get(b"finished")
    not_before, stop_at, how = (
        h.get(b"not_before"),
        h.get(b"cancel_requested_at"),
        h.get(b"cancelled_how"),
    )
    return JobRecord(
        id=job_id,
        name=h[b"name"].decode(),
        owner=h[b"owner"].decode(),
        state=JobState(h[b"state"].decode()),
        created_at=float(h[b"created"]),
        started_at=None if started is None else float(started),
        finished_at=None if finished is None else float(finished),
        attempts=int(h.get(b"attempts", 0)),
        error=None if error is None else error.decode(),
        interrupted=h.get(b"interrupted") == b"1",
        args=pickle.loads(h[b"args"]) if b"args" in h else {},
        items=None if items is None else pickle.loads(items),
        done=int(h.get(b"done", 0)),
        failed=int(h.get(b"failed", 0)),
        result=None if result is None else pickle.loads(result),
        not_before=None if not_before is None else float(not_before),
        interruptions=int(h.get(b"interruptions", 0)),
        failed_attempts=decode_attempts(h.get(b"failed_attempts")),
        cancel_requested_at=None if stop_at is None else float(stop_at),
        cancelled_how=None if how is None else how.decode(),  # type: ignore[arg-type]
        progress=decode_progress(h.get(b"progress")),
        callback=_text(h.get(b"callback")),
        traceparent=_text(h.get(b"traceparent")),
        delivery=_delivery(h),
    )


def _text(value: bytes | None) -> str | None:
    return None if value is None else value.decode()


def _delivery(h: Mapping[bytes, bytes]) -> CallbackStatus | None:
    """How the job's callback goes: the ``d_*`` fields its end wrote (none before)."""
    state = h.get(b"d_state")
    if state is None:
        return None
    status, at = h.get(b"d_status"), h.get(b"d_at")
    return CallbackStatus(
        state=state.decode(),  # type: ignore[arg-type]  # only values the scripts write
        attempts=int(h.get(b"d_attempts", 0)),
        last_status=None if status is None else int(status),
        last_error=_text(h.get(b"d_error")),
        delivered_at=None if at is None else float(at),
    )


def _key_key(key: IdempotencyKey) -> str:
    """The Redis key of an idempotency key (it expires with it)."""
    return f"{PREFIX}idem:{key.name}"


def _owner_key(owner: str) -> str:
    """The listing index of ``owner``'s jobs (see the scripts' ``owner_key``)."""
    return f"{PREFIX}owner:{len(owner.encode())}:{owner}"


def item_key(name: str, owner: str, key: str) -> bytes:
    """The Redis key of one item result; lengths first, so no two triples share a key."""
    return _item_key(_items_prefix(name, owner), key)


def _items_prefix(name: str, owner: str) -> bytes:
    """What the keys of one job's items share (computed once per batch, not per item)."""
    n, o = name.encode(), owner.encode()
    return b"%sitem:%d:%s:%d:%s:" % (PREFIX.encode(), len(n), n, len(o), o)


def _item_key(prefix: bytes, key: str) -> bytes:
    k = key.encode()
    return b"%s%d:%s" % (prefix, len(k), k)


class _Script:
    def __init__(self, body: str) -> None:
        self.text = PRELUDE + body
        self.sha = hashlib.sha1(self.text.encode()).hexdigest()  # noqa: S324 - Redis's script id


class RedisStore:
    """The :class:`~service.jobs.store.Store` on a Redis server shared by a fleet."""

    shares_queue = True

    def __init__(
        self,
        url: StoreUrl,
        *,
        state_dir: Path,
        lane_of: Callable[[str], str],
        pools: Sequence[str],
        result_ttl_s: float,
        result_max: int,
        lease_s: float,
        queue_max: int,
        client_max_inflight: int = 0,
    ) -> None:
        self.url = url
        self.state_dir = state_dir
        self.lane_of = lane_of
        self.pools = tuple(pools)
        self.result_ttl_s = result_ttl_s
        self.result_max = result_max
        self.lease_s = lease_s
        self.queue_max = queue_max
        self.client_max_inflight = client_max_inflight
        self.slot = -1
        self.consumer = ""
        self._lock_fd: int | None = None
        self._client: aioredis.Redis | None = None
        self._scripts = {name: _Script(body) for name, body in SCRIPTS.items()}
        self._pending: list[tuple[tuple[Any, ...], asyncio.Future[Any]]] = []
        self._flusher: asyncio.Task[None] | None = None
        self._renewer: asyncio.Task[None] | None = None
        #: Lease entries of the jobs this worker runs, by job id.
        self._held: dict[str, bytes] = {}
        self._down = False

    # -- life cycle -------------------------------------------------------------------

    async def open(self) -> None:
        """Claim a slot; connect. Redis being down is not fatal: calls answer 503 until
        it is back, and readiness says so."""
        try:
            self.state_dir.mkdir(parents=True, exist_ok=True)
            self.slot, self._lock_fd = claim_slot(self.state_dir, "worker-{}.lock")
            host = host_id(self.state_dir)
        except OSError as ex:
            raise StoreUnavailable(f"cannot claim a worker slot in {self.state_dir}: {ex}") from ex
        self.consumer = f"{socket.gethostname()}/{host}/{self.slot}"
        self._client = aioredis.Redis.from_url(
            self.url.target,
            socket_connect_timeout=CONNECT_TIMEOUT_S,
            socket_timeout=COMMAND_TIMEOUT_S,
            # One retry on a fresh connection: pooled ones die when Redis restarts. Not on
            # timeouts: the command may have run.
            retry=Retry(NoBackoff(), 1, supported_errors=(RedisConnectionError,)),
            client_name=f"jobpool:{self.consumer}",
            protocol=2,
        )
        pack_in_c(self._client.connection_pool)
        try:
            await self.ping()
        except StoreUnavailable as ex:
            log.error("%s; submits answer 503 until it is back", ex.detail)
        else:
            log.info("job store %s, worker %s", self.url.redacted(), self.consumer)
        self._renewer = asyncio.create_task(self._renew_loop(), name="jobpool-leases")

    async def close(self) -> None:
        await cancel_and_wait(self._renewer)
        self._renewer = None
        if self._flusher is not None:
            with contextlib.suppress(Exception):
                await self._flusher
        if self._client is not None:
            await self._client.aclose()
            self._client = None
        if self._lock_fd is not None:
            os.close(self._lock_fd)  # the slot is free for the next worker
            self._lock_fd = None

    # -- one pipeline per tick --------------------------------------------------------

    def _call(self, *args: Any) -> asyncio.Future[Any]:
        if self._client is None:
            raise StoreUnavailable("the job store is closed")
        future = asyncio.get_running_loop().create_future()
        self._pending.append((args, future))
        if self._flusher is None:
            self._flusher = asyncio.create_task(self._flush())
        return future

    def _script(self, name: str, *args: Any) -> asyncio.Future[Any]:
        return self._call("EVALSHA", self._scripts[name].sha, 0, PREFIX, *args)

    def define(self, name: str, body: str) -> None:
        """Add the script ``body`` (written after :data:`PRELUDE`: ``ARGV[1]`` is the key
        prefix) under ``name``, for :meth:`script`; before :meth:`open`."""
        if name in self._scripts and self._scripts[name].text != PRELUDE + body:
            raise ValueError(f"another script is defined as {name!r}")
        self._scripts[name] = _Script(body)

    def script(self, name: str, *args: Any) -> asyncio.Future[Any]:
        """Run the script ``name`` with ``args`` after the prefix, in this tick's pipeline;
        the future fails with :class:`StoreUnavailable` when Redis cannot be reached."""
        return self._script(name, *args)

    async def _flush(self) -> None:
        try:
            while self._pending:
                ops, self._pending = self._pending, []
                await self._send(ops)
        finally:
            self._flusher = None

    async def _send(self, ops: list[tuple[tuple[Any, ...], asyncio.Future[Any]]]) -> None:
        try:
            results = await self._pipeline([args for args, _ in ops])
            missing = [i for i, r in enumerate(results) if isinstance(r, NoScriptError)]
            if missing:  # Redis restarted (or flushed its scripts): load them, run those again
                await self._load_scripts()
                again = await self._pipeline([ops[i][0] for i in missing])
                for i, result in zip(missing, again, strict=True):
                    results[i] = result
        except (RedisError, OSError) as ex:
            error = self._unavailable(ex)
            for _, future in ops:
                if not future.done():
                    future.set_exception(error)
            return
        self._is_up()
        for (args, future), result in zip(ops, results, strict=True):
            if future.done():
                continue
            if isinstance(result, ResponseError):
                log.error("Redis refused %s: %s", args[0], result)
                future.set_exception(StoreUnavailable(f"the job store refused a write: {result}"))
            else:
                future.set_result(result)

    async def _pipeline(self, commands: list[tuple[Any, ...]]) -> list[Any]:
        assert self._client is not None
        pipe = self._client.pipeline(transaction=False)
        for args in commands:
            pipe.execute_command(*args)
        results: list[Any] = await pipe.execute(raise_on_error=False)
        return results

    async def _load_scripts(self) -> None:
        assert self._client is not None
        for script in self._scripts.values():
            await self._client.script_load(script.text)

    def _unavailable(self, ex: BaseException) -> StoreUnavailable:
        detail = f"the job store (Redis at {self.url.redacted()}) is unreachable: {ex}"
        if not self._down:
            self._down = True
            log.error("%s", detail)
        return StoreUnavailable(detail)

    def _is_up(self) -> None:
        if self._down:
            self._down = False
            log.warning("the job store (Redis at %s) is reachable again", self.url.redacted())

    # -- the Store interface ----------------------------------------------------------

    def hold_key(self, key: IdempotencyKey) -> AbstractAsyncContextManager[None]:
        # Nothing to hold: the add script checks the key and stores it in one step.
        return contextlib.nullcontext()

    async def find_key(self, key: IdempotencyKey, now: float) -> tuple[str, bytes] | None:
        job_id, fingerprint = await self._call("HMGET", _key_key(key), "job", "fingerprint")
        return None if job_id is None else (job_id.decode(), fingerprint)

    async def add(
        self,
        record: JobRecord,
        *,
        key: IdempotencyKey | None = None,
        items: BatchProgress | None = None,
    ) -> JobState:
        fields: list[Any] = [
            "name", record.name, "owner", record.owner,
            "created", _num(record.created_at), "args", _dumps(record.args),
        ]  # fmt: skip
        if record.items is not None:
            fields += ["items", _dumps(record.items)]
        if record.callback is not None:
            fields += ["callback", record.callback]
        if record.traceparent is not None:
            fields += ["traceparent", record.traceparent]
        want = _WANT[record.state]
        when = record.not_before if record.state is JobState.SCHEDULED else record.started_at
        if is_final(record.state):  # an inline batch, stored ended: its result with it
            blob, _, _ = capped_result(
                record.result, record.state, record.error, limit=self.result_max
            )
            fields += [
                "state", record.state.value, "started", _num(record.created_at),
                "done", record.done, "failed", record.failed,
            ]  # fmt: skip
            fields += [] if blob is None else ["result", blob]
            fields += [] if record.error is None else ["error", record.error]
            when = record.finished_at
        idem: list[Any] = ["", "", 0]
        if key is not None:
            ttl_ms = max(1, int((key.expires_at - time.time()) * 1000))
            idem = [_key_key(key), key.fingerprint, ttl_ms]
        state, entry, *taken = await self._script(
            "add", record.id, self.lane_of(record.name), want, self.queue_max, self.consumer,
            _num(when or record.created_at), record.owner, self.client_max_inflight, *idem,
            self._items_expire(record), *self._items(record, items), *fields,
        )  # fmt: skip
        if state == b"taken":
            raise KeyTaken(entry.decode(), taken[0])
        if state == b"client_limit":
            raise TooManyJobs(
                f"{self.client_max_inflight} jobs of this client are queued or running in the"
                " fleet (JOBPOOL_CLIENT_MAX_INFLIGHT); retry when some have finished",
                retry_after_s=1,
            )
        if state == b"full":
            pool = self.lane_of(record.name)
            raise Overloaded(
                f"the fleet's {pool} queue is full ({int(entry)} jobs waiting;"
                f" JOBPOOL_FLEET_QUEUE_MAX is {self.queue_max})",
                retry_after_s=1,
            )
        stored = JobState(state.decode())
        if stored is JobState.RUNNING:
            self._held[record.id] = entry
        return stored

    async def start(self, job_id: str, now: float) -> bool:
        entry = await self._script("start", job_id, self.consumer, _num(now))
        if entry is None:
            return False
        self._held[job_id] = entry
        return True

    async def claim(self, room: Mapping[Pool, int], now: float) -> list[JobRecord]:
        args: list[Any] = []
        for pool, count in room.items():
            args += [pool, count]
        _left, started = await self._script("claim", self.consumer, _num(now), *args)
        records = []
        for job_id, flat in started:
            h = _fields(flat)
            record = _record(job_id.decode(), h)
            self._held[record.id] = h[b"entry"]
            records.append(record)
        return records

    async def progress(self, record: JobRecord, progress: BatchProgress) -> None:
        await self._script(
            "progress", record.id, progress.done, progress.failed, self._items_expire(record),
            *self._items(record, progress),
        )  # fmt: skip

    async def finish(
        self,
        record: JobRecord,
        state: JobState,
        now: float,
        *,
        result: Any = None,
        error: str | None,
        progress: BatchProgress | None = None,
        how: CancelHow | None = None,
        reported: Progress | None = None,
    ) -> None:
        blob, state, error = capped_result(result, state, error, limit=self.result_max)
        put: list[Any] = []
        gone: list[str] = []
        for name, value in (("error", error), ("result", blob)):
            if value is None:
                gone.append(name)
            else:
                put += [name, value]
        if progress is not None:
            put += ["done", progress.done, "failed", progress.failed]
        if how is not None and state is JobState.CANCELLED:
            put += ["cancelled_how", how]
        if reported is not None:
            put += ["progress", encode_progress(reported)]
        try:
            await self._script(
                "finish", record.id, state.value, _num(now), self._items_expire(record),
                *self._items(record, progress), len(put) // 2, *put, len(gone), *gone,
            )  # fmt: skip
        finally:
            # Written or not, this worker is done with it: if the write failed, the lease
            # runs out and the job runs again elsewhere.
            self._held.pop(record.id, None)

    async def finish_many(self, ends: Sequence[JobEnd], now: float) -> None:
        # Each end is its own script call; the calls of one tick go out in one pipeline.
        calls = [
            self.finish(
                e.record,
                e.state,
                now,
                result=e.result,
                error=e.error,
                progress=e.progress,
                how=e.how,
                reported=e.reported,
            )
            for e in ends
        ]
        outcomes = await asyncio.gather(*calls, return_exceptions=True)
        for outcome in outcomes:
            if isinstance(outcome, BaseException):
                raise outcome

    def _items_expire(self, record: JobRecord) -> int:
        """When the item results of ``record`` expire (Unix ms): the TTL after its id's time."""
        return int(id_time(record.id) * 1000 + self.result_ttl_s * 1000)

    def _items(self, record: JobRecord, progress: BatchProgress | None) -> list[Any]:
        keyed = progress.keyed if progress else []
        out: list[Any] = [len(keyed)]
        if keyed:
            prefix = _items_prefix(record.name, record.owner)
            for key, value in keyed:
                if type(value) is ItemRef:  # the job's own item: Redis keeps a copy per key
                    assert record.items is not None
                    value = record.items[value.index]
                out += [_item_key(prefix, key), _dumps(value)]
        return out

    async def due(self, job_id: str) -> bool:
        return False  # due jobs move to the shared queue by themselves (claim, promote)

    async def retry(
        self, record: JobRecord, *, not_before: float, error: str, attempt: FailedAttempt
    ) -> bool:
        attempts = encode_attempts((*record.failed_attempts, attempt))
        try:
            moved = await self._script(
                "retry", record.id, self.consumer, _num(not_before), error, attempts or b""
            )
        finally:
            self._held.pop(record.id, None)
        return bool(moved)

    async def promote(self, now: float) -> int:
        """Move the scheduled jobs whose time has come to their queues."""
        moved: int = await self._script("promote", _num(now))
        return moved

    async def report(self, job_id: str, progress: Progress) -> None:
        await self._script("report", job_id, encode_progress(progress) or b"")

    async def stop_requests(self) -> list[str]:
        members = await self._call("SMEMBERS", PREFIX + "stops")
        return [m.decode() for m in members]

    async def requeue(self, job_id: str, *, error: str | None) -> None:
        try:
            await self._script("requeue", job_id, self.consumer, error or "")
        finally:
            self._held.pop(job_id, None)

    async def cancel(self, job_id: str, now: float) -> JobState | None:
        state = await self._script("cancel", job_id, _num(now))
        return None if state is None else JobState(state.decode())

    async def inflight(self, owner: str) -> int:
        """Jobs of ``owner`` queued or running in the fleet, as the scripts count them."""
        count = await self._call("HGET", PREFIX + "inflight", owner)
        return 0 if count is None else int(count)

    async def get(self, job_id: str) -> JobRecord | None:
        values = await self._call("HMGET", PREFIX + "job:" + job_id, *RECORD_FIELDS)
        if values[0] is None:
            return None
        fields = zip(RECORD_FIELDS, values, strict=True)
        return _record(job_id, {f: v for f, v in fields if v is not None})

    async def arguments(self, job_id: str) -> dict[str, Any] | None:
        blob = await self._call("HGET", PREFIX + "job:" + job_id, "args")
        if blob is None:
            return None
        args: dict[str, Any] = pickle.loads(blob)
        return args

    async def list_jobs(self, query: JobQuery) -> list[JobRecord]:
        lo = "-" if query.id_from is None else "[" + query.id_from
        hi = "+" if query.id_below is None else "(" + query.id_below
        name = query.name or ""
        states = sorted(s.value for s in query.states)
        if query.owner is None:
            searches = [(PREFIX + "jobs", ",".join(states))]
        elif states and JobState.SUCCEEDED.value not in states:
            # Each state its own index: nothing to skip but other names.
            owner = _owner_key(query.owner)
            searches = [(f"{owner}:state:{state}", "") for state in states]
        else:
            searches = [(_owner_key(query.owner), ",".join(states))]
        found = await asyncio.gather(*(
            self._script("list", key, lo, hi, query.limit, wanted, name)
            for key, wanted in searches
        ))  # fmt: skip
        ids = heapq.nlargest(query.limit, {i.decode() for page in found for i in page})
        records = await asyncio.gather(*(self.get(job_id) for job_id in ids))
        return [r for r in records if r is not None]

    async def get_item(self, name: str, owner: str, key: str) -> Any | None:
        job_id, value = await self._call("HMGET", item_key(name, owner, key), "job", "value")
        if job_id is None or job_id.decode() < id_floor(time.time() - self.result_ttl_s):
            return None  # expired, whether or not purge has deleted it yet
        return pickle.loads(value)

    async def unfinished(self) -> list[JobRecord]:
        """Jobs the previous holder of this worker's name left running go back to the
        queue (any worker with room takes them); none are returned to run here directly."""
        try:
            while True:
                moved, seen = await self._script(
                    "recover_mine", self.consumer, INTERRUPTED, RECOVER_BATCH
                )
                if moved:
                    log.warning("put %d jobs left running by %s back in the queue",
                                moved, self.consumer)  # fmt: skip
                if seen < RECOVER_BATCH:
                    break
        except StoreUnavailable as ex:
            # Not fatal: their leases run out, and whichever worker looks first requeues them.
            log.error("recovery at start-up postponed: %s", ex.detail)
        return []

    async def adopt_orphans(self) -> list[JobRecord]:
        """Jobs whose lease ran out (their host is gone) go back to the queue; so do
        scheduled jobs whose time has come, should no worker have claimed lately."""
        await self.promote(time.time())
        moved = await self._script(
            "recover_idle", self.consumer, INTERRUPTED, int(self.lease_s * 1000), RECOVER_BATCH,
            int(self.lease_s * 1000 * STALE_CONSUMER_LEASES), *self.pools,
        )  # fmt: skip
        if moved:
            log.warning("put %d jobs of workers that stopped renewing back in the queue", moved)
        return []

    async def purge(self, now: float) -> int:
        """Delete finished jobs past the TTL; at most once per RECOUNT_S in the fleet, count
        the jobs in flight per client again (:meth:`recount`)."""
        purged: int = await self._script("purge", _num(now - self.result_ttl_s), PURGE_BATCH)
        await self.recount()
        return purged

    async def recount(self, *, every_s: float = RECOUNT_S) -> int:
        """Count each client's jobs in flight again from the streams, unless a worker did
        within ``every_s``; return how many jobs were counted (-1: skipped)."""
        counted: int = await self._script("recount", max(1, int(every_s * 1000)), *self.pools)
        if counted >= 0:
            log.debug("recounted %d jobs in flight", counted)
        return counted

    # -- the callbacks' outbox: any worker of the fleet delivers any -------------------

    async def take_deliveries(self, n: int, now: float, lease_until: float) -> list[Delivery]:
        taken = await self._script("take_deliveries", _num(now), _num(lease_until), n)
        return [
            Delivery(
                job_id=job_id.decode(),
                owner=owner.decode(),
                url=url.decode(),
                attempt=int(attempt),
                first_at=float(first),
                traceparent=trace.decode() or None,
            )
            for job_id, owner, url, attempt, first, trace in taken
        ]

    async def settle_delivery(
        self,
        delivery: Delivery,
        state: DeliveryState,
        now: float,
        *,
        next_at: float | None = None,
        status: int | None = None,
        error: str | None = None,
    ) -> bool:
        settled = await self._script(
            "settle_delivery", delivery.job_id, delivery.attempt, state,
            "" if next_at is None else _num(next_at), "" if status is None else status,
            error or "", _num(now),
        )  # fmt: skip
        return bool(settled)

    async def resend_delivery(self, job_id: str, now: float) -> bool:
        return bool(await self._script("resend_delivery", job_id, _num(now)))

    async def ping(self) -> None:
        if self._client is None:
            raise StoreUnavailable("the job store is closed")
        try:
            await self._client.ping()
        except (RedisError, OSError) as ex:
            raise self._unavailable(ex) from ex
        self._is_up()

    # -- leases -----------------------------------------------------------------------

    async def _renew_loop(self) -> None:
        while True:
            await asyncio.sleep(self.lease_s / 3)
            if not self._held:
                continue
            held = dict(self._held)
            try:
                lost = await self._script("renew", self.consumer, *held.values())
            except StoreUnavailable:
                continue  # logged once by _unavailable; try again next round
            if lost:
                gone = set(lost)
                for job_id, entry in held.items():
                    # A job that ended meanwhile acknowledged its own entry: not a loss.
                    if entry in gone and self._held.get(job_id) == entry:
                        self._held.pop(job_id, None)
                        log.warning("job %s: its lease was taken over; it may run twice", job_id)
