"""The test clients: two fixed API keys (for tests only) and their configuration entries."""

from __future__ import annotations

from service.keys import entry_for

ALICE = "jp_TEST-alice-never-use-outside-tests-0123456789"
BOB = "jp_TEST-bob-never-use-outside-tests-0123456789ab"
#: ``JOBPOOL_API_KEYS`` for the test servers: alice and bob.
API_KEYS = f"{entry_for('alice', ALICE)},{entry_for('bob', BOB)}"


def bearer(key: str) -> dict[str, str]:
    """The Authorization header of ``key``."""
    return {"Authorization": f"Bearer {key}"}
