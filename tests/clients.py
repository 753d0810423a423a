"""The test clients: two fixed API keys (for tests only) and their configuration entries."""

from __future__ import annotations

from service.keys import entry_for

ALICE = "jp_TEST-alice-never-use-outside-tests-0123456789"
BOB = "jp_TEST-bob-never-use-outside-tests-0123456789ab"
OPS = "jp_TEST-ops-operator-never-use-outside-tests-0123"
#: ``JOBPOOL_API_KEYS`` for the test servers: alice and bob.
API_KEYS = f"{entry_for('alice', ALICE)},{entry_for('bob', BOB)}"
#: The same, and ops, an operator (the dashboard's tests).
WITH_OPERATOR = f"{API_KEYS},{entry_for('ops', OPS, 'operator')}"


def bearer(key: str) -> dict[str, str]:
    """The Authorization header of ``key``."""
    return {"Authorization": f"Bearer {key}"}
