"""How far a job is, shown while the client waits for it.

On a terminal: a live line drawn with rich (a bar of a batch's items, or of the progress a
task reports; a spinner and the state otherwise). Anywhere else (a pipe, a log file): a
plain line each time what there is to say changes.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import IO, Any, Protocol

from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

__all__ = ["Display", "LineDisplay", "LiveDisplay", "Step", "describe", "display_for", "measure"]


@dataclass(frozen=True, slots=True)
class Step:
    """What a job document says of how far the job got."""

    state: str
    #: Units done (a batch's items ended, well or not; a task's reported steps).
    done: int | None = None
    #: Units in all, when known.
    total: int | None = None
    #: A batch's items that failed.
    failed: int = 0
    #: The unit counted: ``items`` or ``steps``.
    unit: str = ""
    #: A word more: the task's message, when a scheduled job starts, why it failed.
    note: str = ""


def measure(doc: dict[str, Any]) -> Step:
    """The :class:`Step` of a job document."""
    state = str(doc.get("state", "?"))
    note = ""
    if state == "scheduled" and doc.get("next_attempt_at"):
        note = f"starts at {doc['next_attempt_at']}"
    elif state in ("failed", "cancelled") and doc.get("error"):
        note = str(doc["error"])
    items = doc.get("items")
    if isinstance(items, dict):
        failed = int(items.get("failed", 0))
        return Step(
            state, done=int(items.get("done", 0)) + failed, total=int(items.get("total", 0)),
            failed=failed, unit="items", note=note,
        )  # fmt: skip
    progress = doc.get("progress")
    if isinstance(progress, dict):
        total = progress.get("total")
        message = str(progress.get("message") or "")
        return Step(
            state, done=int(progress.get("done", 0)),
            total=None if total is None else int(total), unit="steps",
            note=note or message,
        )  # fmt: skip
    return Step(state, note=note)


def count_text(step: Step) -> str:
    """``3/9 items, 1 failed``, ``12 steps``, or nothing."""
    if step.done is None:
        return ""
    text = (
        f"{step.done}/{step.total} {step.unit}"
        if step.total is not None
        else (f"{step.done} {step.unit}")
    )
    return f"{text}, {step.failed} failed" if step.failed else text


def describe(doc: dict[str, Any]) -> str:
    """One line of where the job is: ``running 3/9 items, 1 failed``."""
    step = measure(doc)
    return " ".join(part for part in (step.state, count_text(step), step.note) if part)


class Display(Protocol):
    """Shows each job document read while waiting, then stops."""

    def update(self, doc: dict[str, Any]) -> None: ...

    def close(self) -> None: ...


class LineDisplay:
    """A line per change (for pipes and logs): ``<id> running 3/9 items``. A new state is
    printed at once; counts that moved on in the same state, at most every
    :attr:`COUNT_EVERY_S`, so a long job does not fill a log."""

    #: Seconds between lines that only say the counts moved on.
    COUNT_EVERY_S = 10.0

    def __init__(
        self, job_id: str, out: IO[str], clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.job_id = job_id
        self.out = out
        self.clock = clock
        self._line = ""
        self._state = ""
        self._at = 0.0

    def update(self, doc: dict[str, Any]) -> None:
        line = describe(doc)
        state = str(doc.get("state"))
        if line == self._line:
            return
        if state == self._state and self.clock() - self._at < self.COUNT_EVERY_S:
            return
        self._line, self._state, self._at = line, state, self.clock()
        print(f"{self.job_id} {line}", file=self.out, flush=True)

    def close(self) -> None:
        return None


class LiveDisplay:
    """A live line on a terminal: spinner, state, bar, count, time since the wait began."""

    def __init__(self, job_id: str, console: Console) -> None:
        self.job_id = job_id
        self.progress = Progress(
            SpinnerColumn(finished_text="[bold]•[/]"),
            TextColumn("{task.description}"),
            BarColumn(),
            TextColumn("{task.fields[count]}"),
            TimeElapsedColumn(),
            console=console,
            transient=False,
        )
        self.task = self.progress.add_task(escape(job_id), total=None, count="")
        self.progress.start()

    def update(self, doc: dict[str, Any]) -> None:
        step = measure(doc)
        final = step.state in ("succeeded", "failed", "cancelled")
        total = step.total if step.total else None
        done = step.done or 0
        if final and total is None:
            total, done = 1, 1  # a finished job's bar is full, whatever it counted
        colour = {"succeeded": "green", "failed": "red", "cancelled": "yellow"}.get(step.state)
        state = f"[{colour}]{step.state}[/]" if colour else step.state
        note = f" [dim]{escape(step.note)}[/]" if step.note else ""
        self.progress.update(
            self.task, description=f"{escape(self.job_id)} {state}{note}", total=total,
            completed=done, count=count_text(step),
        )  # fmt: skip

    def close(self) -> None:
        self.progress.stop()


def display_for(job_id: str, console: Console) -> Display:
    """A live display when ``console`` is a terminal, plain lines otherwise."""
    if console.is_terminal and not console.is_dumb_terminal:
        return LiveDisplay(job_id, console)
    return LineDisplay(job_id, console.file)
