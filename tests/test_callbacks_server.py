"""Callbacks on the real server: a worker SIGKILLed while it POSTs leaves the callback to
be sent again after the restart; on a fleet, a host SIGKILLed mid-POST leaves it to another
host. The receiver verifies each POST with the ``standardwebhooks`` verifier."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from service.callbacks.signing import new_secret
from tests.receiver import Receiver
from tests.server import Server
from tests.test_fleet import fleet_env, until

SECRET = new_secret()


@pytest.fixture
def callback_env(tmp_path: Path) -> dict[str, str]:
    """alice's secret, the guard lifted for the loopback receiver, a short lease (a 2 s POST
    timeout: the lease is 7 s) and fast retries."""
    path = tmp_path / "callback-secrets"
    path.write_text(f"alice {SECRET}\n")
    return {
        "JOBPOOL_CALLBACK_SECRETS_FILE": str(path),
        "JOBPOOL_CALLBACK_ALLOW_PRIVATE": "1",
        "JOBPOOL_CALLBACK_TIMEOUT_MS": "2000",
        "JOBPOOL_CALLBACK_RETRY_MAX_S": "1",
    }


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    with Receiver(SECRET) as rx:
        yield rx


def callback_state(srv: Server, job_id: str) -> str:
    doc = srv.get(f"/v1/jobs/{job_id}").json()
    return str(doc["callback"]["state"])


def test_a_worker_killed_mid_post_sends_the_callback_after_its_restart(
    server_factory: Callable[..., Server], callback_env: dict[str, str], receiver: Receiver
) -> None:
    """The job's end is written and its POST is in flight when the whole server is
    SIGKILLed; started again on the same state, it sends the callback again once the lease
    runs out, with the same webhook-id, and records it delivered."""
    srv = server_factory(env=callback_env)
    receiver.hold()
    r = srv.post("/test/jobs/test.echo", json={"x": 1}, headers={"Job-Callback": receiver.url})
    assert r.status == 202, r
    job_id = r.json()["job"]
    (first,) = receiver.wait_for(1)  # the POST arrived and waits for its answer
    assert srv.wait_final(job_id)["state"] == "succeeded"
    srv.kill_all()
    receiver.release()
    srv.start()
    first, second = receiver.wait_for(2)
    assert first.verified
    assert second.verified
    assert first.id == second.id == job_id
    assert second.json["state"] == "succeeded"
    until(lambda: callback_state(srv, job_id) == "delivered", "the callback is delivered")
    assert srv.get(f"/v1/jobs/{job_id}").json()["callback"]["attempts"] == 2


def test_on_a_fleet_a_host_killed_mid_post_leaves_the_callback_to_another(
    server_factory: Callable[..., Server],
    callback_env: dict[str, str],
    receiver: Receiver,
    redis_url: str,
) -> None:
    """Host a runs a job and is SIGKILLed while it POSTs the callback; host b, on the same
    Redis, sends it once the lease runs out (same webhook-id), and either host reads it as
    delivered."""
    env = fleet_env(redis_url, **callback_env)
    a = server_factory("a", env=env)
    b = server_factory("b", env=env)
    b.stop()  # only a can take the delivery
    receiver.hold()
    r = a.post("/test/jobs/test.echo", json={"x": 2}, headers={"Job-Callback": receiver.url})
    assert r.status == 202, r
    job_id = r.json()["job"]
    receiver.wait_for(1)
    a.kill_all()
    receiver.release()
    b.start()
    first, second = receiver.wait_for(2)
    assert second.verified
    assert first.id == second.id == job_id
    until(lambda: callback_state(b, job_id) == "delivered", "b delivers it")
