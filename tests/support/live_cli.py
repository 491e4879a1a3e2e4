"""The ``clarion`` command against real services: one system per test module, and the CLI
run with exactly the CLARION_* variables a test gives it."""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Final

import pytest
from redis import Redis
from typer.testing import CliRunner, Result

from services.cli import app
from tests.support.processes import System

FAST: Final = {
    "CLARION_POLLING_INTERVAL_MS": "100",
    "CLARION_SCHEDULER_TICK_MS": "100",
    "CLARION_RECLAIM_IDLE_MS": "2000",
    "CLARION_IDEMPOTENCY_LEASE_MS": "2000",
}
"""Short polls and leases, so a test waits tenths of a second, not seconds."""


@contextmanager
def live_system(redis_url: str, log_dir: Path, env: Mapping[str, str]) -> Iterator[System]:
    """Ingest, dispatcher and scheduler on an emptied Valkey, with ``env`` (and FAST)."""
    with Redis.from_url(redis_url) as redis:
        redis.flushdb()
    running = System(env={**FAST, "CLARION_REDIS_URL": redis_url, **env}, log_dir=log_dir)
    try:
        running.start()
        yield running
    finally:
        running.stop()


@dataclass(frozen=True)
class Clarion:
    """The ``clarion`` command with exactly these CLARION_* variables set."""

    env: dict[str, str | None]

    def __call__(self, *args: str) -> Result:
        return CliRunner().invoke(app, list(args), env=self.env)

    def with_env(self, **changes: str | None) -> Clarion:
        return replace(self, env={**self.env, **changes})


def clarion_for(
    system: System, monkeypatch: pytest.MonkeyPatch, tmp_path: Path, **env: str
) -> Clarion:
    """The CLI as an operator on the services' host runs it: ingest and dispatcher found by
    their ports, no other CLARION_* variable and no .env in the way, plus ``env``."""
    monkeypatch.chdir(tmp_path)
    for variable in list(os.environ):
        if variable.startswith("CLARION_"):
            monkeypatch.delenv(variable)
    return Clarion(
        {
            "CLARION_INGEST_PORT": str(system.ingest_port),
            "CLARION_DISPATCHER_PORT": str(system.dispatcher_port),
            "CLARION_DATA_DIR": str(tmp_path / "data"),
            "COLUMNS": "250",  # rich's tables, unwrapped
            **env,
        }
    )
