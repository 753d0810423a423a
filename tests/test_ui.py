"""The dashboard in-process: logins and sessions, who sees what, forms, figures, headers."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
from falcon import testing

from service.app import create_app
from service.config import Settings
from service.keys import env_entries
from service.ui.session import COOKIE, Sessions, local_secret
from tests.clients import ALICE, BOB, OPS, WITH_OPERATOR, bearer
from tests.conftest import SEED_BATCH
from tests.extension import extend

FORM = {"Content-Type": "application/x-www-form-urlencoded"}
#: What the test conductor's requests carry as their origin.
HOST = "falconframework.org"
SAME_SITE = {"Origin": f"http://{HOST}", "Sec-Fetch-Site": "same-origin"}


@pytest.fixture
def ui_settings(make_settings: Callable[..., Settings]) -> Callable[..., Settings]:
    def make(**overrides: Any) -> Settings:
        return make_settings(ui=True, api_keys=env_entries(WITH_OPERATOR), **overrides)

    return make


@pytest.fixture
async def app(ui_settings: Callable[..., Settings]) -> AsyncIterator[testing.ASGIConductor]:
    async with testing.ASGIConductor(create_app(ui_settings(), extend=extend)) as conductor:
        yield conductor


async def log_in(app: testing.ASGIConductor, key: str) -> dict[str, str]:
    """The Cookie header of a session of ``key``."""
    answer = await app.post("/ui/login", body=f"key={key}", headers=FORM | SAME_SITE)
    assert answer.status_code == 303, answer.text
    return {"Cookie": f"{COOKIE}={answer.cookies[COOKIE].value}"}


def csrf_of(page: str) -> str:
    found = re.search(r'name="csrf" value="([^"]+)"', page)
    assert found is not None
    return found.group(1)


async def submit(app: testing.ASGIConductor, key: str = ALICE) -> str:
    answer = await app.post("/v1/parcels", json=SEED_BATCH, headers=bearer(key))
    assert answer.status_code == 202
    job: str = answer.json["job"]
    done = await app.get(f"/v1/jobs/{job}", headers=bearer(key) | {"Prefer": "wait=10"})
    assert done.json["state"] == "succeeded"
    return job


async def delayed(app: testing.ASGIConductor) -> str:
    """A job of alice's, scheduled ten minutes ahead (it waits: it can be cancelled)."""
    answer = await app.post("/test/jobs/test.echo", json={},
                            headers=bearer(ALICE) | {"Job-Delay": "600"})  # fmt: skip
    assert answer.status_code == 202
    job: str = answer.json["job"]
    return job


# -- logging in ----------------------------------------------------------------------


async def test_pages_without_a_session_lead_to_the_login_form(
    app: testing.ASGIConductor,
) -> None:
    """A page asked for without a session answers 303 to the login form, which names it;
    the figures answer 401; a Bearer key does not open a page."""
    answer = await app.get("/ui/jobs?state=failed")
    assert answer.status_code == 303
    assert answer.headers["location"] == "/ui/login?next=%2Fui%2Fjobs%3Fstate%3Dfailed"
    assert (await app.get("/ui/live.json")).status_code == 401
    assert (await app.get("/ui", headers=bearer(ALICE))).status_code == 303
    form = await app.get("/ui/login")
    assert form.status_code == 200
    assert 'type="password"' in form.text


async def test_a_login_sets_a_strict_httponly_secure_cookie(app: testing.ASGIConductor) -> None:
    """A valid key gives a __Host- cookie, HttpOnly, Secure, SameSite=Strict, for the
    session's lifetime, holding no key; the answer goes on to the page first asked for."""
    answer = await app.post(
        "/ui/login", body=f"key={ALICE}&next=/ui/jobs", headers=FORM | SAME_SITE
    )
    assert answer.status_code == 303
    assert answer.headers["location"] == "/ui/jobs"
    cookie = answer.cookies[COOKIE]
    assert (cookie.http_only, cookie.secure, cookie.same_site, cookie.path) == (
        True, True, "Strict", "/",
    )  # fmt: skip
    assert cookie.max_age == 28_800
    assert ALICE not in answer.headers["set-cookie"]
    page = await app.get("/ui/jobs", headers={"Cookie": f"{COOKIE}={cookie.value}"})
    assert page.status_code == 200
    assert ALICE not in page.text


