"""The page in a real browser: Debian's chromium, headless, driven by Playwright, against `dtb serve`'s own HTTP
server on a free loopback port, answering with the shipped model. Writes a screenshot and the page's timings to
the artifacts folder ($DTB_TEST_ARTIFACTS, else build/test-artifacts). Without chromium or Playwright it skips,
except in CI (CI=true), where it fails: .ci/run installs both."""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from serving_helpers import running

from dynamic_tinybert import LengthConfig, QuestionAnswerer
from dynamic_tinybert.serving import ServerSettings, create_app
from dynamic_tinybert.web import router

from conftest import one_torch_thread

CHROMIUM = os.environ.get("DTB_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
ARTIFACTS = Path(
    os.environ.get("DTB_TEST_ARTIFACTS") or Path(__file__).resolve().parents[1] / "build" / "test-artifacts"
)
QUESTION = "Which NFL team represented the AFC at Super Bowl 50?"
CONTEXT = (
    "Super Bowl 50 was an American football game to determine the champion of the National Football League "
    "(NFL) for the 2015 season. The American Football Conference (AFC) champion Denver Broncos defeated the "
    "National Football Conference (NFC) champion Carolina Panthers 24–10 to earn their third Super Bowl title."
)
IN_CI = os.environ.get("CI") == "true"

pytestmark = pytest.mark.slow


def browser_missing() -> str | None:
    """Why the browser test cannot run here, or None."""
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "Playwright is not installed (pip install playwright; the test extra has it)"
    if not Path(CHROMIUM).is_file():
        return f"no chromium at {CHROMIUM} (apt-get install chromium; or set $DTB_CHROMIUM)"
    return None


@pytest.fixture(scope="module")
def qa() -> Iterator[QuestionAnswerer]:
    with one_torch_thread():
        yield QuestionAnswerer.from_pretrained()


@pytest.fixture(scope="module")
def server(qa: QuestionAnswerer) -> Iterator[str]:
    """`dtb serve`'s app with the page, run by its HTTP server in a thread on a free loopback port."""
    settings = ServerSettings()
    app = create_app(qa, name="dynamic-minilm-l6-squad", settings=settings)
    app.include_router(router(qa, settings))
    with running(app, settings) as url:
        yield url + "/"


@pytest.fixture(scope="module")
def page(server: str):
    missing = browser_missing()
    if missing:
        if IN_CI:
            pytest.fail(f"the browser test must run in CI: {missing}")
        pytest.skip(missing)
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True)
        page = browser.new_page(viewport={"width": 1000, "height": 900})
        page.set_default_timeout(30_000)
        page.goto(server)
        page.evaluate("window.dtbReady")
        yield page
        browser.close()


def ask(page, question: str, context: str) -> None:
    """Type the question and context, submit with the keyboard, wait for the answer and the layers' trace."""
    rows = page.locator("#history tbody tr").count()
    page.fill("#context", context)
    page.fill("#question", question)
    page.press("#question", "Enter")
    wait_for_request(page, rows + 1)


def wait_for_request(page, rows: int) -> None:
    """Wait until `rows` requests are listed and the last one's layers are shown."""
    page.wait_for_function(
        f"""document.querySelectorAll('#history tbody tr').length >= {rows}
            && document.getElementById('status').textContent.includes('layers traced')
            && !document.getElementById('ask').disabled"""
    )


def chosen_config(page) -> str:
    return page.evaluate("state.frontier[Number(document.getElementById('budget').value)].length_config")


def kept_per_layer(page) -> list[int]:
    return page.eval_on_selector_all("#layers .layer", "rows => rows.map(r => r.querySelectorAll('.tok.kept').length)")


def record_timings(page, name: str) -> None:
    """The page's load time and each request's round trip as the page measured them, into the artifacts."""
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    timings = page.evaluate(
        """() => {
            const nav = performance.getEntriesByType('navigation')[0];
            const requests = performance.getEntriesByType('resource')
                .filter(r => r.initiatorType === 'fetch')
                .map(r => ({name: new URL(r.name).pathname, ms: r.duration}));
            return {load_ms: nav.loadEventEnd - nav.startTime,
                    dom_content_loaded_ms: nav.domContentLoadedEventEnd - nav.startTime, requests};
        }"""
    )
    (ARTIFACTS / name).write_text(json.dumps(timings, indent=1))


def test_asking_highlights_the_best_answer_in_the_text(page, qa):
    ask(page, QUESTION, CONTEXT)
    expected = qa(question=QUESTION, context=CONTEXT, top_k=3, length_config=LengthConfig.parse(chosen_config(page)))
    assert page.inner_text("#highlighted mark.best") == expected[0]["answer"] == "Denver Broncos"
    listed = page.locator("#answers li").all_inner_texts()
    assert len(listed) == len(expected) and listed[0].startswith("Denver Broncos score ")


def test_the_layer_view_marks_as_many_kept_tokens_per_layer_as_the_trace(page, qa):
    config = LengthConfig.parse(chosen_config(page))
    trace = qa.explain(QUESTION, CONTEXT, top_k=3, length_config=config)
    assert kept_per_layer(page) == [len(layer) for layer in trace.kept]
    assert page.locator("#layers .layer").first.locator(".tok").count() == len(trace.tokens)
    outlined = page.locator("#layers .layer").first.locator(".tok.answer").all_inner_texts()
    assert " ".join(outlined) == "denver broncos"


def test_moving_the_budget_asks_again_and_shows_the_configuration_that_ran(page, qa):
    before = chosen_config(page)
    rows = page.locator("#history tbody tr").count()
    page.focus("#budget")
    page.keyboard.press("Home")  # the cheapest point of the frontier
    wait_for_request(page, rows + 1)
    after = chosen_config(page)
    assert after != before
    assert after in page.inner_text("#budget-label")
    assert page.inner_text("#history tbody tr:first-child td.config") == after
    assert f"length configuration {after}" in page.inner_text("#layers-summary")
    trace = qa.explain(QUESTION, CONTEXT, top_k=3, length_config=LengthConfig.parse(after))
    assert kept_per_layer(page) == [len(layer) for layer in trace.kept]
    assert sum(kept_per_layer(page)) < len(trace.tokens) * len(trace.kept)  # this point drops tokens
    # for the screenshot: the cheapest point that keeps 0.6 of the MACs, where layers drop tokens
    steps = page.evaluate("state.frontier.findIndex(p => p.macs_ratio >= 0.6)")
    for _ in range(steps):
        page.keyboard.press("ArrowRight")
    wait_for_request(page, rows + 2)
    page.screenshot(path=str(ARTIFACTS / "page.png"), full_page=True)
    record_timings(page, "page-timings.json")


def test_an_error_from_the_api_is_shown_in_words(page):
    rows = page.locator("#history tbody tr").count()
    page.fill("#question", "   ")
    page.click("#ask")
    page.wait_for_selector("#error:not([hidden])")
    assert "422" in page.inner_text("#error") and "question 0 is empty" in page.inner_text("#error")
    assert page.locator("#history tbody tr").count() == rows


def test_the_page_fits_a_narrow_screen(page):
    page.set_viewport_size({"width": 360, "height": 800})
    try:
        assert page.evaluate("document.documentElement.scrollWidth") <= 360
        page.screenshot(path=str(ARTIFACTS / "page-narrow.png"), full_page=True)
    finally:
        page.set_viewport_size({"width": 1000, "height": 900})
