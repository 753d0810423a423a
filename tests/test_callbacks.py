"""Completion callbacks in-process, on the real SQLite store, to a real local receiver that
verifies every POST with the ``standardwebhooks`` package's verifier: after success, failure
and cancel; a receiver that answers 500, 429 or nothing for a while; giving up and sending
again; the SSRF guard at submit and at delivery."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from falcon import testing

from service.callbacks.secrets import CallbackSecrets
from service.callbacks.sender import CallbackSender
from service.callbacks.signing import new_secret
from service.jobs.record import Delivery
from tests.receiver import Receiver
from tests.test_inprocess import final
from tests.upstream import StaticResolver

SECRET = new_secret()
#: Fast retries: a test waits for seconds, not minutes.
FAST = {"callback_allow_private": True, "callback_retry_max_s": 1, "callback_timeout_ms": 2000}


@pytest.fixture
def secrets_file(tmp_path: Path) -> Path:
    path = tmp_path / "callback-secrets"
    path.write_text(f"# client secrets\nalice {SECRET}\n")
    return path


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    with Receiver(SECRET) as rx:
        yield rx


@pytest.fixture
async def app(
    conductor_for: Callable[..., testing.ASGIConductor], secrets_file: Path
) -> AsyncIterator[testing.ASGIConductor]:
    """The app with alice's callback secret and the guard lifted for the loopback receiver."""
    async with conductor_for(callback_secrets_file=secrets_file, **FAST) as c:
        yield c


async def until_callback(
    c: testing.ASGIConductor,
    job_id: str,
    check: Callable[[dict[str, Any]], bool],
    within: float = 30,
) -> dict[str, Any]:
    """The job's document once its ``callback`` passes ``check``."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    doc: dict[str, Any] = {}
    while loop.time() < deadline:
        doc = (await c.simulate_get(f"/v1/jobs/{job_id}")).json
        if "callback" in doc and check(doc["callback"]):
            return doc
        await asyncio.sleep(0.05)
    raise AssertionError(f"job {job_id}: callback never as wanted: {doc}")


def delivered(cb: dict[str, Any]) -> bool:
    return bool(cb["state"] == "delivered")


async def submit(
    c: testing.ASGIConductor,
    name: str,
    url: str,
    args: dict[str, Any] | None = None,
    **headers: str,
) -> str:
    r = await c.simulate_post(
        f"/test/jobs/{name}", json={"x": 1} if args is None else args,
        headers={"Job-Callback": url, **headers},
    )  # fmt: skip
    assert r.status_code == 202, r.text
    job_id: str = r.json["job"]
    return job_id


async def test_a_job_that_succeeds_posts_its_document_signed(
    app: testing.ASGIConductor, receiver: Receiver
) -> None:
    """The ended job's document is POSTed once, verified by the Standard Webhooks verifier,
    with the job's id as webhook-id; the job's document then says it was delivered."""
    job_id = await submit(app, "test.echo", receiver.url)
    (got,) = await receiver.arrived(1)
    assert got.verified
    assert got.id == job_id
    assert got.headers["content-type"] == "application/json"
    assert got.json["id"] == job_id
    assert got.json["state"] == "succeeded"
    assert "callback" not in got.json  # the same body on every attempt
    doc = await until_callback(app, job_id, delivered)
    assert doc["callback"]["url"] == receiver.url
    assert (doc["callback"]["attempts"], doc["callback"]["last_status"]) == (1, 200)
    assert doc["callback"]["delivered_at"] is not None
    await asyncio.sleep(0.6)  # a few polls of the outbox: nothing more is sent
    assert len(receiver.received) == 1


async def test_failed_and_cancelled_jobs_post_their_end_too(
    app: testing.ASGIConductor, receiver: Receiver
) -> None:
    """A job that fails, one cancelled before it starts and one stopped while it runs each
    POST their final document."""
    failed = await submit(app, "test.fail", receiver.url, {"message": "boom"})
    delayed = await submit(app, "test.echo", receiver.url, **{"Job-Delay": "600"})
    running = await submit(app, "test.cooperative", receiver.url, {})
    assert (await app.simulate_delete(f"/v1/jobs/{delayed}")).status_code == 200
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 30
    while (await app.simulate_get(f"/v1/jobs/{running}")).json["state"] != "running":
        assert loop.time() < deadline
        await asyncio.sleep(0.02)
    assert (await app.simulate_delete(f"/v1/jobs/{running}")).status_code == 200
    got = {r.id: r for r in await receiver.arrived(3)}
    assert all(r.verified for r in got.values())
    assert got[failed].json["state"] == "failed"
    assert got[failed].json["error"] == "RuntimeError: boom"
    assert got[delayed].json["cancel"]["how"] == "dequeued"
    assert (got[running].json["state"], got[running].json["cancel"]["how"]) == (
        "cancelled", "stopped",
    )  # fmt: skip


async def test_a_batch_posts_once_when_it_ends(
    app: testing.ASGIConductor, receiver: Receiver
) -> None:
    """A parcel batch POSTs its document, with its item counts, once."""
    batch = {"Data": [{"id": f"cb{i}", "time": "2020-01-01T00:00:00Z", "data": "d"}
                      for i in range(5)]}  # fmt: skip
    r = await app.simulate_post("/v1/parcels", json=batch, headers={"Job-Callback": receiver.url})
    assert r.status_code == 202
    (got,) = await receiver.arrived(1)
    assert got.verified
    assert got.json["items"] == {"total": 5, "done": 5, "failed": 0}
    await until_callback(app, r.json["job"], delivered)


async def test_a_receiver_answering_500_gets_the_same_message_again(
    app: testing.ASGIConductor, receiver: Receiver
) -> None:
    """After a 500 the callback is sent again, with the same webhook-id and body, and is
    delivered on the 200; the document counts both attempts."""
    receiver.answers = [(500, {})]
    job_id = await submit(app, "test.echo", receiver.url)
    first, second = await receiver.arrived(2)
    assert first.verified
    assert second.verified
    assert first.id == second.id == job_id
    assert first.body == second.body
    doc = await until_callback(app, job_id, delivered)
    assert (doc["callback"]["attempts"], doc["callback"]["last_status"]) == (2, 200)


async def test_retry_after_on_a_429_puts_off_the_next_attempt(
    app: testing.ASGIConductor, receiver: Receiver
) -> None:
    """A 429 with Retry-After: 2 is tried again no sooner than 2 s later (past the backoff
    cap of 1 s), and then delivered."""
    receiver.answers = [(429, {"Retry-After": "2"})]
    job_id = await submit(app, "test.echo", receiver.url)
    doc = await until_callback(
        app, job_id, lambda cb: cb["attempts"] == 1 and cb["last_status"] == 429
    )
    assert doc["callback"]["state"] == "pending"
    assert doc["callback"]["last_error"] == "the receiver answered HTTP 429"
    first, second = await receiver.arrived(2)
    assert second.at - first.at >= 2 - 0.05
    await until_callback(app, job_id, delivered)


async def test_a_receiver_down_for_a_while_gets_it_once_it_is_back(
    app: testing.ASGIConductor, receiver: Receiver
) -> None:
    """Connections refused for a few attempts: the callback stays pending, its error in the
    document; once the receiver listens again it is delivered, with the job's id."""
    receiver.stop()
    job_id = await submit(app, "test.echo", receiver.url)
    doc = await until_callback(app, job_id, lambda cb: cb["attempts"] >= 2)
    assert doc["callback"]["state"] == "pending"
    assert doc["callback"]["last_status"] is None
    assert "cannot connect" in doc["callback"]["last_error"]
    receiver.start()
    (got,) = await receiver.arrived(1)
    assert got.verified
    assert got.id == job_id
    doc = await until_callback(app, job_id, delivered)
    assert doc["callback"]["attempts"] >= 3


