"""The bucket arithmetic, once: the Python the host runs and the Lua the fleet's Redis runs
agree to the bit on the same cases (a table, then Hypothesis), in a real Redis."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import redis
from hypothesis import given
from hypothesis import settings as examples
from hypothesis import strategies as st

from service.clients import fleet
from service.clients.bucket import TAKE_LUA, Bucket, Lease, lease_size, take
from service.jobs.redis.scripts import PRELUDE
from tests.redis_server import RedisServer

#: ARGV: tokens ('' for an absent bucket), stamp, now, rate, burst, most, back.
RUN_TAKE = (
    TAKE_LUA
    + r"""
local tokens = nil
if ARGV[1] ~= '' then tokens = tonumber(ARGV[1]) end
local grant, left = take(tokens, tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4]),
                         tonumber(ARGV[5]), tonumber(ARGV[6]), tonumber(ARGV[7]))
return {string.format('%.17g', grant), string.format('%.17g', left)}
"""
)

Case = tuple[float | None, float, float, float, float, int, float]

#: (tokens, stamp, now, rate, burst, most, back), each a rule of take().
CASES: dict[str, Case] = {
    "an absent bucket is full": (None, 0.0, 5.0, 2.0, 10.0, 50, 0.0),
    "the rate refills it": (0.0, 100.0, 101.25, 2.0, 10.0, 50, 0.0),
    "never past the burst": (3.0, 100.0, 1e6, 2.0, 10.0, 50, 0.0),
    "a clock that went back adds nothing": (4.0, 100.0, 90.0, 2.0, 10.0, 50, 0.0),
    "what a lease gives back counts": (0.0, 100.0, 100.0, 2.0, 10.0, 50, 3.0),
    "given back, still never past the burst": (9.5, 100.0, 100.0, 2.0, 10.0, 50, 3.0),
    "under one token: nothing": (0.999, 100.0, 100.0, 2.0, 10.0, 50, 0.0),
    "one token: one": (1.0, 100.0, 100.0, 2.0, 10.0, 50, 0.0),
    "at most half of what is there": (9.0, 100.0, 100.0, 1000.0, 400.0, 50, 0.0),
    "at most what was asked for": (400.0, 100.0, 100.0, 1000.0, 400.0, 50, 0.0),
    "fractions of time and tokens": (0.3, 1000.1, 1000.1105, 1000.0, 100.0, 12, 0.0),
}


@pytest.fixture(scope="module")
def lua(redis_session: RedisServer) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(redis_session.url)
    yield client
    client.close()


def in_lua(client: redis.Redis, case: Case) -> tuple[float, float]:
    tokens, *rest = case
    argv = ["" if tokens is None else repr(tokens), *(repr(value) for value in rest)]
    grant, left = client.eval(RUN_TAKE, 0, *argv)  # type: ignore[misc]
    return float(grant), float(left)


def in_python(case: Case) -> tuple[float, float]:
    tokens, stamp, now, rate, burst, most, back = case
    return take(tokens, stamp, now, rate=rate, burst=burst, most=most, back=back)


@pytest.mark.parametrize("case", CASES.values(), ids=CASES.keys())
def test_lua_and_python_agree_on_each_rule(lua: redis.Redis, case: Case) -> None:
    """Each rule of take() gives the same grant and the same tokens left in Lua as in Python."""
    assert in_lua(lua, case) == in_python(case)


def test_the_rules_say_what_they_say() -> None:
    """The table's cases mean what their names say (so agreeing on them is worth something)."""
    assert in_python(CASES["an absent bucket is full"]) == (5, 5.0)
    assert in_python(CASES["never past the burst"]) == (5, 5.0)
    assert in_python(CASES["a clock that went back adds nothing"]) == (2, 2.0)
    assert in_python(CASES["given back, still never past the burst"]) == (5, 5.0)
    assert in_python(CASES["under one token: nothing"]) == (0, 0.999)
    assert in_python(CASES["one token: one"]) == (1, 0.0)
    assert in_python(CASES["at most half of what is there"]) == (4, 5.0)
    assert in_python(CASES["at most what was asked for"]) == (50, 350.0)


times = st.floats(0, 1e9, allow_nan=False)
cases = st.tuples(
    st.none() | st.floats(0, 1e6, allow_nan=False),
    times,
    times,
    st.floats(1e-3, 1e9, allow_nan=False),
    st.integers(1, 10**6).map(float),
    st.integers(1, 10**4),
    st.floats(0, 1e4, allow_nan=False),
)


@examples(max_examples=300, deadline=None, derandomize=True)
@given(case=cases)
def test_lua_and_python_agree_on_any_bucket(lua: redis.Redis, case: Case) -> None:
    """For any bucket, time, lease asked for and tokens given back, Lua and Python agree."""
    assert in_lua(lua, case) == in_python(case)


@pytest.mark.parametrize("held", [None, 3.5], ids=["absent", "stamped ahead"])
def test_the_fleets_script_takes_by_the_same_arithmetic(
    lua: redis.Redis, held: float | None
) -> None:
    """The fleet's own script, on a bucket whose answer does not depend on Redis's clock
    (absent, or stamped ahead of it), grants and keeps what take() says."""
    key = "test:bucket:alice"
    lua.delete(key)
    if held is not None:
        lua.hset(key, mapping={"tokens": repr(held), "stamp": "1e12"})  # ahead: adds nothing
    rate, burst, most, back = 1000.0, 40.0, 4, 1.0
    script = PRELUDE + fleet.TAKE
    argv = ["test:", "alice", repr(rate), repr(burst), most, repr(back), "1.0"]
    granted, left = lua.eval(script, 0, *argv)  # type: ignore[misc]
    expected = take(held, 1e12, 0.0, rate=rate, burst=burst, most=most, back=back)
    assert (int(granted), float(left)) == expected
    assert float(lua.hget(key, "tokens")) == expected[1]  # type: ignore[arg-type]


def test_a_lease_spends_what_the_bucket_granted_then_gives_back_the_rest() -> None:
    """A lease spends its tokens until it runs out; then they go back with the next refill,
    with what was granted past its size."""
    bucket = Bucket(rate=1000.0, burst=400)
    assert bucket.lease_max == lease_size(1000.0, 400.0) == 50
    lease = Lease()
    assert not lease.spend(0.0)
    assert lease.most(bucket.lease_max) == 50
    lease.fill(60, now=0.0, lease_max=bucket.lease_max)  # 10 past its size: owed back
    assert [lease.spend(0.01) for _ in range(51)] == [True] * 50 + [False]
    lease.fill(3, now=0.02, lease_max=bucket.lease_max)
    assert lease.spend(0.03)
    assert lease.give_back(1.0) == 10 + 2  # run out: its 2 left go back with the 10 owed
    assert lease.give_back(1.0) == 0
    assert bucket.retry_after_s(0.25) == 1
    assert Bucket(rate=0.01, burst=1).retry_after_s(0.5) == 50
