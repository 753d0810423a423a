"""What only the SQLite store does: orphan shards, a write the file refuses.

The behaviour both stores share is tested on both in test_store.py.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from service.errors import StoreUnavailable
from service.ids import new_id
from service.jobs.record import JobRecord
from service.jobs.sqlite_store import SqliteStore
from service.jobs.state import JobState


def record(name: str = "test.echo", **kw: object) -> JobRecord:
    base: dict[str, object] = {
        "id": new_id(),
        "name": name,
        "owner": "alice",
        "state": JobState.QUEUED,
        "created_at": 1000.0,
        "args": {"x": 1},
    }
    base.update(kw)
    return JobRecord(**base)  # type: ignore[arg-type]


def store(path: Path, ttl: float = 60, result_max: int = 1 << 20) -> SqliteStore:
    return SqliteStore(path, result_ttl_s=ttl, result_max=result_max)


async def test_orphan_shards_are_adopted_once(tmp_path: Path) -> None:
    """Unfinished jobs of a shard nobody holds move to a live shard, exactly once."""
    a, b = store(tmp_path), store(tmp_path)
    await a.open()
    await b.open()
    jobs = [record() for _ in range(3)]
    for job in jobs:
        await b.add(job)
    await b.start(jobs[0].id, 1.0)
    assert await a.adopt_orphans() == []  # b is alive: nothing to take
    await b.close()
    adopted = await a.adopt_orphans()
    assert sorted(r.id for r in adopted) == sorted(j.id for j in jobs)
    assert all(r.state is JobState.QUEUED for r in adopted)
    assert await a.adopt_orphans() == []
    assert {r.id for r in await a.unfinished()} == {j.id for j in jobs}
    await a.close()


async def test_a_failed_write_is_never_acknowledged(tmp_path: Path) -> None:
    """When the database refuses a write, add() raises StoreUnavailable instead of returning."""
    a = store(tmp_path)
    await a.open()
    assert a._conn is not None
    a._conn.execute("PRAGMA query_only = ON")  # the file refuses writes, as a full disk would
    with pytest.raises(StoreUnavailable, match="cannot write"):
        await a.add(record())
    a._conn.execute("PRAGMA query_only = OFF")
    await a.add(record())
    await a.close()
