"""The job registry: a job is a named, module-level function declared with its pool.

Adding an endpoint never means adding a pool: declare the function with :func:`job` and
submit it by name.
"""

from __future__ import annotations

import dataclasses
import inspect
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Literal, TypeVar

from service.jobs.retry import Backoff

Pool = Literal["io", "cpu"]
POOLS: tuple[Pool, ...] = ("io", "cpu")
DEFAULT_TIMEOUT_S = 60.0
DEFAULT_BACKOFF = Backoff()

F = TypeVar("F", bound=Callable[..., Any])


@dataclass(frozen=True)
class JobSpec:
    """What the job layer needs to know to run a job."""

    name: str
    fn: Callable[..., Any]
    pool: Pool
    timeout_s: float
    #: For batch jobs: names an item's result for later look-up (e.g. a parcel's id).
    item_key: Callable[[Any], str] | None = None
    #: For batch jobs whose items are cheap: given the batch's options, whether its items
    #: may run on the event loop as the job is accepted, the job stored already ended (no
    #: thread hand-off, no second write).
    inline_when: Callable[[dict[str, Any]], bool] | None = None
    #: Failed attempts that are run again (a batch's items are not retried).
    retries: int = 0
    #: The wait before each retry.
    backoff: Backoff = DEFAULT_BACKOFF

    @property
    def is_async(self) -> bool:
        """A coroutine function: it runs on the event loop (io pool jobs only)."""
        return inspect.iscoroutinefunction(self.fn)


class Registry:
    """Job specs by name."""

    def __init__(self) -> None:
        self._specs: dict[str, JobSpec] = {}

    def add(self, spec: JobSpec) -> None:
        if spec.pool not in POOLS:
            raise ValueError(f"job {spec.name!r}: pool must be one of {POOLS}, not {spec.pool!r}")
        if spec.timeout_s <= 0:
            raise ValueError(f"job {spec.name!r}: timeout must be positive")
        if spec.is_async and (spec.pool != "io" or spec.item_key is not None):
            raise ValueError(f"job {spec.name!r}: a coroutine job runs on the io pool, alone")
        if spec.inline_when is not None and (spec.pool != "io" or spec.is_async):
            raise ValueError(f"job {spec.name!r}: only an io batch job may run inline")
        if spec.retries < 0:
            raise ValueError(f"job {spec.name!r}: retries must be 0 or more")
        known = self._specs.get(spec.name)
        if known is not None and known.fn is not spec.fn:
            raise ValueError(f"job {spec.name!r} is already registered to {known.fn!r}")
        self._specs[spec.name] = spec

    def get(self, name: str) -> JobSpec:
        try:
            return self._specs[name]
        except KeyError:
            raise LookupError(f"no job named {name!r}") from None

    def configured(self, timeouts: Mapping[str, float]) -> Registry:
        """A copy with the configured timeouts (seconds) applied to the jobs they name: an
        app's own registry, so two apps in one process never share settings."""
        copy = Registry()
        copy._specs = dict(self._specs)
        for name, seconds in timeouts.items():
            copy._specs[name] = dataclasses.replace(self.get(name), timeout_s=float(seconds))
        return copy

    def __contains__(self, name: object) -> bool:
        return name in self._specs

    def job(
        self,
        name: str,
        *,
        pool: Pool,
        timeout: float = DEFAULT_TIMEOUT_S,
        item_key: Callable[[Any], str] | None = None,
        inline_when: Callable[[dict[str, Any]], bool] | None = None,
        retries: int = 0,
        backoff: Backoff = DEFAULT_BACKOFF,
    ) -> Callable[[F], F]:
        """Decorator: register a module-level function as the job ``name``.

        ``timeout`` is seconds per call (for a batch, per item). The function takes and
        returns plain data (it may cross into another process and is stored for re-runs).
        A failed run (it raised, timed out, or its process died) is run again up to
        ``retries`` times, ``backoff`` apart (see :mod:`service.jobs.retry`). A batch job
        whose items cost microseconds (no I/O) may say, by its options, when they run inline
        with ``inline_when``.
        """

        def register(fn: F) -> F:
            if "<locals>" in fn.__qualname__:
                # A cpu job crosses into another process by name; a closure cannot.
                raise ValueError(f"job {name!r}: {fn.__qualname__} must be module-level")
            self.add(
                JobSpec(
                    name=name,
                    fn=fn,
                    pool=pool,
                    timeout_s=float(timeout),
                    item_key=item_key,
                    inline_when=inline_when,
                    retries=retries,
                    backoff=backoff,
                )
            )
            return fn

        return register


registry = Registry()
job = registry.job
