"""API keys on their own (no server)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from service.config import Settings
from service.errors import ConfigError, Unauthorized
from service.keys import (
    Keyring,
    digest,
    entry_for,
    env_entries,
    main,
    new_key,
    parse_entries,
)
from tests.clients import ALICE, API_KEYS, BOB
from tests.server import ROOT


class Clock:
    """A clock the test moves by hand."""

    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


# -- keys ----------------------------------------------------------------------------


def test_new_keys_are_random_256_bit_tokens() -> None:
    """A new key is jp_ plus 43 url-safe characters, and never the same twice."""
    keys = {new_key() for _ in range(1000)}
    assert len(keys) == 1000
    for key in list(keys)[:20]:
        assert key.startswith("jp_")
        assert len(key) == 3 + 43


def test_entries_parse_from_a_list_or_a_file_with_comments() -> None:
    """Entries separate by commas, spaces or lines; # starts a comment; hashes are sha256."""
    a, b = new_key(), new_key()
    text = f"# clients\n{entry_for('a', a)}  # first\n\n{entry_for('b', b)}, {entry_for('b', a)}"
    entries = parse_entries(text, source="keys")
    assert [(e.client, e.digest) for e in entries] == [
        ("a", digest(a)),
        ("b", digest(b)),
        ("b", digest(a)),
    ]


@pytest.mark.parametrize(
    "bad",
    ["alice", "alice:sha256:abc", f"alice:md5:{'0' * 64}", f"-x:sha256:{'0' * 64}", ALICE],
)
def test_a_bad_entry_is_refused_without_repeating_it(bad: str) -> None:
    """JOBPOOL_API_KEYS with a bad entry names the variable but never echoes the entry."""
    with pytest.raises(ConfigError) as info:
        Settings.from_env({"JOBPOOL_API_KEYS": f"{entry_for('ok', new_key())},{bad}"})
    assert info.value.detail.startswith("JOBPOOL_API_KEYS: ")
    assert bad not in info.value.detail
    assert "python -m service.keys new NAME" in info.value.detail


def test_keyring_finds_the_client_of_a_key() -> None:
    """A valid Bearer key gives its client; a client may hold several keys."""
    second = new_key()
    ring = Keyring(env_entries(f"{API_KEYS},{entry_for('alice', second)}"))
    assert ring.authenticate(f"Bearer {ALICE}") == "alice"
    assert ring.authenticate(f"bearer   {second}") == "alice"
    assert ring.authenticate(f"Bearer {BOB}") == "bob"
    assert ring.clients() == {"alice", "bob"}


@pytest.mark.parametrize(
    ("value", "error"),
    [
        (None, None),
        ("", None),
        (f"Basic {ALICE}", None),
        ("Bearer", "invalid_token"),
        ("Bearer jp_unknown", "invalid_token"),
        (f"Bearer {ALICE} trailing", "invalid_token"),
        (f"Bearer {ALICE}\x00", "invalid_token"),
        ("Bearer " + "a" * 1000, "invalid_token"),
    ],
)
def test_keyring_refuses_absent_malformed_and_wrong_keys(value: str | None, error: str) -> None:
    """Anything but a configured Bearer key raises Unauthorized with the RFC 6750 code."""
    with pytest.raises(Unauthorized) as info:
        Keyring(env_entries(API_KEYS)).authenticate(value)
    assert info.value.error == error
    assert ALICE not in info.value.detail


def test_one_key_for_two_clients_is_refused() -> None:
    """The same key configured for two clients is a configuration error."""
    key = new_key()
    with pytest.raises(ConfigError, match="two clients"):
        Keyring(env_entries(f"{entry_for('a', key)},{entry_for('b', key)}"))


