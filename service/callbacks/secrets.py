"""Each client's callback secrets: the file ``JOBPOOL_CALLBACK_SECRETS_FILE``.

One line per client, ``CLIENT whsec_… [whsec_…]`` (``#`` starts a comment): callbacks of the
client's jobs are signed with each of its secrets (:mod:`.signing`). A secret is rotated by
adding the new one beside the old (receivers then accept either), moving receivers to the
new one, and removing the old. The file is read again within 2 s of a change
(:class:`~service.hostfiles.WatchedFile`), so no restart is needed; a file that cannot be
read or parsed then keeps the secrets as they were (logged). At start-up it must be
readable: the service does not start otherwise.

    python -m service.callbacks.secrets new CLIENT   # a line with a new secret

The secrets are the service's to keep (they sign): the file belongs to the service's user,
mode 0600, as the keys file does.
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from service.callbacks.signing import decode_secret, new_secret
from service.errors import ConfigError
from service.hostfiles import WatchedFile
from service.keys import CLIENT

log = logging.getLogger(__name__)

#: Secrets one client may have at once: the one in use, and the next (a rotation).
MAX_PER_CLIENT = 2
SETTING = "JOBPOOL_CALLBACK_SECRETS_FILE"


def parse(text: str, *, source: str) -> dict[str, tuple[bytes, ...]]:
    """client -> its keys; ValueError naming the line (never its secrets)."""
    found: dict[str, tuple[bytes, ...]] = {}
    for number, line in enumerate(text.splitlines(), 1):
        words = line.split("#", 1)[0].split()
        if not words:
            continue
        client, given = words[0], words[1:]
        where = f"line {number} of {source}"
        if not CLIENT.fullmatch(client):
            raise ValueError(f"{where}: {client!r} is not a client name")
        if not 1 <= len(given) <= MAX_PER_CLIENT:
            raise ValueError(f"{where}: give 1 or {MAX_PER_CLIENT} secrets for {client}")
        if client in found:
            raise ValueError(f"{where}: {client} is named twice")
        try:
            found[client] = tuple(decode_secret(word) for word in given)
        except ValueError as ex:
            raise ValueError(f"{where}: {ex}") from None
    return found


def _read(path: Path) -> dict[str, tuple[bytes, ...]]:
    return parse(path.read_text(), source=str(path))


class CallbackSecrets:
    """The secrets of the file (none without one), by client; safe from any thread."""

    def __init__(
        self, file: Path | None = None, *, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._file: WatchedFile[dict[str, tuple[bytes, ...]]] | None = None
        if file is not None:
            try:
                self._file = WatchedFile(
                    file,
                    _read,
                    name=SETTING,
                    kept="secrets",
                    summary=lambda by_client: f"{len(by_client)} clients",
                    errors=(UnicodeDecodeError, ValueError),
                    clock=clock,
                    logger=log,
                )
            except (OSError, UnicodeDecodeError, ValueError) as ex:
                raise ConfigError(f"{SETTING}: {ex}") from None

    def of(self, client: str) -> tuple[bytes, ...]:
        """The keys ``client``'s callbacks are signed with (none: it has no secret)."""
        return () if self._file is None else self._file.current().get(client, ())


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m service.callbacks.secrets new CLIENT``: a line for the secrets file."""
    args = list(sys.argv[1:] if argv is None else argv)
    if len(args) != 2 or args[0] != "new" or not CLIENT.fullmatch(args[1]):
        print("usage: python -m service.callbacks.secrets new CLIENT", file=sys.stderr)
        return 2
    print(f"{args[1]} {new_secret()}")
    print(
        f"Add the line to {SETTING} (a second secret after the first rotates it), and give"
        " the secret to the client: its receiver verifies the signatures with it.",
        file=sys.stderr,
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
