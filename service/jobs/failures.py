"""How a run can fail apart from its function's own exception, and the reason stored."""

from __future__ import annotations


class TaskTimeout(Exception):
    """The task ran past its job's timeout."""


class ProcessDied(Exception):
    """The process running the task died (a crash, a signal, out of memory)."""


def describe(ex: BaseException) -> str:
    """The reason stored with a failed job or item."""
    text = str(ex)
    return f"{type(ex).__name__}: {text}" if text else type(ex).__name__
