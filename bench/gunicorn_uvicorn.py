"""gunicorn settings for the ``floor-uvicorn`` peer: jobpool's ``gunicorn.conf.py`` to the
letter (workers, keep-alive, limits, logging), with uvicorn's worker class in place of
gunicorn's own asgi worker, and without the ``post_fork`` hook, which reaches into the
asgi worker's signal handling (jobpool's job drain) that a UvicornWorker does not have.

    gunicorn -c python:bench.gunicorn_uvicorn bench.floor_app:app
"""

import runpy
from pathlib import Path
from typing import Any, ClassVar

from uvicorn_worker import UvicornWorker

_jobpool = runpy.run_path(str(Path(__file__).resolve().parent.parent / "gunicorn.conf.py"))
globals().update({k: v for k, v in _jobpool.items() if not k.startswith("_") and k != "post_fork"})


class Worker(UvicornWorker):
    """uvicorn's worker on uvloop and httptools, with no access log: gunicorn's access
    logger is at info under jobpool's logging, and gunicorn's own worker writes none."""

    CONFIG_KWARGS: ClassVar[dict[str, Any]] = {
        "loop": "uvloop", "http": "httptools", "access_log": False,
    }  # fmt: skip


# gunicorn imported this module for its settings: the worker class comes from it again.
worker_class = f"{__name__}.Worker"
