"""The janitor: what one worker does now and then, apart from requests.

Every ``interval_s``: write again the job ends the store refused, delete finished jobs past
their TTL, and take over the unfinished jobs of workers that are gone (SQLite: a dead
worker's shard nobody claimed; Redis: jobs whose lease ran out go back to the queue).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from service.errors import StoreUnavailable
from service.jobs.record import JobRecord
from service.jobs.store import Store
from service.jobs.unwritten import UnwrittenEnds

log = logging.getLogger(__name__)


async def janitor(
    store: Store,
    unwritten: UnwrittenEnds,
    *,
    interval_s: float,
    clock: Callable[[], float],
    adopt: Callable[[list[JobRecord]], None],
) -> None:
    """Run until cancelled; ``adopt(records)`` is given the jobs this worker took over."""
    while True:
        await asyncio.sleep(interval_s)
        try:
            await unwritten.write(store)
            await store.purge(clock())
            adopt(await store.adopt_orphans())
        except StoreUnavailable as ex:
            log.error("janitor: %s", ex.detail)
        except Exception:
            log.exception("janitor failed")
