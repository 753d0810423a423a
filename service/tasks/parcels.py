"""Parcels: the seed's batch of ``{"id", "time", "data"}`` items, one io task per item."""

from __future__ import annotations

import logging
import random
import time
from typing import Any

from service.errors import Invalid
from service.jobs.registry import job
from service.rfc3339 import is_rfc3339

log = logging.getLogger(__name__)

MAX_REPORTED_ERRORS = 20
FIELDS = frozenset({"id", "time", "data"})


def parse_batch(body: Any, *, max_items: int) -> list[dict[str, str]]:
    """The items of a batch body, each checked; :class:`Invalid` lists what is wrong."""
    if not isinstance(body, dict) or "Data" not in body:
        raise Invalid('the body must be an object with a "Data" array')
    data = body["Data"]
    if not isinstance(data, list):
        raise Invalid(
            '"Data" must be an array', errors=[{"pointer": "/Data", "detail": "not an array"}]
        )
    if not data:
        raise Invalid('"Data" is empty: a batch has at least one item')
    if len(data) > max_items:
        raise Invalid(
            f'"Data" has {len(data)} items; at most {max_items} are allowed (JOBPOOL_BATCH_MAX)'
        )
    problems: list[dict[str, str]] = []
    for i, item in enumerate(data):
        # The common case in few steps: an object of exactly the three fields, all good.
        if type(item) is dict and len(item) == 3:
            pid, when, payload = item.get("id"), item.get("time"), item.get("data")
            if (
                type(pid) is str and pid and type(payload) is str
                and type(when) is str and is_rfc3339(when)
            ):  # fmt: skip
                continue
        problems.extend(_item_problems(i, item))
        if len(problems) >= MAX_REPORTED_ERRORS:
            break
    if problems:
        first = problems[0]
        raise Invalid(
            f"{len(problems)} problem(s) in the batch; first: {first['pointer']}: "
            f"{first['detail']}",
            errors=problems,
        )
    return data


def _item_problems(i: int, item: Any) -> list[dict[str, str]]:
    """What is wrong with item ``i`` (nothing, for a good one)."""
    where = f"/Data/{i}"
    if not isinstance(item, dict):
        return [{"pointer": where, "detail": "not an object"}]
    problems = []
    pid, when, payload = item.get("id"), item.get("time"), item.get("data")
    if not isinstance(pid, str) or not pid:
        problems.append({"pointer": f"{where}/id", "detail": "must be a non-empty string"})
    if not isinstance(when, str) or not is_rfc3339(when):
        problems.append(
            {"pointer": f"{where}/time", "detail": f"{when!r} is not an RFC 3339 date-time"}
        )
    if not isinstance(payload, str):
        problems.append({"pointer": f"{where}/data", "detail": "must be a string"})
    extra = item.keys() - FIELDS
    if extra:
        problems.append({"pointer": where, "detail": f"unknown fields {sorted(extra)}"})
    return problems


def parcel_key(item: dict[str, str]) -> str:
    return item["id"]


@job("parcel", pool="io", timeout=30, item_key=parcel_key)
def store_parcel(item: dict[str, str], *, latency_ms: list[int] | None = None) -> dict[str, str]:
    """Store one parcel. Its own ``item`` comes in as an argument, never a shared variable:
    the seed's loop-pointer bug has no twin here."""
    started = time.perf_counter()
    if latency_ms:
        time.sleep(random.uniform(latency_ms[0], latency_ms[1]) / 1000)
    if log.isEnabledFor(logging.DEBUG):
        log.debug(
            "Task: Completed for Parcel %s (%.1fms)",
            item["id"],
            (time.perf_counter() - started) * 1000,
        )
    return item
