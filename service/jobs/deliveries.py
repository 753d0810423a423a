"""Completion callbacks: the deliverer that empties the outbox.

The store writes a job's delivery in the write that ends it (see :class:`~service.jobs.store.
Store`); here a worker takes due deliveries, POSTs each job's document on the io pool's
reserved threads (at most ``concurrency`` at once: jobs keep their threads), records the
outcome: delivered on a 2xx; else pending again after an exponential backoff with full
jitter (at least the receiver's ``Retry-After`` on a 429 or 503), until the horizon after
the job's end, past which it is kept as failed (``POST /v1/jobs/{id}/callback`` re-sends).
A taken delivery is leased: a worker that dies mid-POST leaves it due again once the lease
runs out, for itself after a restart or for any worker of the fleet. At least once: a
receiver dedupes on ``webhook-id`` (the job's id, the same on every attempt).

How a POST is made (signed, behind the SSRF guard) is not the layer's business: a
:class:`Sender` is given.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import msgspec

from service.background import cancel_and_wait
from service.errors import Invalid, StoreUnavailable
from service.jobs.io_pool import IoPool
from service.jobs.record import Delivery
from service.jobs.retry import Backoff
from service.jobs.store import Store

log = logging.getLogger(__name__)

#: How often a worker looks for due deliveries (seconds): a read of an index, nearly empty.
POLL_S = 0.25
#: After the store failed, the pause before looking again (seconds).
RETRY_STORE_S = 1.0
#: A lease outlasts the POST's own timeout by this much (seconds).
LEASE_MARGIN_S = 5.0
#: Seconds a shutdown waits for the POSTs in flight (the rest are leased, sent again later).
STOP_WAIT_S = 2.0
#: The first retry waits up to this long; each next one up to twice the last.
BACKOFF_BASE_S = 1.0


@dataclass(frozen=True, slots=True)
class Answer:
    """What one POST came to: the receiver's status (None: no answer), why it failed, its
    ``Retry-After`` in seconds, and whether no retry can mend it (the guard refused the URL)."""

    status: int | None = None
    error: str | None = None
    retry_after_s: float | None = None
    final: bool = False

    @property
    def delivered(self) -> bool:
        return self.status is not None and 200 <= self.status < 300


class Sender(Protocol):
    """POSTs a job's document to its callback URL (blocking: it runs on an io thread)."""

    def signs_for(self, owner: str) -> bool:
        """Whether ``owner`` has a secret to sign its callbacks with."""

    def __call__(self, delivery: Delivery, body: bytes) -> Answer: ...


@dataclass(frozen=True)
class CallbackPolicy:
    """How a worker delivers callbacks (the JOBPOOL_CALLBACK_* settings)."""

    sender: Sender
    concurrency: int
    horizon_s: float
    retry_max_s: float
    timeout_s: float


class Deliveries:
    """Takes due deliveries from the store and sends them, within ``policy``."""

    def __init__(
        self,
        store: Store,
        io: IoPool,
        policy: CallbackPolicy,
        *,
        clock: Callable[[], float],
        rand: Callable[[], float] = random.random,
        poll_s: float = POLL_S,
    ) -> None:
        self.store = store
        self.io = io
        self.policy = policy
        self.clock = clock
        self.rand = rand
        self.poll_s = poll_s
        self.backoff = Backoff(base_s=BACKOFF_BASE_S, factor=2.0, max_s=policy.retry_max_s)
        self.lease_s = policy.timeout_s + LEASE_MARGIN_S
        self._loop_task: asyncio.Task[None] | None = None
        self._sending: set[asyncio.Task[None]] = set()

    def check(self, owner: str) -> None:
        """Refuse a callback that could not be signed (422 at submit)."""
        if not self.policy.sender.signs_for(owner):
            raise Invalid(
                f"client {owner!r} has no callback secret to sign with"
                " (JOBPOOL_CALLBACK_SECRETS_FILE); ask the operator for one"
            )

    async def start(self) -> None:
        self._loop_task = asyncio.create_task(self._run(), name="jobpool-callbacks")

    async def stop(self) -> None:
        await cancel_and_wait(self._loop_task)
        self._loop_task = None
        if self._sending:  # the others stay leased: sent again once their lease runs out
            await asyncio.wait(list(self._sending), timeout=STOP_WAIT_S)

    async def _run(self) -> None:
        pause = self.poll_s
        while True:
            await asyncio.sleep(pause)
            pause = self.poll_s
            room = self.policy.concurrency - len(self._sending)
            if room <= 0:
                continue
            now = self.clock()
            try:
                taken = await self.store.take_deliveries(room, now, now + self.lease_s)
            except StoreUnavailable as ex:
                log.error("callbacks: %s", ex.detail)
                pause = RETRY_STORE_S
                continue
            except Exception:
                log.exception("taking callbacks from the store failed")
                pause = RETRY_STORE_S
                continue
            for delivery in taken:
                task = asyncio.create_task(self._deliver(delivery))
                self._sending.add(task)
                task.add_done_callback(self._sending.discard)

    async def _deliver(self, delivery: Delivery) -> None:
        try:
            record = await self.store.get(delivery.job_id)
            if record is None:  # purged (its results expired) before it could be sent
                await self._settle(delivery, Answer(error="the job has expired", final=True))
                return
            # The document as the job ended, the same on every attempt: not its callback's
            # own state, which changes as this goes.
            body = msgspec.json.encode(record.replace(callback=None, delivery=None).document())
            try:
                answer: Answer = await asyncio.wait_for(
                    self.io.submit_reserved(self.policy.sender, delivery, body), self.lease_s
                )
            except TimeoutError:
                answer = Answer(error=f"no answer within {self.lease_s:g} s")
            await self._settle(delivery, answer)
        except StoreUnavailable as ex:  # its lease runs out: it is sent again
            log.error("callback of job %s: %s", delivery.job_id, ex.detail)
        except Exception:
            log.exception("callback of job %s failed", delivery.job_id)

    async def _settle(self, delivery: Delivery, answer: Answer) -> None:
        now = self.clock()
        status, error = answer.status, answer.error
        if answer.delivered:
            await self.store.settle_delivery(delivery, "delivered", now, status=status)
            return
        if error is None:
            error = f"the receiver answered HTTP {status}"
        delay = self.backoff.delay(delivery.attempt, self.rand)
        if answer.retry_after_s is not None:
            delay = max(delay, answer.retry_after_s)
        next_at = now + delay
        if answer.final or next_at > delivery.first_at + self.policy.horizon_s:
            if not answer.final:
                error = (
                    f"given up after {delivery.attempt} attempts over"
                    f" {now - delivery.first_at:.0f} s (JOBPOOL_CALLBACK_HORIZON_S); last: {error}"
                )
            await self.store.settle_delivery(delivery, "failed", now, status=status, error=error)
            log.warning("callback of job %s failed: %s", delivery.job_id, error,
                        extra={"job_id": delivery.job_id})  # fmt: skip
            return
        await self.store.settle_delivery(
            delivery, "pending", now, next_at=next_at, status=status, error=error
        )
        log.info("callback of job %s, attempt %d: %s; again in %.1f s", delivery.job_id,
                 delivery.attempt, error, delay, extra={"job_id": delivery.job_id})  # fmt: skip