@pytest.mark.parametrize("next_", ["https://evil.example/", "//evil.example/ui", "/v1/jobs"])
async def test_the_login_goes_nowhere_but_the_dashboard(
    app: testing.ASGIConductor, next_: str
) -> None:
    """A ``next`` outside the dashboard (another site, the API) is replaced by /ui."""
    answer = await app.post("/ui/login", body=f"key={ALICE}&next={next_}",
                            headers=FORM | SAME_SITE)  # fmt: skip
    assert answer.headers["location"] == "/ui"


async def test_a_wrong_key_is_refused_on_the_form(app: testing.ASGIConductor) -> None:
    """A wrong key answers the form again with 401 and no cookie; the key is not echoed."""
    answer = await app.post("/ui/login", body="key=jp_wrong-key-123", headers=FORM | SAME_SITE)
    assert answer.status_code == 401
    assert "That key is not valid." in answer.text
    assert "jp_wrong-key-123" not in answer.text
    assert COOKIE not in answer.cookies


async def test_a_login_posted_from_another_site_is_refused(app: testing.ASGIConductor) -> None:
    """A login form another site's page posts (login CSRF) is refused with 403."""
    for headers in ({"Sec-Fetch-Site": "cross-site"}, {"Origin": "https://evil.example"}):
        answer = await app.post("/ui/login", body=f"key={ALICE}", headers=FORM | headers)
        assert answer.status_code == 403
        assert COOKIE not in answer.cookies


async def test_a_tampered_or_expired_cookie_is_no_session(
    ui_settings: Callable[..., Settings], tmp_path: Path
) -> None:
    """A cookie whose signature, fingerprint or expiry was changed, or that has expired,
    or whose key was removed, opens nothing."""
    now = [1_000_000.0]
    settings = ui_settings()
    ring_ok = create_app(settings)  # makes the state dir's secret
    del ring_ok
    secret = local_secret(settings.state_dir)

    async def get_secret() -> bytes:
        return secret

    from service.keys import Keyring

    ring = Keyring(env_entries(WITH_OPERATOR))
    sessions = Sessions(
        ring, get_secret, lifetime_s=60, prefix="/ui", open_paths=frozenset(),
        anonymous=("anonymous", "operator"), clock=lambda: now[0],
    )  # fmt: skip
    _, value = await sessions.login(ALICE)

    class Req:
        def __init__(self, cookie: str) -> None:
            self.cookie = cookie

        def get_cookie_values(self, name: str) -> list[str]:
            return [self.cookie]

    assert (await sessions.visitor(Req(value))).client == "alice"  # type: ignore[arg-type, union-attr]
    version, fingerprint, expiry, nonce, signature = value.split(".")
    forged = [
        f"{version}.{fingerprint}.{int(expiry) + 600}.{nonce}.{signature}",
        f"{version}.{'0' * 32}.{expiry}.{nonce}.{signature}",
        f"{version}.{fingerprint}.{expiry}.{nonce}.{signature[:-2]}AA",
        value + "x",
        "",
    ]
    for bad in forged:
        assert await sessions.visitor(Req(bad)) is None  # type: ignore[arg-type]
    now[0] += 61
    assert await sessions.visitor(Req(value)) is None  # type: ignore[arg-type]
    now[0] -= 61
    ring_without = Keyring(env_entries(WITH_OPERATOR.replace(
        WITH_OPERATOR.split(",")[0] + ",", "")))  # fmt: skip
    sessions.keyring = ring_without
    assert await sessions.visitor(Req(value)) is None  # type: ignore[arg-type]


async def test_the_secret_is_made_once_and_kept_private(tmp_path: Path) -> None:
    """The host's signing secret is 32 random bytes, the same on every read, mode 0600."""
    first = local_secret(tmp_path)
    assert len(first) == 32
    assert local_secret(tmp_path) == first
    assert (tmp_path / "ui-secret").stat().st_mode & 0o777 == 0o600


