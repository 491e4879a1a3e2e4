"""``clarion outbox`` and ``clarion version``, against a real Valkey."""

from __future__ import annotations

import asyncio
import os
from datetime import UTC, datetime, timedelta
from importlib.metadata import version
from pathlib import Path

import pytest
from redis.asyncio import Redis
from typer.testing import CliRunner

from services.cli import app
from services.dispatcher.outbox import OutboxMessage, queue_message

pytestmark = pytest.mark.integration

QUEUED = datetime(2026, 11, 23, 14, 30, tzinfo=UTC)


@pytest.fixture
def runner(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> CliRunner:
    """A runner with no CLARION_ setting from the outside and no .env in its way."""
    monkeypatch.chdir(tmp_path)
    for variable in list(os.environ):
        if variable.startswith("CLARION_"):
            monkeypatch.delenv(variable)
    return CliRunner()


def seed(redis_url: str, subjects: list[str], channels: list[str] | None = None) -> None:
    """Flush the test database, then queue one message per subject, oldest first.

    Each message goes on the channel at the same place in ``channels`` (email by default).
    """

    async def run() -> None:
        client = Redis.from_url(redis_url)
        try:
            await client.flushdb()
            for n, subject in enumerate(subjects):
                channel = channels[n] if channels else "email"
                to = "+14155550100" if channel == "sms" else "alice@example.com"
                await queue_message(
                    client,
                    OutboxMessage(
                        channel=channel,
                        to=to,
                        subject=subject,
                        text=f"Body of {subject}\n",
                        message_id=f"<m{n}@clarion.invalid>",
                        queued_at=QUEUED + timedelta(minutes=n),
                        incident_id="inc-1",
                        reason=f"no {channel} driver configured",
                    ),
                )
        finally:
            await client.aclose()

    asyncio.run(run())


def test_outbox_prints_messages_newest_first(runner: CliRunner, redis_url: str) -> None:
    seed(redis_url, ["Investigating: checkout errors", "Resolved: checkout errors"])

    result = runner.invoke(app, ["outbox"], env={"CLARION_REDIS_URL": redis_url})

    assert result.exit_code == 0, result.output
    out = result.stdout
    assert "2 message(s), newest first" in out
    assert out.index("Resolved: checkout errors") < out.index("Investigating: checkout errors")
    assert "Channel:    email (no email driver configured)" in out
    assert "To:         alice@example.com" in out
    assert "Incident:   inc-1" in out
    assert "Body of Resolved: checkout errors" in out
    assert "<m1@clarion.invalid>" in out


def test_outbox_shows_every_channel_and_filters_by_one(runner: CliRunner, redis_url: str) -> None:
    seed(
        redis_url,
        ["Investigating by SMS", "Investigating by email", "Investigating on Slack"],
        channels=["sms", "email", "slack"],
    )
    env = {"CLARION_REDIS_URL": redis_url}

    everything = runner.invoke(app, ["outbox"], env=env)
    sms = runner.invoke(app, ["outbox", "--channel", "sms"], env=env)
    none = runner.invoke(app, ["outbox", "--channel", "discord"], env=env)

    assert everything.exit_code == 0, everything.output
    assert "3 message(s)" in everything.stdout
    for channel in ("sms", "email", "slack"):
        assert f"Channel:    {channel} (no {channel} driver configured)" in everything.stdout
    assert sms.exit_code == 0, sms.output
    assert "1 message(s)" in sms.stdout
    assert "Subject:    Investigating by SMS" in sms.stdout
    assert "To:         +14155550100" in sms.stdout
    assert "Investigating by email" not in sms.stdout
    assert "Investigating on Slack" not in sms.stdout
    assert none.exit_code == 0, none.output
    assert "The outbox is empty." in none.stdout


def test_outbox_limit_shows_only_the_newest(runner: CliRunner, redis_url: str) -> None:
    seed(redis_url, ["first", "second", "third"])

    result = runner.invoke(app, ["outbox", "--limit", "1"], env={"CLARION_REDIS_URL": redis_url})

    assert result.exit_code == 0, result.output
    assert "1 message(s)" in result.stdout
    assert "Subject:    third" in result.stdout
    assert "Subject:    second" not in result.stdout


def test_outbox_says_when_it_is_empty(runner: CliRunner, redis_url: str) -> None:
    seed(redis_url, [])

    result = runner.invoke(app, ["outbox"], env={"CLARION_REDIS_URL": redis_url})

    assert result.exit_code == 0, result.output
    assert "The outbox is empty." in result.stdout


def test_outbox_without_redis_explains_what_to_do(runner: CliRunner) -> None:
    result = runner.invoke(app, ["outbox"])

    assert result.exit_code == 1
    assert "start `clarion up`" in result.stderr


def test_outbox_rejects_a_limit_out_of_range(runner: CliRunner, redis_url: str) -> None:
    result = runner.invoke(app, ["outbox", "--limit", "0"], env={"CLARION_REDIS_URL": redis_url})

    assert result.exit_code == 2


def test_invalid_settings_are_named_not_a_traceback(runner: CliRunner) -> None:
    result = runner.invoke(app, ["outbox"], env={"CLARION_SMTP_PORT": "twenty-five"})

    assert result.exit_code == 1
    assert "Invalid configuration: CLARION_SMTP_PORT" in result.stderr
    assert result.exception is None or isinstance(result.exception, SystemExit)


def test_version_prints_the_installed_version(runner: CliRunner) -> None:
    result = runner.invoke(app, ["version"])

    assert result.exit_code == 0
    assert result.stdout.strip() == f"clarion {version('clarion')}"