async def test_a_callback_given_up_is_kept_and_can_be_sent_again(
    conductor_for: Callable[..., testing.ASGIConductor], secrets_file: Path, receiver: Receiver
) -> None:
    """Past its horizon a failing callback is kept as failed with its last status; POST
    /v1/jobs/{id}/callback sends it again (the same webhook-id), and it is delivered."""
    settings = {**FAST, "callback_horizon_s": 2, "callback_secrets_file": secrets_file}
    async with conductor_for(**settings) as c:
        receiver.answers = [(503, {})] * 1000
        job_id = await submit(c, "test.echo", receiver.url)
        doc = await until_callback(c, job_id, lambda cb: cb["state"] == "failed")
        assert doc["callback"]["last_status"] == 503
        assert "given up after" in doc["callback"]["last_error"]
        tried = len(receiver.received)
        assert tried == doc["callback"]["attempts"] >= 1
        receiver.answers = []
        again = await c.simulate_post(f"/v1/jobs/{job_id}/callback")
        assert again.status_code == 202, again.text
        assert again.json["callback"]["state"] == "pending"
        doc = await until_callback(c, job_id, delivered)
        assert doc["callback"]["attempts"] == tried + 1
        last = receiver.received[-1]
        assert last.verified
        assert last.id == job_id


