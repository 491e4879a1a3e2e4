from __future__ import annotations

from datetime import timedelta

import pytest

from shared.contracts import Severity
from shared.settings import Settings


def test_defaults_work_with_zero_setup() -> None:
    settings = Settings(_env_file=None)
    assert settings.ingest_port == 8000
    assert settings.dispatcher_port == 8001
    assert settings.update_interval(Severity.CRITICAL) == timedelta(minutes=30)
    assert settings.status_page_url == "http://127.0.0.1:8001/status"


def test_environment_uses_the_clarion_prefix(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CLARION_UPDATE_INTERVAL_CRITICAL", "5")
    monkeypatch.setenv("CLARION_EMAIL_RECIPIENTS", "a@example.com, b@example.com")
    monkeypatch.setenv("CLARION_PUBLIC_STATUS_URL", "https://status.example.com")
    settings = Settings(_env_file=None)
    assert settings.update_interval(Severity.CRITICAL) == timedelta(seconds=5)
    assert settings.email_recipients == ("a@example.com", "b@example.com")
    assert settings.status_page_url == "https://status.example.com"


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
def test_cadence_accepts_plain_durations(
    monkeypatch: pytest.MonkeyPatch, raw: str, expected: int
) -> None:
    monkeypatch.setenv("CLARION_UPDATE_INTERVAL_WARNING", raw)
    interval = Settings(_env_file=None).update_interval(Severity.WARNING)
    assert interval == timedelta(seconds=expected)


def test_nonsense_duration_names_the_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CLARION_UPDATE_INTERVAL_INFO", "soon")
    with pytest.raises(ValueError, match="update_interval_info"):
        Settings(_env_file=None)


def test_an_empty_variable_means_unset(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CLARION_INGEST_TOKEN", "")
    monkeypatch.setenv("CLARION_SMTP_HOST", "")
    settings = Settings(_env_file=None)
    assert settings.ingest_token is None
    assert settings.smtp_host is None