def test_no_keys_and_auth_on_refuses_with_one_line(tmp_path: Path) -> None:
    """Auth on without keys, or an unreadable keys file: a ConfigError naming the fix."""
    with pytest.raises(ConfigError) as info:
        Keyring.from_settings(Settings.from_env({}))
    assert "JOBPOOL_AUTH=off" in info.value.detail
    assert "\n" not in info.value.detail
    missing = tmp_path / "nope"
    with pytest.raises(ConfigError, match="JOBPOOL_API_KEYS_FILE: cannot read"):
        Keyring.from_settings(Settings.from_env({"JOBPOOL_API_KEYS_FILE": str(missing)}))
    assert Keyring.from_settings(Settings.from_env({"JOBPOOL_AUTH": "off"})) is None


def test_keys_file_is_read_again_when_it_changes(tmp_path: Path) -> None:
    """A changed keys file applies at the next check; a broken one keeps the previous keys."""
    clock = Clock()
    old, rotated = new_key(), new_key()
    path = tmp_path / "keys"
    path.write_text(entry_for("carol", old) + "\n")
    ring = Keyring(file=path, clock=clock)
    assert ring.authenticate(f"Bearer {old}") == "carol"
    path.write_text(entry_for("carol", rotated) + "\n")
    assert ring.authenticate(f"Bearer {old}") == "carol"  # not looked at yet
    clock.now += 2.5
    assert ring.authenticate(f"Bearer {rotated}") == "carol"
    with pytest.raises(Unauthorized):
        ring.authenticate(f"Bearer {old}")
    path.write_text("carol:garbage and more\n")
    clock.now += 2.5
    assert ring.authenticate(f"Bearer {rotated}") == "carol"


def test_keys_command_prints_a_key_and_its_entry() -> None:
    """python -m service.keys new NAME prints a key and the entry that accepts it."""
    out = subprocess.run(
        [sys.executable, "-m", "service.keys", "new", "carol"],
        cwd=ROOT, capture_output=True, text=True, check=True, timeout=30,
    ).stdout  # fmt: skip
    lines = dict(line.split(None, 1) for line in out.splitlines())
    key, entry = lines["key:"], lines["entry:"]
    assert Keyring(env_entries(entry)).authenticate(f"Bearer {key}") == "carol"
    hashed = subprocess.run(
        [sys.executable, "-m", "service.keys", "hash", "carol"],
        cwd=ROOT, input=key + "\n", capture_output=True, text=True, check=True, timeout=30,
    ).stdout  # fmt: skip
    assert hashed.strip() == entry
    assert main(["new", "not a name"]) == 2
    assert main(["frobnicate"]) == 2


def test_an_entry_may_name_the_operator_role() -> None:
    """``NAME:sha256:HEX:operator`` makes an operator's key; entries without a role stay
    a client's, and a role other than the two known is refused."""
    key = new_key()
    ring = Keyring(env_entries(f"{API_KEYS},{entry_for('ops', key, 'operator')}"))
    assert entry_for("ops", key, "operator").endswith(":operator")
    assert ring.identify(f"Bearer {key}").role == "operator"
    assert ring.identify(f"Bearer {ALICE}").role == "client"
    assert ring.find(ALICE).client == "alice"
    found = ring.find(key)
    assert ring.by_fingerprint(found.fingerprint) == found
    with pytest.raises(ConfigError):
        Settings.from_env({"JOBPOOL_API_KEYS": f"{entry_for('x', key)}:admin"})


def test_one_key_with_two_roles_is_refused() -> None:
    """The same key configured as a client's and an operator's is a configuration error."""
    key = new_key()
    with pytest.raises(ConfigError, match="two roles"):
        Keyring(env_entries(f"{entry_for('a', key)},{entry_for('a', key, 'operator')}"))


def test_keys_command_makes_an_operator_key() -> None:
    """python -m service.keys new NAME --role operator prints an operator's entry."""
    out = subprocess.run(
        [sys.executable, "-m", "service.keys", "new", "ops", "--role", "operator"],
        cwd=ROOT, capture_output=True, text=True, check=True, timeout=30,
    ).stdout  # fmt: skip
    lines = dict(line.split(None, 1) for line in out.splitlines())
    entry = Keyring(env_entries(lines["entry:"])).identify(f"Bearer {lines['key:']}")
    assert (entry.client, entry.role) == ("ops", "operator")
    assert main(["new", "ops", "--role", "root"]) == 2
