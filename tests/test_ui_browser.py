"""The dashboard in a real browser (headless Chromium) against the real server.

One server for the module (one worker, one io thread, so a second job queues behind a
first), pages opened as an operator and two clients; the screenshots in docs/ come from
these tests (``make screenshots``).
"""

from __future__ import annotations

import os
import re
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.browser import CHROMIUM_ARGS, DESKTOP, PHONE, chromium_binary, screenshot_dir
from tests.clients import ALICE, BOB, OPS, WITH_OPERATOR
from tests.conftest import SEED_BATCH
from tests.imagegen import encode, photo_image
from tests.server import Server

pytestmark = pytest.mark.server

#: Seconds a page may take to show what a test waits for (polls come every second).
SHOWN_WITHIN_MS = 20_000


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """One worker with one io thread: a job waiting for a file holds the pool."""
    state = tmp_path_factory.mktemp("ui") / "state"
    env = {
        "JOBPOOL_UI": "on", "JOBPOOL_UI_POLL_S": "1", "JOBPOOL_API_KEYS": WITH_OPERATOR,
        "JOBPOOL_IO_THREADS": "1", "JOBPOOL_CPU_WORKERS": "2",
    }  # fmt: skip
    with Server(state, env=env, workers=1) as srv:
        yield srv


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    binary = chromium_binary()
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        chromium = pw.chromium.launch(executable_path=binary, args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


@pytest.fixture(scope="module")
def shots(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return screenshot_dir(tmp_path_factory.mktemp("screenshots"))


def log_in(browser: Any, server: Server, key: str, viewport: dict[str, int] = DESKTOP) -> Any:
    """A new browser context logged in with ``key``; its page is on the overview."""
    context = browser.new_context(viewport=viewport)
    context.set_default_timeout(SHOWN_WITHIN_MS)
    page = context.new_page()
    page.goto(server.url("/ui"))
    assert "/ui/login" in page.url  # no session: the login form
    page.get_by_label("API key").fill(key)
    page.get_by_role("button", name="Log in").click()
    page.wait_for_url(re.compile(r"/ui$"))
    return page


def legend_value(page: Any, chart: str, series: int) -> float:
    text = page.locator(f'figure[data-chart="{chart}"] .legend li.s{series} b').inner_text()
    number = re.match(r"[\d.,]+", text)
    return float(number.group().replace(",", "")) if number else 0.0


def test_log_in_and_the_session_cookie_holds_no_key(browser: Any, server: Server,
                                                    shots: Path) -> None:  # fmt: skip
    """The login form takes a key and sets an HttpOnly, Secure, SameSite=Strict cookie that
    does not contain the key; a wrong key is refused on the form."""
    context = browser.new_context(viewport=DESKTOP)
    page = context.new_page()
    page.goto(server.url("/ui/jobs"))
    page.screenshot(path=str(shots / "login.png"))
    page.get_by_label("API key").fill("jp_not-a-key")
    page.get_by_role("button", name="Log in").click()
    assert page.get_by_role("alert").inner_text() == "That key is not valid."
    page.get_by_label("API key").fill(ALICE)
    page.get_by_role("button", name="Log in").click()
    page.wait_for_url(re.compile(r"/ui/jobs$"))  # back to the page first asked for
    (cookie,) = context.cookies()
    assert cookie["name"] == "__Host-jobpool-session"
    assert (cookie["httpOnly"], cookie["secure"], cookie["sameSite"]) == (True, True, "Strict")
    assert ALICE not in cookie["value"]
    assert ALICE not in page.content()
    page.get_by_role("button", name="Log out").click()
    page.wait_for_url(re.compile(r"/ui/login$"))
    assert context.cookies() == []
    context.close()


def test_a_submitted_batch_appears_and_turns_succeeded(browser: Any, server: Server,
                                                       shots: Path) -> None:  # fmt: skip
    """A client's job list shows a batch submitted through the API, and its state changes
    to succeeded without a reload."""
    page = log_in(browser, server, ALICE)
    page.goto(server.url("/ui/jobs"))
    items = {"items": ["a", "b", "c", "d"], "options": {"seconds": 0.4}}
    job = server.post("/test/batch/test.slow_item", json=items).json()["job"]
    row = page.locator(f'tr[data-job="{job}"]')
    row.wait_for()
    row.locator(".state-succeeded").wait_for()
    assert page.evaluate("performance.getEntriesByType('navigation').length") == 1
    server.post("/v1/parcels", json=SEED_BATCH)
    page.locator("tr[data-job]").nth(1).wait_for()
    page.screenshot(path=str(shots / "jobs.png"), full_page=True)
    page.context.close()


def test_the_charts_move_under_load(browser: Any, server: Server, shots: Path) -> None:
    """An operator's overview charts jobs per second above zero while batches are sent,
    refreshed in place, and lists the host's processes."""
    page = log_in(browser, server, OPS)
    stop = threading.Event()

    def load() -> None:
        deadline = time.monotonic() + 90
        while not stop.is_set() and time.monotonic() < deadline:
            server.post("/v1/parcels", json=SEED_BATCH, key=BOB)
            time.sleep(0.02)

    sender = threading.Thread(target=load, daemon=True)
    sender.start()
    try:
        deadline = time.monotonic() + SHOWN_WITHIN_MS / 1000
        accepted = 0.0
        while time.monotonic() < deadline and accepted <= 0:
            page.wait_for_timeout(500)
            accepted = legend_value(page, "jobs", 0)
        assert accepted > 0
        # A few more points on the lines; for the README's screenshot, a minute's worth.
        page.wait_for_timeout(40_000 if os.environ.get("JOBPOOL_SCREENSHOTS") else 3000)
        assert legend_value(page, "requests", 0) > 0
        page.screenshot(path=str(shots / "overview.png"), full_page=True)
        page.set_viewport_size(PHONE)
        page.wait_for_timeout(1500)
        page.screenshot(path=str(shots / "overview-phone.png"), full_page=True)
    finally:
        stop.set()
        sender.join(10)
    kinds = page.locator("#hosts tbody td:first-child").all_inner_texts()
    assert kinds[:2] == ["master", "worker"]
    assert page.locator("#clients th", has_text="bob").count() == 1
    assert page.evaluate("performance.getEntriesByType('navigation').length") == 1
    page.context.close()


def test_cancel_a_queued_job_from_its_page(browser: Any, server: Server, tmp_path: Path) -> None:
    """A job queued behind another can be cancelled with its page's button (the form's
    token is checked), and the page then says so."""
    release = tmp_path / "release"
    holder = server.post("/test/jobs/test.wait_for", json={"path": str(release)}).json()["job"]
    queued = server.post("/v1/echo", json={"n": 1}).json()["job"]
    try:
        assert server.get(f"/v1/jobs/{queued}").json()["state"] == "queued"
        page = log_in(browser, server, ALICE)
        page.goto(server.url(f"/ui/jobs/{queued}"))
        assert page.locator("#job-state").inner_text() == "queued"
        page.get_by_role("button", name="Cancel job").click()
        page.get_by_role("status").wait_for()
        assert page.get_by_role("status").inner_text() == "The job was cancelled."
        assert page.locator("#job-state").inner_text() == "cancelled"
        assert server.get(f"/v1/jobs/{queued}").json()["state"] == "cancelled"
        page.context.close()
    finally:
        release.write_text("")
        server.wait_final(holder)


def test_a_client_cannot_open_another_clients_job(browser: Any, server: Server) -> None:
    """Bob gets the same not-found page for alice's job as for a job that does not exist;
    an operator opens it."""
    job = server.post("/v1/echo", json={"secret": "alice's"}).json()["job"]
    server.wait_final(job)
    page = log_in(browser, server, BOB)
    answer = page.goto(server.url(f"/ui/jobs/{job}"))
    assert answer is not None
    assert answer.status == 404
    assert "alice's" not in page.content()
    assert page.get_by_role("heading", level=1).inner_text() == "Job not found"
    page.context.close()
    page = log_in(browser, server, OPS)
    answer = page.goto(server.url(f"/ui/jobs/{job}"))
    assert answer is not None
    assert answer.status == 200
    assert "alice's" in page.locator(".result-text").inner_text()
    page.context.close()


def test_an_image_result_is_shown(browser: Any, server: Server, shots: Path) -> None:
    """A thumbnail job's page shows the image it made, at the size it was made."""
    photo = encode(photo_image(1200, 800, seed=3), "jpeg", quality=85)
    submitted = server.post(
        "/v1/images?op=thumbnail&width=480&height=480&format=png", body=photo,
        headers={"Content-Type": "image/jpeg"},
    )  # fmt: skip
    assert submitted.status == 202, submitted
    job = submitted.json()["job"]
    assert server.wait_final(job)["state"] == "succeeded"
    page = log_in(browser, server, ALICE)
    page.goto(server.url(f"/ui/jobs/{job}"))
    image = page.get_by_role("img", name=f"The image job {job} made")
    image.wait_for()
    page.wait_for_function("(img) => img.complete", arg=image.element_handle())
    assert page.evaluate("(img) => img.naturalWidth", image.element_handle()) == 480
    page.screenshot(path=str(shots / "job.png"), full_page=True)
    page.set_viewport_size(PHONE)
    page.screenshot(path=str(shots / "job-phone.png"), full_page=True)
    page.context.close()


def test_a_failed_job_runs_again_from_its_page(browser: Any, server: Server) -> None:
    """ "Run again" on a finished job submits a new job with the same name and arguments,
    and opens its page."""
    first = server.post("/test/jobs/test.fail", json={"message": "boom"}).json()["job"]
    assert server.wait_final(first)["state"] == "failed"
    page = log_in(browser, server, ALICE)
    page.goto(server.url(f"/ui/jobs/{first}"))
    assert "RuntimeError: boom" in page.locator(".error-text").inner_text()
    page.get_by_role("button", name="Run again").click()
    page.wait_for_url(re.compile(r"note=retried"))
    again = page.url.split("/ui/jobs/")[1].split("?")[0]
    assert again != first
    doc = server.wait_final(again)
    assert (doc["job"], doc["state"], doc["error"]) == ("test.fail", "failed", "RuntimeError: boom")
    page.locator(".state-failed").wait_for()
    page.context.close()
