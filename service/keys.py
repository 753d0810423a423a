"""API keys: make them, configure them as hashes, and find the client of a presented key.

A key is ``jp_`` plus 43 url-safe base64 characters: 256 random bits from ``secrets``. The
service stores only ``sha256(key)``, each with the name of the client it belongs to, one
entry per key: ``NAME:sha256:HEX``. A client may have several keys (that is how a key is
rotated: add the new one, let the client switch, remove the old one). An entry may end with
a role, ``NAME:sha256:HEX:operator``: an operator's key sees every client's jobs and the
host's panels on the dashboard (``service.ui``); without one the role is ``client``.

Entries come from ``JOBPOOL_API_KEYS`` (comma- or whitespace-separated) and/or the file
named by ``JOBPOOL_API_KEYS_FILE`` (one entry a line, ``#`` comments). The file is read again
when it changes, so a key is revoked by removing its line: no restart.

    python -m service.keys new NAME [--role operator]   # a new key and its entry
    python -m service.keys hash NAME [--role operator]  # the entry of a key read from stdin

Why a plain SHA-256 and not a password hash (bcrypt, scrypt, argon2): those are slow on
purpose so that a stolen hash of a *human-chosen* password cannot be brute-forced from a
dictionary. A key here has 256 random bits; no dictionary exists and 2**256 guesses are out
of reach at any hashing speed, so a slow hash would only add milliseconds of CPU to every
request. SHA-256 is one-way: the configured hashes do not let anyone make a valid key.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import re
import secrets
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal, get_args

from service.errors import ConfigError, Unauthorized
from service.hostfiles import WatchedFile

if TYPE_CHECKING:
    from service.config import Settings

log = logging.getLogger(__name__)

PREFIX = "jp_"
#: Random bytes in a new key (256 bits).
KEY_BYTES = 32
#: Longest token looked at; anything longer is malformed without being hashed.
TOKEN_MAX = 512
ALGORITHM = "sha256"
#: Bytes of a hash that pick its entry; the whole hash is then compared in constant time.
LOOKUP_BYTES = 16

#: What a key may see: ``client``, its own jobs; ``operator``, everyone's and the host's.
Role = Literal["client", "operator"]
ROLES: tuple[Role, ...] = get_args(Role)
CLIENT = re.compile(r"[A-Za-z0-9][A-Za-z0-9._@-]{0,63}")
ENTRY = re.compile(rf"({CLIENT.pattern}):{ALGORITHM}:([0-9a-fA-F]{{64}})(?::({'|'.join(ROLES)}))?")
# RFC 6750 b64token, as a whole Authorization value: "Bearer" 1*SP token.
BEARER = re.compile(r"Bearer +([A-Za-z0-9._~+/-]+=*)", re.IGNORECASE)


def new_key() -> str:
    """A new random API key."""
    return PREFIX + secrets.token_urlsafe(KEY_BYTES)


def digest(key: str) -> bytes:
    """The stored form of a key: its SHA-256 (see the module docstring for why)."""
    return hashlib.sha256(key.encode()).digest()


def entry_for(client: str, key: str, role: Role = "client") -> str:
    """The configuration entry ``NAME:sha256:HEX`` of ``client``'s ``key`` (with
    ``:operator`` appended for an operator's key)."""
    if not CLIENT.fullmatch(client):
        raise ValueError(f"{client!r} is not a client name (letters, digits, . _ @ -; <= 64)")
    if role not in ROLES:
        raise ValueError(f"{role!r} is not a role ({', '.join(ROLES)})")
    suffix = "" if role == "client" else f":{role}"
    return f"{client}:{ALGORITHM}:{digest(key).hex()}{suffix}"


@dataclass(frozen=True)
class KeyEntry:
    """One configured key: its client, the SHA-256 of the key, and its role."""

    client: str
    digest: bytes
    role: Role = "client"

    @property
    def fingerprint(self) -> bytes:
        """The bytes of the hash that find the entry (what a dashboard session names)."""
        return self.digest[:LOOKUP_BYTES]


