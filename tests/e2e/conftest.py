from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.support.processes import System
from tests.support.smtp import SmtpServer

# Fast cadence so a test sees scheduled updates; short reclaim so a crash is
# recovered quickly. Alertmanager's sample group is critical.
E2E_ENV = {
    "CLARION_UPDATE_INTERVAL_CRITICAL": "3",
    "CLARION_UPDATE_INTERVAL_ERROR": "3",
    "CLARION_UPDATE_INTERVAL_WARNING": "3",
    "CLARION_UPDATE_INTERVAL_INFO": "3",
    "CLARION_RECLAIM_IDLE_MS": "1500",
    "CLARION_IDEMPOTENCY_LEASE_MS": "1500",
    "CLARION_POLLING_INTERVAL_MS": "100",
    "CLARION_SCHEDULER_TICK_MS": "100",
    "CLARION_SCHEDULER_LEASE_MS": "2000",
    "CLARION_EMAIL_RECIPIENTS": "alice@example.com,bob@example.org",
    "CLARION_INGEST_TOKEN": "e2e-token",
    "CLARION_RESOLVE_HOLD": "2",
}
AUTH = {"Authorization": "Bearer e2e-token"}


@pytest.fixture
def make_system(
    redis_url: str, smtp_server: SmtpServer, tmp_path: Path
) -> Iterator[Callable[..., System]]:
    systems: list[System] = []

    def factory(**overrides: str) -> System:
        env = {
            **E2E_ENV,
            "CLARION_REDIS_URL": redis_url,
            "CLARION_SMTP_HOST": smtp_server.host,
            "CLARION_SMTP_PORT": str(smtp_server.port),
            **overrides,
        }
        system = System(env=env, log_dir=tmp_path)
        systems.append(system)
        return system

    yield factory
    for system in systems:
        system.stop()
