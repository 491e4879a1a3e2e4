from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest
from pydantic import ValidationError
from redis.asyncio import Redis

from services.dispatcher.handlers import delivery_consumers
from shared.redis_client import SOCKET_TIMEOUT_SECONDS
from shared.settings import Settings


def test_defaults_work_with_zero_setup() -> None:
    settings = Settings(_env_file=None)
    assert settings.ingest_port == 8000
    assert settings.dispatcher_port == 8001
    assert settings.plan is None  # the shipped default plan
    assert settings.local_status_url == "http://127.0.0.1:8001/status"


def test_environment_uses_the_clarion_prefix(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CLARION_PLAN", "/etc/clarion/plan.yaml")
    monkeypatch.setenv("CLARION_DISPATCHER_PORT", "9001")
    monkeypatch.setenv("CLARION_GROUP_BY", "service, team")
    settings = Settings(_env_file=None)
    assert settings.plan == Path("/etc/clarion/plan.yaml")
    assert settings.local_status_url == "http://127.0.0.1:9001/status"
    assert settings.group_by == ("service", "team")


def test_missing_redis_url_explains_what_to_do() -> None:
    with pytest.raises(RuntimeError, match="clarion up"):
        Settings(_env_file=None).require_redis_url()


def test_secrets_do_not_print(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CLARION_SMTP_PASSWORD", "hunter2")
    assert "hunter2" not in repr(Settings(_env_file=None))


@pytest.mark.parametrize(
    ("raw", "expected"),
    [("90", 90), ("45s", 45), ("30m", 1800), ("2h", 7200), ("1d", 86400), ("PT15M", 900)],
)
def test_durations_accept_plain_forms(
    monkeypatch: pytest.MonkeyPatch, raw: str, expected: int
) -> None:
    monkeypatch.setenv("CLARION_IDEMPOTENCY_RETENTION", raw)
    retention = Settings(_env_file=None).idempotency_retention
    assert retention == timedelta(seconds=expected)


def test_nonsense_duration_names_the_setting_and_the_forms(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CLARION_IDEMPOTENCY_RETENTION", "soon")
    with pytest.raises(ValueError, match=r"idempotency_retention(.|\n)*write 90s, 30m, 2h or 1d"):
        Settings(_env_file=None)


def test_an_empty_variable_means_unset(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CLARION_INGEST_TOKEN", "")
    monkeypatch.setenv("CLARION_SMTP_HOST", "")
    settings = Settings(_env_file=None)
    assert settings.ingest_token is None
    assert settings.smtp_host is None


def test_a_polling_interval_past_the_redis_socket_timeout_is_refused(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("CLARION_POLLING_INTERVAL_MS", str(int(SOCKET_TIMEOUT_SECONDS * 1000)))
    with pytest.raises(ValidationError, match="polling_interval_ms"):
        Settings(_env_file=None)


@pytest.mark.parametrize(
    ("concurrency", "jobs", "taken_on"), [(16, 64, 64), (16, 4, 16), (100, 64, 100)]
)
def test_jobs_taken_on_per_channel_are_never_fewer_than_the_sends_in_flight(
    concurrency: int, jobs: int, taken_on: int
) -> None:
    settings = Settings(
        _env_file=None, channel_concurrency=concurrency, channel_jobs_in_flight=jobs
    )
    consumers = delivery_consumers(Redis(), settings, worker=None)  # type: ignore[arg-type]
    assert {consumer.max_workers for consumer in consumers} == {taken_on}