def parse_entries(text: str, *, source: str) -> tuple[KeyEntry, ...]:
    """Entries separated by commas, whitespace or lines; ``#`` starts a comment.

    Raises ``ValueError`` naming the line (of ``source``) and the bad entry's client name
    only: never the text of a line, which could be a key pasted by mistake.
    """
    entries: list[KeyEntry] = []
    for number, line in enumerate(text.splitlines(), 1):
        for word in line.split("#", 1)[0].replace(",", " ").split():
            match = ENTRY.fullmatch(word)
            if match is None:
                where = f"line {number}" if "\n" in text.strip() else "an entry"
                raise ValueError(
                    f"{where} of {source} is not NAME:{ALGORITHM}:HEX[:operator] (64 hex"
                    " digits); make one with: python -m service.keys new NAME"
                )
            role: Role = "operator" if match.group(3) == "operator" else "client"
            entries.append(KeyEntry(match.group(1), bytes.fromhex(match.group(2)), role))
    return tuple(entries)


def env_entries(raw: str) -> tuple[KeyEntry, ...]:
    """``JOBPOOL_API_KEYS``: a settings parser (ValueError on a bad entry)."""
    return parse_entries(raw, source="the list")


def read_file(path: Path) -> tuple[KeyEntry, ...]:
    """The entries of a keys file; ``ConfigError`` naming ``JOBPOOL_API_KEYS_FILE``."""
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as ex:
        raise ConfigError(f"JOBPOOL_API_KEYS_FILE: cannot read {path}: {ex}") from None
    try:
        return parse_entries(text, source=str(path))
    except ValueError as ex:
        raise ConfigError(f"JOBPOOL_API_KEYS_FILE: {ex}") from None


def _index(entries: Iterable[KeyEntry]) -> dict[bytes, KeyEntry]:
    index: dict[bytes, KeyEntry] = {}
    for e in entries:
        known = index.setdefault(e.digest[:LOOKUP_BYTES], e)
        if known.digest != e.digest:  # 2**-128: a mistake, not chance
            raise ConfigError("JOBPOOL_API_KEYS: two keys share a hash prefix; make new ones")
        if known.client != e.client:
            raise ConfigError(
                f"JOBPOOL_API_KEYS: one key is configured for two clients,"
                f" {known.client!r} and {e.client!r}"
            )
        if known.role != e.role:
            raise ConfigError(
                f"JOBPOOL_API_KEYS: one key of {e.client!r} is configured with two roles"
            )
    return index


