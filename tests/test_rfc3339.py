"""RFC 3339 date-times, strictly: the table of cases in tests/cases/rfc3339.txt."""

from __future__ import annotations

from pathlib import Path

import pytest

from service.rfc3339 import is_rfc3339

CASES = Path(__file__).parent / "cases" / "rfc3339.txt"


def cases() -> list[pytest.ParameterSet]:
    rows = []
    for n, line in enumerate(CASES.read_text(encoding="utf-8").splitlines(), 1):
        if line and not line.startswith("#"):
            verdict, text, why = line.split("\t")
            assert verdict in ("valid", "invalid"), (n, line)
            rows.append(pytest.param(text, verdict == "valid", id=f"{n}-{why}"))
    return rows


@pytest.mark.parametrize(("text", "valid"), cases())
def test_date_time_is_valid_exactly_as_the_table_says(text: str, valid: bool) -> None:
    """Each text of the table is accepted or refused as its row says, for its reason."""
    assert is_rfc3339(text) is valid


def test_a_trailing_newline_is_refused() -> None:
    """A date-time followed by a newline is refused (the table cannot hold this one)."""
    assert not is_rfc3339("2017-01-01T00:00:01Z\n")