# -- who sees what ---------------------------------------------------------------------


async def test_a_client_sees_its_own_jobs_an_operator_everyones(
    app: testing.ASGIConductor,
) -> None:
    """Alice's list and pages show her jobs only, bob's job is a 404 to her as an unknown
    id is; the operator lists both and filters by client."""
    mine, bobs = await submit(app, ALICE), await submit(app, BOB)
    alice = await log_in(app, ALICE)
    listing = (await app.get("/ui/jobs", headers=alice)).text
    assert mine in listing
    assert bobs not in listing
    assert (await app.get(f"/ui/jobs/{mine}", headers=alice)).status_code == 200
    for hidden in (bobs, "01m8y5jzn6e7zdbd5q5wsktktf", "nonsense"):
        page = await app.get(f"/ui/jobs/{hidden}", headers=alice)
        assert page.status_code == 404
        assert "Job not found" in page.text
    assert (await app.get(f"/ui/jobs/{bobs}/result", headers=alice)).status_code == 404
    ops = await log_in(app, OPS)
    listing = (await app.get("/ui/jobs", headers=ops)).text
    assert mine in listing
    assert bobs in listing
    only_bob = (await app.get("/ui/jobs?client=bob", headers=ops)).text
    assert bobs in only_bob
    assert mine not in only_bob
    assert (await app.get(f"/ui/jobs/{bobs}", headers=ops)).status_code == 200


async def test_the_list_filters_by_state_name_and_time(app: testing.ASGIConductor) -> None:
    """The list's filters reach the listing: a state, a job name, a time from the form's
    date-time field (UTC); a bad value is said on the page (422)."""
    job = await submit(app, ALICE)
    alice = await log_in(app, ALICE)
    assert job in (await app.get("/ui/jobs?state=succeeded&job=parcel", headers=alice)).text
    assert job not in (await app.get("/ui/jobs?state=failed", headers=alice)).text
    assert job not in (await app.get("/ui/jobs?job=fetch", headers=alice)).text
    assert job in (await app.get("/ui/jobs?created_after=2000-01-01T00:00", headers=alice)).text
    assert (
        job
        not in (await app.get("/ui/jobs?created_before=2000-01-01T00:00:00", headers=alice)).text
    )
    bad = await app.get("/ui/jobs?created_after=yesterday", headers=alice)
    assert bad.status_code == 422
    assert "RFC 3339" in bad.text


async def test_the_figures_show_a_client_only_its_own(app: testing.ASGIConductor) -> None:
    """live.json gives an operator every host and client; a client only its own row."""
    await submit(app, ALICE)
    await submit(app, BOB)
    ops = (await app.get("/ui/live.json", headers=await log_in(app, OPS))).json
    assert [c["client"] for c in ops["clients"]] == ["alice", "bob", "ops"]
    (host,) = ops["hosts"]
    assert host["jobs"]["accepted"] >= 2
    assert host["jobs"]["succeeded"] >= 2
    assert set(host["pools"]) == {"io", "cpu"}
    assert host["pools"]["io"]["slots"] == 8
    assert host["processes"][0]["kind"] == "worker"  # in-process: no gunicorn master
    alice = (await app.get("/ui/live.json", headers=await log_in(app, ALICE))).json
    assert "hosts" not in alice
    (row,) = alice["clients"]
    assert row["client"] == "alice"
    assert row["requests"] >= 2


async def test_an_operator_key_sees_only_its_own_jobs_on_the_api(
    app: testing.ASGIConductor,
) -> None:
    """The API keeps showing an operator's key its own jobs (the dashboard is where an
    operator sees everyone's); its role is known to the request."""
    await submit(app, ALICE)
    page = await app.get("/v1/jobs", headers=bearer(OPS))
    assert page.status_code == 200
    assert page.json["jobs"] == []


# -- forms ---------------------------------------------------------------------------


