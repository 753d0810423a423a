"""Termination notice from the server to the app, at the moment SIGTERM arrives.

gunicorn's asgi worker runs the ASGI lifespan shutdown only after its open connections are
gone (:mod:`service.server` closes the idle ones at once; a busy one, such as a
``Prefer: wait``, ends with its answer). So the job drain must start at SIGTERM, not at
lifespan shutdown: gunicorn.conf.py calls :func:`terminate` from the worker's SIGTERM
handler.
"""

from __future__ import annotations

from collections.abc import Callable

_handlers: list[Callable[[], None]] = []


def on_terminate(handler: Callable[[], None]) -> Callable[[], None]:
    """Call ``handler`` (on the event loop) when this process is asked to stop; returns the
    function that takes it off again (an app that has stopped needs no notice)."""
    _handlers.append(handler)

    def remove() -> None:
        if handler in _handlers:
            _handlers.remove(handler)

    return remove


def terminate() -> None:
    for handler in list(_handlers):
        handler()
