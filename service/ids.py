"""Job ids: 128 bits, time-ordered (48-bit milliseconds) then 80 random bits, base32."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable

ALPHABET = "0123456789abcdefghjkmnpqrstvwxyz"  # Crockford's base32, lower case
ID_LENGTH = 26  # ceil(128 / 5)
#: An id as a regular expression (JSON Schema's dialect too): what :func:`is_valid` checks.
PATTERN = "^[0-7][0-9a-hjkmnp-tv-z]{25}$"
RANDOM_BITS = 80
ID_TIME_CHARS = 10  # the first 10 characters hold the 48-bit millisecond time (50 bits)
# 80 random bits are exactly the last 16 digits: they are drawn as digits, a byte each.
_RANDOM_CHARS = RANDOM_BITS // 5
_DIGIT_OF_BYTE = bytes.maketrans(
    bytes(range(256)), bytes(ord(ALPHABET[b % 32]) for b in range(256))
)


def _digits(value: int, count: int) -> str:
    chars = []
    for _ in range(count):
        value, digit = divmod(value, 32)
        chars.append(ALPHABET[digit])
    return "".join(reversed(chars))


class _Ids:
    """Makes ids. Random digits come from OS random bytes read a page at a time (one
    getrandom call per 256 ids, not one per id; 256 is a multiple of 32, so each byte gives
    a uniform digit), and the time digits are reused within a millisecond. Thread-safe; a
    forked child starts with none of its parent's bytes."""

    PAGE = 4096

    def __init__(self) -> None:
        self._reset()
        os.register_at_fork(after_in_child=self._reset)

    def _reset(self) -> None:
        self._lock = threading.Lock()
        self._random = b""
        self._at = 0
        self._ms = -1
        self._time_digits = ""

    def new(self, clock: Callable[[], float]) -> str:
        ms = int(clock() * 1000)
        with self._lock:
            if ms != self._ms:
                self._ms, self._time_digits = ms, _digits(ms, ID_TIME_CHARS)
            time_digits = self._time_digits
            at = self._at
            if at + _RANDOM_CHARS > len(self._random):
                self._random, at = os.urandom(self.PAGE), 0
            self._at = at + _RANDOM_CHARS
            random_bytes = self._random[at : at + _RANDOM_CHARS]
        return time_digits + random_bytes.translate(_DIGIT_OF_BYTE).decode("ascii")


_ids = _Ids()


def new_id(clock: Callable[[], float] = time.time) -> str:
    """A fresh id; sorting ids as strings sorts them by creation millisecond."""
    return _ids.new(clock)


def is_valid(text: str) -> bool:
    """Whether ``text`` has the shape of an id (cheap check before any store lookup)."""
    return len(text) == ID_LENGTH and all(c in ALPHABET for c in text) and text[0] <= "7"


def id_floor(ts: float) -> str:
    """The smallest id that can be made at time ``ts``: ids made earlier sort below it."""
    return _digits(int(ts * 1000), ID_TIME_CHARS) + "0" * (ID_LENGTH - ID_TIME_CHARS)


def id_time(job_id: str) -> float:
    """When the id was made (Unix seconds, to the millisecond)."""
    value = 0
    for c in job_id[:ID_TIME_CHARS]:
        value = value * 32 + ALPHABET.index(c)
    return value / 1000  # 10 characters: 2 zero bits, then the 48-bit milliseconds