async def test_cancel_needs_the_forms_token_and_this_origin(app: testing.ASGIConductor) -> None:
    """Cancel from a job's page works with its token; without it, with another session's,
    or posted from another site, it is 403 and the job is untouched."""
    job = await delayed(app)
    alice = await log_in(app, ALICE)
    token = csrf_of((await app.get(f"/ui/jobs/{job}", headers=alice)).text)
    cases = [
        ("", SAME_SITE), ("x" * len(token), SAME_SITE),
        (token, {"Sec-Fetch-Site": "cross-site"}), (token, {"Origin": "https://evil.example"}),
    ]  # fmt: skip
    for given, headers in cases:
        refused = await app.post(f"/ui/jobs/{job}/cancel", body=f"csrf={given}",
                                 headers=alice | FORM | headers)  # fmt: skip
        assert refused.status_code == 403
    doc = await app.get(f"/v1/jobs/{job}", headers=bearer(ALICE))
    assert doc.json["state"] == "scheduled"
    done = await app.post(f"/ui/jobs/{job}/cancel", body=f"csrf={token}",
                          headers=alice | FORM | SAME_SITE)  # fmt: skip
    assert done.status_code == 303
    assert done.headers["location"] == f"/ui/jobs/{job}?note=cancelled"
    doc = await app.get(f"/v1/jobs/{job}", headers=bearer(ALICE))
    assert doc.json["state"] == "cancelled"
    again = await app.post(f"/ui/jobs/{job}/cancel", body=f"csrf={token}",
                           headers=alice | FORM | SAME_SITE)  # fmt: skip
    assert again.status_code == 409
    assert "already ended cancelled" in again.text


async def test_a_token_belongs_to_its_session(app: testing.ASGIConductor) -> None:
    """The form token of one session does not work with another's cookie."""
    job = await delayed(app)
    first, second = await log_in(app, ALICE), await log_in(app, ALICE)
    token = csrf_of((await app.get(f"/ui/jobs/{job}", headers=first)).text)
    assert csrf_of((await app.get(f"/ui/jobs/{job}", headers=second)).text) != token
    refused = await app.post(f"/ui/jobs/{job}/cancel", body=f"csrf={token}",
                             headers=second | FORM | SAME_SITE)  # fmt: skip
    assert refused.status_code == 403


async def test_run_again_submits_the_same_job_for_its_owner(app: testing.ASGIConductor) -> None:
    """An operator's "Run again" on alice's finished batch makes a new batch of the same
    items, alice's; a job that has not finished cannot run again."""
    job = await submit(app, ALICE)
    ops = await log_in(app, OPS)
    token = csrf_of((await app.get(f"/ui/jobs/{job}", headers=ops)).text)
    answer = await app.post(f"/ui/jobs/{job}/retry", body=f"csrf={token}",
                            headers=ops | FORM | SAME_SITE)  # fmt: skip
    assert answer.status_code == 303
    again = answer.headers["location"].split("/ui/jobs/")[1].split("?")[0]
    doc = await app.get(f"/v1/jobs/{again}", headers=bearer(ALICE) | {"Prefer": "wait=10"})
    assert doc.status_code == 200  # alice's
    assert (doc.json["job"], doc.json["state"], doc.json["items"]["total"]) == (
        "parcel", "succeeded", 9,
    )  # fmt: skip
    later = await delayed(app)
    refused = await app.post(f"/ui/jobs/{later}/retry", body=f"csrf={token}",
                             headers=ops | FORM | SAME_SITE)  # fmt: skip
    assert refused.status_code == 409
    assert "only a finished job runs again" in refused.text


async def test_logout_clears_the_cookie(app: testing.ASGIConductor) -> None:
    """Log out (with the form's token) answers with the cookie cleared."""
    alice = await log_in(app, ALICE)
    token = csrf_of((await app.get("/ui", headers=alice)).text)
    answer = await app.post("/ui/logout", body=f"csrf={token}", headers=alice | FORM | SAME_SITE)
    assert answer.status_code == 303
    assert answer.cookies[COOKIE].value == ""
    assert answer.cookies[COOKIE].expires.year == 1970
    assert answer.cookies[COOKIE].secure