class Keyring:
    """The configured keys, by hash: one dict look-up per request, whatever their number."""

    def __init__(
        self,
        entries: Sequence[KeyEntry] = (),
        *,
        file: Path | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        env = tuple(entries)
        self._by_env = _index(env)
        #: The keys of the environment and of the file, by hash (read again when it changes).
        self._file: WatchedFile[dict[bytes, KeyEntry]] | None = None
        if file is not None:
            try:
                self._file = WatchedFile(
                    file,
                    lambda path: _index(env + read_file(path)),
                    name="API keys file",
                    kept="keys",
                    summary=_summary,
                    errors=(ConfigError,),
                    clock=clock,
                    logger=log,
                )
            except OSError as ex:
                raise ConfigError(f"JOBPOOL_API_KEYS_FILE: cannot read {file}: {ex}") from None

    @property
    def _by_digest(self) -> dict[bytes, KeyEntry]:
        return self._by_env if self._file is None else self._file.current()

    @classmethod
    def from_settings(cls, settings: Settings) -> Keyring | None:
        """The keyring the settings ask for; None when ``JOBPOOL_AUTH=off``.

        Raises ``ConfigError`` (one line) when auth is on and no key is configured, or the
        keys file cannot be read: the service does not start without keys.
        """
        if not settings.auth:
            return None
        keyring = cls(settings.api_keys, file=settings.api_keys_file)
        if not keyring.clients():
            source = (
                f"JOBPOOL_API_KEYS_FILE ({settings.api_keys_file}) has none"
                if settings.api_keys_file
                else "set JOBPOOL_API_KEYS or JOBPOOL_API_KEYS_FILE"
            )
            raise ConfigError(
                f"JOBPOOL_API_KEYS: no API keys configured ({source});"
                " make one with `python -m service.keys new NAME`,"
                " or set JOBPOOL_AUTH=off for local use only"
            )
        return keyring

    def clients(self) -> set[str]:
        return {e.client for e in self._by_digest.values()}

    def authenticate(self, authorization: str | None) -> str:
        """The client of an ``Authorization: Bearer <key>`` value, else :class:`Unauthorized`."""
        return self.identify(authorization).client

    def identify(self, authorization: str | None) -> KeyEntry:
        """The entry of an ``Authorization: Bearer <key>`` value, else :class:`Unauthorized`.

        O(1): the presented key is hashed once, the first bytes of its hash pick the one
        entry it could be, and the whole hash is compared with ``hmac.compare_digest``
        (constant time). The look-up's own timing depends only on SHA-256 output of the
        caller's guess, which no caller can steer, so it says nothing about a stored hash.
        """
        if not authorization:
            raise Unauthorized("this route needs an API key: Authorization: Bearer <key>")
        match = BEARER.fullmatch(authorization) if len(authorization) <= TOKEN_MAX else None
        if match is None:
            if not authorization[:7].lower().startswith("bearer"):
                raise Unauthorized("only Bearer API keys are accepted: Authorization: Bearer <key>")
            raise Unauthorized("the API key is malformed", error="invalid_token")
        return self.find(match.group(1))

    def find(self, key: str) -> KeyEntry:
        """The entry of ``key`` itself (a login form's), else :class:`Unauthorized`."""
        if not key or len(key) > TOKEN_MAX:
            raise Unauthorized("the API key is not valid", error="invalid_token")
        presented = digest(key)
        entry = self._by_digest.get(presented[:LOOKUP_BYTES])
        if entry is None or not hmac.compare_digest(entry.digest, presented):
            raise Unauthorized("the API key is not valid", error="invalid_token")
        return entry

    def by_fingerprint(self, fingerprint: bytes) -> KeyEntry | None:
        """The entry whose :attr:`KeyEntry.fingerprint` this is, while it is configured (a
        dashboard session ends when its key is removed)."""
        return self._by_digest.get(fingerprint)


def _summary(by_digest: dict[bytes, KeyEntry]) -> str:
    clients = {e.client for e in by_digest.values()}
    return f"{len(by_digest)} keys of {len(clients)} clients"


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m service.keys new NAME`` | ``hash NAME`` (key on stdin); ``--role R``."""
    args = list(sys.argv[1:] if argv is None else argv)
    usage = (
        "usage: python -m service.keys new NAME [--role operator]   print a new key for NAME\n"
        "       python -m service.keys hash NAME [--role operator]  the entry of a key on stdin"
    )
    role = "client"
    if len(args) == 4 and args[2] == "--role":
        role = args.pop()
        args.pop()
    if len(args) != 2 or args[0] not in {"new", "hash"} or role not in ROLES:
        print(usage, file=sys.stderr)
        return 2
    command, client = args
    if not CLIENT.fullmatch(client):
        print(f"jobpool: {client!r} is not a client name (letters, digits, . _ @ -)",
              file=sys.stderr)  # fmt: skip
        return 2
    as_role: Role = "operator" if role == "operator" else "client"
    if command == "new":
        key = new_key()
        print(f"key:   {key}")
        print(f"entry: {entry_for(client, key, as_role)}")
        print(
            "Give the key to the client (it is not stored anywhere); add the entry to\n"
            "JOBPOOL_API_KEYS (comma-separated) or as a line of JOBPOOL_API_KEYS_FILE.",
            file=sys.stderr,
        )
        return 0
    key = sys.stdin.readline().strip()
    if not key:
        print("jobpool: no key on stdin", file=sys.stderr)
        return 2
    print(entry_for(client, key, as_role))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
