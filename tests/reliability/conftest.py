"""The reliability suite: every scenario reports one line, printed at the end of the run."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import pytest
from redis.asyncio import Redis

from tests.reliability.harness import WebhookSink
from tests.reliability.scale import FULL, OUTCOMES
from tests.support.smtp import SmtpServer


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "tests/reliability/" in item.nodeid.replace("\\", "/"):
            item.add_marker(pytest.mark.reliability)


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if not OUTCOMES:
        return
    size = "full" if FULL else "quick (make test-reliability runs the full size)"
    terminalreporter.section(f"reliability: {size}")
    for outcome in OUTCOMES:
        terminalreporter.write_line(outcome.line())


@pytest.fixture(scope="module")
def smtp() -> Iterator[SmtpServer]:
    """The SMTP sink a scenario module's services send to."""
    server = SmtpServer()
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def hooks() -> Iterator[WebhookSink]:
    """The signed-webhook sink a scenario module's services send to."""
    with WebhookSink() as sink:
        yield sink


@pytest.fixture
async def store(redis_url: str) -> AsyncIterator[Redis]:
    """The session's Valkey, not flushed: a scenario module's system is running on it."""
    client = Redis.from_url(redis_url)
    try:
        yield client
    finally:
        await client.aclose()
