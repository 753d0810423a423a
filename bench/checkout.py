"""Another git revision of jobpool beside this one, for ``--compare REF``: a ``git
worktree`` in a temporary directory, removed afterwards, so that before/after figures come
from one run on one machine."""

from __future__ import annotations

import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


@contextmanager
def checkout(ref: str) -> Iterator[Path]:
    """The root of a detached worktree at ``ref`` (any revision git understands)."""
    with tempfile.TemporaryDirectory(prefix="jobpool-compare-") as tmp:
        tree = Path(tmp) / "jobpool"
        subprocess.run(
            ["git", "-C", str(ROOT), "worktree", "add", "--quiet", "--detach", str(tree), ref],
            check=True,
        )
        try:
            yield tree
        finally:
            subprocess.run(
                ["git", "-C", str(ROOT), "worktree", "remove", "--force", str(tree)], check=False
            )
