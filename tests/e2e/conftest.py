from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from datetime import timedelta
from pathlib import Path

import pytest

from shared.contracts import Severity
from tests.support.plans import write_plan
from tests.support.processes import System
from tests.support.smtp import SmtpServer

# A fast cadence (E2E_CADENCE) so a test sees scheduled updates; short reclaim so a
# crash is recovered quickly. Alertmanager's sample group is critical.
E2E_CADENCE = dict.fromkeys(Severity, timedelta(seconds=3))
E2E_EMAILS = ("alice@example.com", "bob@example.org")
E2E_ENV = {
    "CLARION_RECLAIM_IDLE_MS": "1500",
    "CLARION_IDEMPOTENCY_LEASE_MS": "1500",
    "CLARION_POLLING_INTERVAL_MS": "100",
    "CLARION_SCHEDULER_TICK_MS": "100",
    "CLARION_SCHEDULER_LEASE_MS": "2000",
    "CLARION_INGEST_TOKEN": "e2e-token",
}
AUTH = {"Authorization": "Bearer e2e-token"}


@pytest.fixture
def make_system(
    redis_url: str, smtp_server: SmtpServer, tmp_path: Path
) -> Iterator[Callable[..., System]]:
    systems: list[System] = []

    def factory(
        *,
        emails: Sequence[str] = E2E_EMAILS,
        cadence: Mapping[Severity, timedelta | None] = E2E_CADENCE,
        **overrides: str,
    ) -> System:
        """The three services; their plan emails ``emails`` at ``cadence``, holds 2 s."""
        plan_dir = tmp_path / f"plan-{len(systems)}"
        plan_dir.mkdir()
        plan = write_plan(plan_dir, emails, cadence=cadence, monitoring_hold=timedelta(seconds=2))
        env = {
            **E2E_ENV,
            "CLARION_PLAN": str(plan),
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
