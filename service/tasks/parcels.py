"""Parcels: the seed's batch of ``{"id", "time", "data"}`` items, one io task per item.

:class:`Batch` and :class:`Parcel` declare the request once: the route decodes a body into
them in one pass (msgspec, in C), and ``/openapi.json`` derives its schemas from them. Only
a body that does not fit is walked again by :func:`parse_batch`, which lists every problem
by JSON pointer.

Without a simulated storage latency (``JOBPOOL_PARCEL_LATENCY_MS``) the items run on the
event loop as the batch is accepted, and the job is stored already ended
(:func:`without_latency`, the registry's ``inline_when``).
"""

from __future__ import annotations

import logging
import random
import time
from typing import Annotated, Any

import msgspec

from service.errors import Invalid
from service.jobs.registry import job
from service.rfc3339 import DESCRIPTION as RFC3339_RULE
from service.rfc3339 import SHAPE as RFC3339_SHAPE
from service.rfc3339 import is_rfc3339, needs_second_look

log = logging.getLogger(__name__)

MAX_REPORTED_ERRORS = 20


class Parcel(msgspec.Struct, forbid_unknown_fields=True):
    """One item of a batch, stored and read back exactly as sent."""

    id: Annotated[str, msgspec.Meta(min_length=1)]
    # The shape is checked in C as the body is decoded; the rare time that needs more (a
    # day past the 28th, a leap second) is looked at again by batch_items.
    time: Annotated[
        str,
        msgspec.Meta(
            pattern=RFC3339_SHAPE,
            description=RFC3339_RULE,
            extra_json_schema={"format": "date-time"},
        ),
    ]
    data: str


class Batch(msgspec.Struct):
    """The seed's batch: one io task per item."""

    data: Annotated[list[Parcel], msgspec.Meta(min_length=1)] = msgspec.field(name="Data")


FIELDS = frozenset(Parcel.__struct_fields__)


def batch_items(batch: Batch, *, max_items: int) -> list[dict[str, str]] | None:
    """The items of a decoded batch as the store keeps them, if there are not too many;
    None when a time that fits the shape is still no RFC 3339 date-time (the detailed walk
    says why)."""
    _check_count(len(batch.data), max_items)
    for parcel in batch.data:
        if needs_second_look(parcel.time) and not is_rfc3339(parcel.time):
            return None
    items: list[dict[str, str]] = msgspec.to_builtins(batch.data)
    return items


def _check_count(count: int, max_items: int) -> None:
    if count > max_items:
        raise Invalid(
            f'"Data" has {count} items; at most {max_items} are allowed (JOBPOOL_BATCH_MAX)'
        )


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
    _check_count(len(data), max_items)
    problems: list[dict[str, str]] = []
    for i, item in enumerate(data):
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


def without_latency(options: dict[str, Any]) -> bool:
    """A parcel is stored with its job: without a simulated storage latency
    (``JOBPOOL_PARCEL_LATENCY_MS``) its task is its item, and runs inline."""
    return not options.get("latency_ms")


@job("parcel", pool="io", timeout=30, item_key=parcel_key, inline_when=without_latency)
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
