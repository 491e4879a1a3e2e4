"""Fixtures for browser tests: the system's Chromium through Playwright, and a served incident.

One System (ingest, dispatcher, scheduler as processes over the test Valkey), one
incident and one browser for the whole of tests/browser, since no test here changes
what the system holds; a fresh browser context (no cookies) per page a test opens.
Without a Chromium every test here is skipped, and the run says so in its header and
summary.

Test modules share this package's event loop with these fixtures:
``pytestmark = pytest.mark.asyncio(loop_scope="package")``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
import redis
from playwright.async_api import Browser, BrowserContext, Page, async_playwright, expect

from tests.browser.artifacts import screenshot_path
from tests.browser.chromium import NO_CHROMIUM, find_chromium, launch_args
from tests.browser.clarion_system import ServedIncident, make_system, serve_incident
from tests.support.processes import System
from tests.support.smtp import SmtpServer

HERE = Path(__file__).parent
WAIT_MS = 10_000  # Playwright's auto-waiting and expect(): generous, never a sleep

OpenPage = Callable[..., Awaitable[Page]]


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if find_chromium() is not None:
        return
    for item in items:
        if HERE in item.path.parents:
            item.add_marker(pytest.mark.skip(reason=NO_CHROMIUM))


def pytest_terminal_summary(
    terminalreporter: pytest.TerminalReporter, exitstatus: int, config: pytest.Config
) -> None:
    if find_chromium() is None:
        terminalreporter.write_sep("!", NO_CHROMIUM, red=True, bold=True)


@pytest.fixture(scope="package")
def chromium() -> Path:
    found = find_chromium()
    if found is None:
        pytest.skip(NO_CHROMIUM)
    return found


@pytest_asyncio.fixture(scope="package", loop_scope="package")
async def browser(chromium: Path) -> AsyncIterator[Browser]:
    expect.set_options(timeout=WAIT_MS)
    async with async_playwright() as playwright:
        launched = await playwright.chromium.launch(
            executable_path=chromium, headless=True, args=launch_args()
        )
        try:
            yield launched
        finally:
            await launched.close()


@pytest_asyncio.fixture(loop_scope="package")
async def open_page(browser: Browser) -> AsyncIterator[OpenPage]:
    """``await open_page(**context_options)``: a page in a context of its own (no cookies)."""
    contexts: list[BrowserContext] = []

    async def opener(**context_options: Any) -> Page:
        context = await browser.new_context(**context_options)
        context.set_default_timeout(WAIT_MS)
        contexts.append(context)
        return await context.new_page()

    yield opener
    for context in contexts:
        await context.close()


@pytest.fixture
def screenshot(request: pytest.FixtureRequest) -> Callable[..., Path]:
    """``screenshot(label="")``: where this test saves a screenshot (named by the test)."""
    return lambda label="": screenshot_path(request.node.name, label)


@pytest.fixture(scope="package")
def clarion(
    chromium: Path, redis_url: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[System]:
    """The three services as processes, on an emptied test database, with a real SMTP server."""
    with redis.Redis.from_url(redis_url) as client:
        client.flushdb()
    smtp = SmtpServer()
    smtp.start()
    system = make_system(redis_url, smtp, tmp_path_factory.mktemp("browser-system"))
    try:
        system.start()
        yield system
    finally:
        system.stop()
        smtp.stop()


@pytest_asyncio.fixture(scope="package", loop_scope="package")
async def incident(clarion: System) -> ServedIncident:
    """An open incident with an operator's "identified" update, published and delivered."""
    return await serve_incident(clarion)
