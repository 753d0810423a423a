"""Redis commands packed in C.

redis-py's asyncio connection packs each command into the wire format in Python, argument
by argument: on the fleet store's submit path (one script call of ~50 arguments per batch)
that was ~9% of a worker's CPU, measured with py-spy under ``bench.ingest --redis``.
hiredis (the ``fleet`` extra; redis-py already parses replies with it) packs the same bytes
in C, about ten times faster. Without hiredis the connection packs as before.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

_pack: Callable[[tuple[Any, ...]], bytes] | None
try:
    from hiredis import pack_command as _pack
except ImportError:  # pragma: no cover - the fleet extra installs it
    _pack = None


class _PackedInC:
    """Mixed into a redis-py connection class: its ``pack_command`` done by hiredis."""

    def pack_command(self, *args: Any) -> list[bytes]:
        assert _pack is not None
        name = args[0]
        # "SCRIPT LOAD", "CLIENT SETNAME": Redis wants each word as an argument of its own.
        if isinstance(name, (str, bytes)) and len(words := name.split()) > 1:
            args = (*words, *args[1:])
        return [_pack(args)]


def pack_in_c(pool: Any) -> None:
    """Make the connections ``pool`` opens from now on pack their commands in C (a
    subclass of the pool's own connection class: TCP, TLS or Unix socket alike)."""
    if _pack is None:
        return
    kind = pool.connection_class
    if not issubclass(kind, _PackedInC):
        pool.connection_class = type(f"PackedInC{kind.__name__}", (_PackedInC, kind), {})
