"""Fixtures shared by every tier: a real Valkey (or the server CLARION_TEST_REDIS_URL
names), a real SMTP server, and settings that point at them.

The database of CLARION_TEST_REDIS_URL is flushed before each test that uses it.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from redis.asyncio import Redis

from shared.embedded import start_embedded_valkey
from shared.settings import Settings
from tests.browser.chromium import NO_CHROMIUM, find_chromium
from tests.support.plans import write_plan
from tests.support.smtp import SmtpServer, free_port

FIXTURES = Path(__file__).parent / "fixtures"


def pytest_report_header(config: pytest.Config) -> str | None:
    """Say at the top of every run when the browser tests will skip."""
    return NO_CHROMIUM if find_chromium() is None else None


def load_fixture(name: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((FIXTURES / name).read_text())
    return data


@pytest.fixture(scope="session")
def redis_url() -> Iterator[str]:
    configured = os.environ.get("CLARION_TEST_REDIS_URL")
    if configured:
        yield configured
        return
    with tempfile.TemporaryDirectory(prefix="clarion-test-valkey-") as data_dir:
        server = start_embedded_valkey(Path(data_dir), port=free_port())
        try:
            yield str(server.connection_url)
        finally:
            server.stop()


@pytest.fixture
async def redis(redis_url: str) -> AsyncIterator[Redis]:
    client = Redis.from_url(redis_url)
    await client.flushdb()
    try:
        yield client
    finally:
        await client.aclose()


@pytest.fixture
def smtp_server() -> Iterator[SmtpServer]:
    server = SmtpServer()
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def test_plan_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The plan services load in tests unless a test names another (tests/support/plans.py)."""
    return write_plan(tmp_path_factory.mktemp("plan"))


@pytest.fixture
def make_settings(redis_url: str, test_plan_path: Path) -> Callable[..., Settings]:
    """Settings for tests: fast reclaim and ticks, the test Redis, the test plan."""

    def factory(**overrides: Any) -> Settings:
        values: dict[str, Any] = {
            "redis_url": redis_url,
            "plan": test_plan_path,
            "reclaim_idle_ms": 1000,
            "polling_interval_ms": 100,
            "idempotency_lease_ms": 1000,
            "scheduler_tick_ms": 100,
            "scheduler_lease_ms": 1000,
            "max_deliveries": 3,
            "log_format": "json",
        }
        values.update(overrides)
        return Settings(_env_file=None, **values)

    return factory
