"""The Redis store's connections pack commands in C: the same bytes as redis-py's own."""

from __future__ import annotations

import pytest
from redis.asyncio.connection import Connection

from service.jobs.redis.packing import pack_in_c


class _Pool:
    connection_class = Connection


@pytest.mark.parametrize(
    "args",
    [
        ("EVALSHA", "a" * 40, 0, "jobpool:", b"\x80\x05pickled", 1.5, 1e20, -7, ""),
        ("SCRIPT LOAD", "return 1"),
        ("CLIENT SETNAME", "jobpool:host/abc/0"),
        (b"XINFO CONSUMERS", b"jobpool:running", "jobpool"),
        ("HSET", "k", "f", "é, not ASCII"),
    ],
)
def test_packed_in_c_are_the_bytes_redis_py_would_send(args: tuple[object, ...]) -> None:
    """Every kind of argument, and command names of two words, pack as redis-py packs them."""
    pool = _Pool()
    pack_in_c(pool)
    assert pool.connection_class is not Connection
    assert issubclass(pool.connection_class, Connection)
    ours = b"".join(pool.connection_class().pack_command(*args))
    theirs = b"".join(Connection().pack_command(*args))
    assert ours == theirs


def test_packing_is_wrapped_once() -> None:
    """A pool given to pack_in_c twice keeps one C-packing class."""
    pool = _Pool()
    pack_in_c(pool)
    first = pool.connection_class
    pack_in_c(pool)
    assert pool.connection_class is first