# -- the pages themselves ---------------------------------------------------------------


async def test_pages_carry_a_strict_policy_and_are_not_kept(app: testing.ASGIConductor) -> None:
    """Every page: a CSP allowing only this origin's script and style, no framing, no
    caching, no referrer; static files are cached by their content's hash."""
    alice = await log_in(app, ALICE)
    page = await app.get("/ui", headers=alice)
    policy = page.headers["content-security-policy"]
    assert "script-src 'self'" in policy
    assert "frame-ancestors 'none'" in policy
    assert "unsafe-inline" not in policy
    assert page.headers["cache-control"] == "no-store"
    assert page.headers["referrer-policy"] == "no-referrer"
    assert "<script>" not in page.text
    assert " style=" not in page.text
    script = re.search(r'src="(/ui/static/dashboard\.js\?v=\w+)"', page.text)
    assert script is not None
    static = await app.get(script.group(1))  # no session needed
    assert static.status_code == 200
    assert static.headers["content-type"].startswith("text/javascript")
    assert "immutable" in static.headers["cache-control"]
    assert (await app.get("/ui/static/nope.js")).status_code == 404


async def test_a_result_shown_cannot_run_in_the_dashboard(app: testing.ASGIConductor) -> None:
    """A result is answered sandboxed, with nosniff: whatever it holds, it runs nothing."""
    job = await submit(app, ALICE)
    answer = await app.get(f"/ui/jobs/{job}/result", headers=await log_in(app, ALICE))
    assert answer.status_code == 200
    assert "sandbox" in answer.headers["content-security-policy"]
    assert answer.headers["x-content-type-options"] == "nosniff"
    assert answer.json["done"] == 9


async def test_an_error_of_the_page_is_escaped(app: testing.ASGIConductor) -> None:
    """A job's error shows as text: markup in it is escaped."""
    answer = await app.post("/test/jobs/test.fail", json={"message": "<script>x()</script>"},
                            headers=bearer(ALICE))  # fmt: skip
    job = answer.json["job"]
    await app.get(f"/v1/jobs/{job}", headers=bearer(ALICE) | {"Prefer": "wait=10"})
    page = await app.get(f"/ui/jobs/{job}", headers=await log_in(app, ALICE))
    assert "&lt;script&gt;x()&lt;/script&gt;" in page.text
    assert "<script>x()" not in page.text


async def test_the_dashboard_counts_against_the_clients_rate(
    ui_settings: Callable[..., Settings],
) -> None:
    """Pages take tokens of the client's rate as API calls do: past it, 429 (a page)."""
    app = create_app(ui_settings(client_rate=0.001, client_burst=3), extend=extend)
    async with testing.ASGIConductor(app) as conductor:
        alice = await log_in(conductor, ALICE)
        statuses = [(await conductor.get("/ui", headers=alice)).status_code for _ in range(5)]
        assert statuses[:3] == [200, 200, 200]
        assert statuses[-1] == 429


async def test_without_keys_everyone_is_an_operator_without_login(
    make_settings: Callable[..., Settings],
) -> None:
    """JOBPOOL_AUTH=off (local use): no login form, every visitor is anonymous, an
    operator; forms still need their token."""
    app = create_app(make_settings(ui=True, auth=False), extend=extend)
    async with testing.ASGIConductor(app) as conductor:
        assert (await conductor.get("/ui/login")).headers["location"] == "/ui"
        page = await conductor.get("/ui")
        assert page.status_code == 200
        assert "anonymous" in page.text
        assert "operator" in page.text
        assert "Log out" not in page.text
        live = (await conductor.get("/ui/live.json")).json
        assert "hosts" in live


async def test_the_dashboard_is_off_by_default(make_settings: Callable[..., Settings]) -> None:
    """Without JOBPOOL_UI, /ui is not a route."""
    async with testing.ASGIConductor(create_app(make_settings())) as conductor:
        answer = await conductor.get("/ui", headers=bearer(ALICE))
        assert answer.status_code == 404
        assert answer.headers["content-type"] == "application/problem+json"
