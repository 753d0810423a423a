"""Files the workers of one host share: one made once by whichever worker comes first, one
an operator edits that every worker reads again when it changes.

- :func:`made_once`: a random value kept in a file (the host's id, the dashboard's secret).
  Concurrent first starts agree: the value is written aside and linked into place, so a
  reader sees either no file or a whole one, and every worker reads the first one linked.
- :class:`WatchedFile`: a file's parsed content (the API keys file, the callback secrets
  file), looked at again (one ``stat``: time, size, inode) at most every
  :data:`CHECK_S`, read again when it changed. A file that cannot be read or parsed then
  keeps what was read before (logged), and is tried again at the next check.
"""

from __future__ import annotations

import contextlib
import logging
import os
import secrets
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Generic, TypeVar

log = logging.getLogger(__name__)

T = TypeVar("T")
#: Seconds between looks at a watched file for changes (one ``stat``).
CHECK_S = 2.0


def made_once(path: Path, make: Callable[[], str], *, mode: int = 0o600) -> str:
    """The text of ``path``; made with ``make()`` (file mode ``mode``) by the first caller."""
    with contextlib.suppress(FileNotFoundError):
        text = path.read_text().strip()
        if text:
            return text
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    with os.fdopen(fd, "w") as f:
        f.write(make() + "\n")
    try:
        os.link(tmp, path)
    except FileExistsError:
        pass  # another worker was first: use its value
    finally:
        tmp.unlink()
    return path.read_text().strip()


def stamp(path: Path) -> tuple[int, int, int]:
    """What tells a changed file: its modification time, size and inode."""
    st = os.stat(path)
    return (st.st_mtime_ns, st.st_size, st.st_ino)


class WatchedFile(Generic[T]):
    """``read(path)``, read again once the file changed; safe from any thread.

    ``read`` raises one of ``errors`` for a file it cannot take. At construction that
    propagates (the service does not start); later it keeps the previous value, logged as
    ``{name} not reloaded, the previous {kept} stay`` (to ``logger``). ``summary`` says what
    a reload read.
    """

    def __init__(
        self,
        path: Path,
        read: Callable[[Path], T],
        *,
        name: str,
        kept: str,
        summary: Callable[[T], str],
        errors: tuple[type[Exception], ...],
        clock: Callable[[], float] = time.monotonic,
        logger: logging.Logger = log,
    ) -> None:
        self.path = path
        self._log = logger
        self._read = read
        self._name = name
        self._kept = kept
        self._summary = summary
        self._errors: tuple[type[Exception], ...] = (OSError, *errors)
        self._clock = clock
        self._lock = threading.Lock()
        self._stamp: tuple[int, int, int] | None = stamp(path)  # first: a later change is seen
        self._value = read(path)
        self._next_check = clock() + CHECK_S

    def current(self) -> T:
        """The content, read again first if a check is due and the file changed."""
        if self._clock() >= self._next_check:
            with self._lock:
                if self._clock() >= self._next_check:
                    self._next_check = self._clock() + CHECK_S
                    self.reload()
        return self._value

    def reload(self) -> bool:
        """Read the file again if it changed; False if it did not, or could not be read."""
        try:
            now = stamp(self.path)
            if now == self._stamp:
                return False
            value = self._read(self.path)
        except self._errors as ex:
            detail = getattr(ex, "detail", None) or str(ex)
            self._log.error(
                "%s not reloaded, the previous %s stay: %s", self._name, self._kept, detail
            )
            self._stamp = None  # try again at the next check
            return False
        self._stamp, self._value = now, value
        self._log.info("%s reloaded: %s", self._name, self._summary(value))
        return True
