"""Job ids: 128 bits, time-ordered (48-bit milliseconds) then 80 random bits, base32."""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable

ALPHABET = "0123456789abcdefghjkmnpqrstvwxyz"  # Crockford's base32, lower case
ID_LENGTH = 26  # ceil(128 / 5)
RANDOM_BITS = 80
ID_TIME_CHARS = 10  # the first 10 characters hold the 48-bit millisecond time (50 bits)


def new_id(clock: Callable[[], float] = time.time) -> str:
    """A fresh id; sorting ids as strings sorts them by creation millisecond."""
    value = (int(clock() * 1000) << RANDOM_BITS) | secrets.randbits(RANDOM_BITS)
    chars = []
    for _ in range(ID_LENGTH):
        value, digit = divmod(value, 32)
        chars.append(ALPHABET[digit])
    return "".join(reversed(chars))


def is_valid(text: str) -> bool:
    """Whether ``text`` has the shape of an id (cheap check before any store lookup)."""
    return len(text) == ID_LENGTH and all(c in ALPHABET for c in text) and text[0] <= "7"


def id_floor(ts: float) -> str:
    """The smallest id that can be made at time ``ts``: ids made earlier sort below it."""
    return new_id(lambda: ts)[:ID_TIME_CHARS] + "0" * (ID_LENGTH - ID_TIME_CHARS)


def id_time(job_id: str) -> float:
    """When the id was made (Unix seconds, to the millisecond)."""
    value = 0
    for c in job_id[:ID_TIME_CHARS]:
        value = value * 32 + ALPHABET.index(c)
    return value / 1000  # 10 characters: 2 zero bits, then the 48-bit milliseconds
