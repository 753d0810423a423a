"""The one client a benchmark run is: an API key made for the run, and what goes with it."""

from __future__ import annotations

from dataclasses import dataclass, field

from service.keys import entry_for, new_key


@dataclass(frozen=True)
class BenchClient:
    """``env`` configures the server for the key; ``headers`` carry it on each request."""

    key: str = field(default_factory=new_key)

    @property
    def env(self) -> dict[str, str]:
        return {
            "JOBPOOL_API_KEYS": entry_for("bench", self.key),
            # One client sends everything in a benchmark: its limits stay on (their cost is
            # part of the figures) but out of reach.
            "JOBPOOL_CLIENT_RATE": "1000000",
            "JOBPOOL_CLIENT_MAX_INFLIGHT": "1000000",
        }

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.key}"}