async def test_a_resend_needs_an_ended_job_with_a_callback(
    app: testing.ASGIConductor, receiver: Receiver
) -> None:
    """POST /v1/jobs/{id}/callback is 409 for a job without a callback or not ended yet,
    and 404 for another client's job."""
    plain = (await app.simulate_post("/test/jobs/test.echo", json={})).json["job"]
    await final(app, plain)
    assert (await app.simulate_post(f"/v1/jobs/{plain}/callback")).status_code == 409
    later = await submit(app, "test.echo", receiver.url, **{"Job-Delay": "600"})
    refused = await app.simulate_post(f"/v1/jobs/{later}/callback")
    assert refused.status_code == 409
    assert refused.headers["content-type"] == "application/problem+json"
    from tests.clients import BOB, bearer

    other = await app.simulate_post(f"/v1/jobs/{later}/callback", headers=bearer(BOB))
    assert other.status_code == 404


@pytest.mark.parametrize(
    "url",
    [
        "http://169.254.169.254/latest/meta-data/",
        "http://[fd00:ec2::254]/",
        "http://127.0.0.1:9/hook",
        "http://localhost/hook",
        "http://2852039166/",  # 169.254.169.254 spelled as one number
        "ftp://example.com/hook",
        "http://user:pw@example.com/hook",
    ],
)
async def test_a_callback_refusable_without_dns_is_422(
    conductor_for: Callable[..., testing.ASGIConductor], secrets_file: Path, url: str
) -> None:
    """With the SSRF guard on, a callback at the metadata service, loopback, localhost or
    not http(s) is refused at submit with a problem naming the header; nothing is stored."""
    async with conductor_for(callback_secrets_file=secrets_file) as c:
        r = await c.simulate_post("/test/jobs/test.echo", json={}, headers={"Job-Callback": url})
        assert r.status_code == 422
        assert r.headers["content-type"] == "application/problem+json"
        assert "Job-Callback refused" in r.json["detail"]
        assert (await c.simulate_get("/v1/jobs")).json["jobs"] == []


async def test_a_client_without_a_secret_cannot_ask_for_callbacks(
    app: testing.ASGIConductor,
) -> None:
    """bob has no line in the secrets file: his Job-Callback is 422, saying why."""
    from tests.clients import BOB, bearer

    r = await app.simulate_post(
        "/test/jobs/test.echo", json={},
        headers={"Job-Callback": "http://127.0.0.1:9/hook", **bearer(BOB)},
    )  # fmt: skip
    assert r.status_code == 422
    assert "JOBPOOL_CALLBACK_SECRETS_FILE" in r.json["detail"]


async def test_the_callback_is_part_of_an_idempotent_request(
    app: testing.ASGIConductor, receiver: Receiver
) -> None:
    """The same Idempotency-Key with another Job-Callback is another request: 422."""
    key = {"Idempotency-Key": '"cb-1"'}
    first = await submit(app, "test.echo", receiver.url, **key)
    again = await submit(app, "test.echo", receiver.url, **key)
    assert again == first
    other = await app.simulate_post(
        "/test/jobs/test.echo", json={"x": 1},
        headers={"Job-Callback": receiver.url + "?other", **key},
    )  # fmt: skip
    assert other.status_code == 422


def test_a_name_that_resolves_to_a_refused_address_fails_at_delivery(
    secrets_file: Path,
) -> None:
    """Past the submit, the guard still checks every address the name resolves to: a name
    pointing at loopback or the metadata service is refused at the POST, for good (no
    retry), and nothing is sent."""
    resolver = StaticResolver({"hooks.example": ["127.0.0.1"], "meta.example": ["169.254.169.254"]})
    sender = CallbackSender(
        CallbackSecrets(secrets_file), timeout_s=1, allow_private=False, url_max=2048,
        resolver=resolver,
    )  # fmt: skip
    for url in ("http://hooks.example:8080/hook", "http://meta.example/latest"):
        answer = sender(Delivery("01j0000000000000000000000a", "alice", url, 1, 0.0), b"{}")
        assert answer.final
        assert answer.status is None
        assert answer.error is not None
        assert "refused URL" in answer.error
    assert resolver.calls == ["hooks.example", "meta.example"]


async def test_two_secrets_sign_each_callback_for_a_rotation(
    conductor_for: Callable[..., testing.ASGIConductor], tmp_path: Path
) -> None:
    """With a second secret beside the first, every callback carries a signature of each:
    a receiver that knows only the old one and one that knows only the new one both
    verify it."""
    old, new = new_secret(), new_secret()
    path = tmp_path / "rotating"
    path.write_text(f"alice {old} {new}\n")
    with Receiver(old, new) as rx:
        async with conductor_for(callback_secrets_file=path, **FAST) as c:
            await submit(c, "test.echo", rx.url)
            (got,) = await rx.arrived(1)
    assert got.verified_by == [0, 1]
    assert len(got.headers["webhook-signature"].split(" ")) == 2
