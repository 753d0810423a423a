"""RFC 3339 date-times (section 5.6), strictly: the ``time`` of a parcel.

A ``T`` (either case), seconds, an optional fraction, and ``Z`` (either case) or a numeric
offset whose hours are 00-23 and minutes 00-59. Every field is in range, the day exists in
its month (leap years too), and a leap second (second 60) only falls where one can occur:
at 23:59 UTC once the offset is applied (section 5.7), so ``1998-12-31T15:59:60-08:00`` is
one and ``1998-12-31T23:58:60Z`` is not. Year 0000, which ``datetime`` cannot hold, is
refused, as it always was here.
"""

from __future__ import annotations

import re
from datetime import date, datetime

__all__ = ["DESCRIPTION", "SHAPE", "is_rfc3339", "needs_second_look", "timestamp"]

#: The rule above in one sentence, for the OpenAPI document.
DESCRIPTION = (
    "An RFC 3339 date-time: a T, seconds (a fraction may follow), and Z or an offset "
    "±hh:mm with hh 00-23 and mm 00-59. A leap second (:60) only at 23:59 UTC once the "
    "offset is applied, e.g. 1998-12-31T23:59:60Z or 1998-12-31T15:59:60-08:00."
)

# Shape and the range of each field in one pass; [0-9], not \d, which matches other
# scripts' digits. The two rules a pattern cannot say (days 29-31, leap seconds) are
# checked apart, and only for the rare texts that need them.
_DATE_TIME = re.compile(
    r"(?P<year>(?!0000)[0-9]{4})-(?P<month>0[1-9]|1[0-2])-(?P<day>0[1-9]|[12][0-9]|3[01])"
    r"[Tt](?P<hour>[01][0-9]|2[0-3]):(?P<minute>[0-5][0-9]):(?P<second>[0-5][0-9]|60)"
    r"(?:\.[0-9]+)?"
    r"(?:[Zz]|(?P<sign>[+-])(?P<off_hour>[01][0-9]|2[0-3]):(?P<off_minute>[0-5][0-9]))"
)
_LAST_MINUTE = 23 * 60 + 59
#: The shape and ranges as one anchored pattern without groups (JSON Schema's flavour: ^
#: and $), for a decoder that checks it in C (msgspec, with re.search). A text that fits is
#: valid unless :func:`needs_second_look`.
SHAPE = "^" + re.sub(r"\(\?P<[a-z_]+>", "(?:", _DATE_TIME.pattern) + "$"


def needs_second_look(text: str) -> bool:
    """Whether a text of :data:`SHAPE` needs :func:`is_rfc3339` too: a day past the 28th
    (does it exist in its month?), second 60 (a leap second where one can occur?), or a
    line break at its end (which Python's ``$`` lets through)."""
    return text[8:10] > "28" or text[17:19] == "60" or text[-1] == "\n"


def is_rfc3339(text: str) -> bool:
    """Whether ``text`` is a valid RFC 3339 date-time, by the rule of this module."""
    m = _DATE_TIME.fullmatch(text)
    if m is None:
        return False
    if m["day"] > "28" and not _day_exists(m):
        return False
    return m["second"] != "60" or _is_last_minute_utc(m)


def _day_exists(m: re.Match[str]) -> bool:
    try:
        date(int(m["year"]), int(m["month"]), int(m["day"]))
    except ValueError:
        return False
    return True


def _is_last_minute_utc(m: re.Match[str]) -> bool:
    minute = int(m["hour"]) * 60 + int(m["minute"])
    if m["sign"] is not None:
        offset = int(m["off_hour"]) * 60 + int(m["off_minute"])
        minute -= offset if m["sign"] == "+" else -offset
    return minute % (24 * 60) == _LAST_MINUTE


def timestamp(text: str) -> float | None:
    """The Unix time of an RFC 3339 date-time (a leap second as the second after :59), or
    None when ``text`` is not one."""
    if not is_rfc3339(text):
        return None
    m = _DATE_TIME.fullmatch(text)
    assert m is not None
    leap = m["second"] == "60"
    if leap:
        text = text[: m.start("second")] + "59" + text[m.end("second") :]
    return datetime.fromisoformat(text.upper().replace("Z", "+00:00")).timestamp() + leap
