"""API keys and host-wide client limits on their own (no server)."""

from __future__ import annotations

import multiprocessing
import multiprocessing.synchronize
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from service.client_limits import ClientLimits
from service.config import Settings
from service.errors import ConfigError, RateLimited, TooManyJobs, Unauthorized
from service.keys import (
    Keyring,
    digest,
    entry_for,
    env_entries,
    main,
    new_key,
    parse_entries,
)
from service.limits import HostLimits
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


# -- limits --------------------------------------------------------------------------


def limits(tmp_path: Path, clock: Clock, **kw: float) -> HostLimits:
    options = {"rate": 0.0, "burst": 1, "max_inflight": 0, **kw}
    h = HostLimits(tmp_path / "limits", clock=clock, **options)  # type: ignore[arg-type]
    h.open()
    return h


async def test_token_bucket_allows_a_burst_then_the_rate(tmp_path: Path) -> None:
    """burst 3 at 2/s: three at once, then one each half second; Retry-After rounds up."""
    clock = Clock()
    h = limits(tmp_path, clock, rate=2.0, burst=3)
    for _ in range(3):
        await h.take("alice")
    with pytest.raises(RateLimited) as info:
        await h.take("alice")
    assert info.value.retry_after_s == 1
    await h.take("bob")  # another client has its own bucket
    clock.now += 0.5
    await h.take("alice")
    with pytest.raises(RateLimited):
        await h.take("alice")
    clock.now += 100
    for _ in range(3):
        await h.take("alice")
    with pytest.raises(RateLimited):
        await h.take("alice")
    h.close()


async def test_two_workers_share_one_bucket_and_one_cap(tmp_path: Path) -> None:
    """Two HostLimits on one directory (two workers) draw from the same budget."""
    clock = Clock()
    one = limits(tmp_path, clock, rate=1.0, burst=4, max_inflight=3)
    two = limits(tmp_path, clock, rate=1.0, burst=4, max_inflight=3)
    assert one.slot != two.slot
    await one.take("alice")
    await two.take("alice")
    await one.take("alice")
    await two.take("alice")
    with pytest.raises(RateLimited):
        await one.take("alice")
    one.acquire("alice")
    two.acquire("alice")
    two.acquire("alice")
    with pytest.raises(TooManyJobs):
        one.acquire("alice")
    one.acquire("bob")
    assert one.inflight("alice") == two.inflight("alice") == 3
    two.release("alice")
    one.acquire("alice")
    two.close()  # a worker that stops gives back what it counted
    assert one.inflight("alice") == 2
    one.close()


async def take_until_each_refuses(client: str, *workers: ClientLimits) -> int:
    """Take tokens for ``client`` from each worker in turn until every one has refused
    once; how many were admitted in all."""
    admitted, refused = 0, [False] * len(workers)
    while not all(refused):
        for n, worker in enumerate(workers):
            try:
                await worker.take(client)
            except RateLimited:
                refused[n] = True
            else:
                admitted += 1
    return admitted


async def test_leased_tokens_never_admit_more_than_the_bucket(tmp_path: Path) -> None:
    """With leases (rate 1000/s, burst 100), two workers together admit exactly the burst."""
    clock = Clock()
    one = limits(tmp_path, clock, rate=1000.0, burst=100)
    two = limits(tmp_path, clock, rate=1000.0, burst=100)
    assert one.lease_max > 1
    assert await take_until_each_refuses("alice", one, two) == 100
    clock.now += 0.0105  # 10.5 tokens later: 10 more, whichever worker asks
    for _ in range(10):
        await two.take("alice")
    with pytest.raises(RateLimited):
        await two.take("alice")
    one.close()
    two.close()


async def test_zero_switches_each_limit_off(tmp_path: Path) -> None:
    """rate 0 and max_inflight 0: nothing is refused and no table is made."""
    h = limits(tmp_path, Clock(), rate=0.0, max_inflight=0)
    for _ in range(10_000):
        await h.take("alice")
        h.acquire("alice")
    assert not (tmp_path / "limits").exists()


def test_counts_survive_a_restart_only_as_far_as_resumed_jobs(tmp_path: Path) -> None:
    """force counts resumed jobs over the cap; release never goes below what was counted."""
    h = limits(tmp_path, Clock(), max_inflight=2)
    for _ in range(3):
        h.force("alice")
    assert h.inflight("alice") == 3
    with pytest.raises(TooManyJobs):
        h.acquire("alice")
    for _ in range(5):
        h.release("alice")
    assert h.inflight("alice") == 0
    h.close()


def hold_jobs(
    directory: str, owner: str, count: int, ready: multiprocessing.synchronize.Event
) -> None:
    """A worker process: count ``count`` jobs of ``owner`` in flight, then wait to be killed."""
    h = HostLimits(Path(directory), rate=0.0, burst=1, max_inflight=100)
    h.open()
    for _ in range(count):
        h.acquire(owner)
    ready.set()
    signal.pause()


def test_a_killed_worker_does_not_hold_a_clients_jobs_forever(tmp_path: Path) -> None:
    """Another process's counts apply here; SIGKILL it and the next refusal sweeps them."""
    clock = Clock()
    ctx = multiprocessing.get_context("spawn")
    ready = ctx.Event()
    child = ctx.Process(target=hold_jobs, args=(str(tmp_path / "limits"), "alice", 3, ready))
    child.start()
    try:
        assert ready.wait(60)
        h = limits(tmp_path, clock, max_inflight=4)
        assert h.inflight("alice") == 3
        h.acquire("alice")
        with pytest.raises(TooManyJobs):
            h.acquire("alice")
    finally:
        assert child.pid is not None
        os.kill(child.pid, signal.SIGKILL)
        child.join(30)
    with pytest.raises(TooManyJobs):
        h.acquire("alice")  # swept less than a second ago: not yet
    clock.now += 1.5
    h.acquire("alice")  # the dead worker's 3 are gone; ours are 2 now
    assert h.inflight("alice") == 2
    h.close()
    again = limits(tmp_path, clock, max_inflight=4)  # a new worker finds a clean table
    assert again.inflight("alice") == 0
    again.close()
