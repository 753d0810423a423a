"""The files a host's workers share: made once by the first, read again when changed."""

from __future__ import annotations

import logging
import multiprocessing
import secrets
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import pytest

from service.callbacks.secrets import CallbackSecrets
from service.callbacks.signing import new_secret
from service.errors import ConfigError
from service.hostfiles import CHECK_S, made_once


class Clock:
    """A clock the test moves by hand."""

    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def make_value(path: str) -> str:
    return made_once(Path(path), lambda: secrets.token_hex(8))


def test_processes_starting_at_once_agree_on_the_value_made_once(tmp_path: Path) -> None:
    """Several processes making the same file at once all read the one value linked first."""
    path = tmp_path / "state" / "value"
    context = multiprocessing.get_context("forkserver")
    with ProcessPoolExecutor(4, mp_context=context) as pool:
        values = list(pool.map(make_value, [str(path)] * 16, timeout=60))
    assert len(set(values)) == 1
    assert path.read_text().strip() == values[0]
    assert [p.name for p in path.parent.iterdir()] == ["value"]  # no file left aside
    assert path.stat().st_mode & 0o777 == 0o600


def test_a_value_made_once_is_kept(tmp_path: Path) -> None:
    """A file already there is read, never made again."""
    path = tmp_path / "value"
    path.write_text("kept\n")
    assert made_once(path, lambda: "new") == "kept"


def test_callback_secrets_are_read_again_when_the_file_changes(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A changed secrets file applies at the next check; a broken one keeps the previous
    secrets, logged without them."""
    clock = Clock()
    old, rotated = new_secret(), new_secret()
    path = tmp_path / "secrets"
    path.write_text(f"alice {old}\n")
    held = CallbackSecrets(path, clock=clock)
    first = held.of("alice")
    assert len(first) == 1
    path.write_text(f"alice {old} {rotated}\n")
    assert held.of("alice") == first  # not looked at yet
    clock.now += CHECK_S + 0.5
    assert len(held.of("alice")) == 2
    path.write_text(f"alice {old} whsec_not-base64\n")
    clock.now += CHECK_S + 0.5
    with caplog.at_level(logging.ERROR):
        assert len(held.of("alice")) == 2
    assert "not reloaded, the previous secrets stay" in caplog.text
    assert old not in caplog.text


def test_an_unreadable_secrets_file_stops_the_start(tmp_path: Path) -> None:
    """A secrets file missing or broken at start-up is a one-line ConfigError."""
    with pytest.raises(ConfigError, match="JOBPOOL_CALLBACK_SECRETS_FILE"):
        CallbackSecrets(tmp_path / "absent")
    broken = tmp_path / "broken"
    broken.write_text("alice nonsense\n")
    with pytest.raises(ConfigError, match="line 1"):
        CallbackSecrets(broken)
