"""The delivery log on a real Valkey: newest first, redacted, filterable."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
import structlog
from redis.asyncio import Redis
from redis.exceptions import ResponseError

from services.dispatcher.delivery_log import DeliveryLog
from services.dispatcher.delivery_query import INDEXED_INCIDENTS, incident_index_key
from services.dispatcher.metrics import DispatcherMetrics
from shared.contracts import DeliveryRecorded, DeliveryStatus
from shared.redis_values import data_entries
from shared.streams import DELIVERY_LOG

pytestmark = pytest.mark.integration

T0 = datetime(2026, 11, 23, 14, 30, tzinfo=UTC)


def record(
    n: int,
    incident_id: str = "inc-1",
    recipient: str = "alice@example.com",
    status: DeliveryStatus = DeliveryStatus.SENT,
    error: str | None = None,
    **extra: object,
) -> DeliveryRecorded:
    values: dict[str, object] = {
        "delivery_id": f"d-{n}",
        "incident_id": incident_id,
        "event_id": f"ev-{n}",
        "channel": "email",
        "recipient": recipient,
        "status": status,
        "attempt": 1,
        "error": error,
        "started_at": T0 + timedelta(seconds=n),
        "recorded_at": T0 + timedelta(seconds=n, milliseconds=20),
    }
    return DeliveryRecorded.model_validate(values | extra)


async def test_recent_lists_newest_first(redis: Redis) -> None:
    log = DeliveryLog(redis)
    for n in range(5):
        await log.record(record(n))

    recent = await log.recent(limit=3)

    assert [r.delivery_id for r in recent] == ["d-4", "d-3", "d-2"]


async def test_recipients_and_errors_are_stored_redacted(redis: Redis) -> None:
    log = DeliveryLog(redis)
    stored = await log.record(
        record(
            1,
            recipient="alice@example.com",
            status=DeliveryStatus.FAILED,
            error="SMTP 550: alice@example.com does not exist",
        )
    )
    await log.record(record(2, recipient="status-page"))

    second, first = await log.recent(limit=10)

    assert stored.recipient == "a***@example.com"
    assert first.recipient == "a***@example.com"
    assert first.error == "SMTP 550: a***@example.com does not exist"
    assert second.recipient == "status-page"
    raw = data_entries(await redis.xrange(DELIVERY_LOG))
    assert len(raw) == 2
    assert all("alice@example.com" not in str(payload) for _, payload in raw)


async def test_filter_by_incident_reaches_past_other_incidents(redis: Redis) -> None:
    log = DeliveryLog(redis)
    await log.record(record(0, incident_id="inc-a"))
    await log.record(record(1, incident_id="inc-a"))
    for n in range(2, 700):
        await log.record(record(n, incident_id="inc-b"))

    only_a = await log.recent(limit=5, incident_id="inc-a")
    only_b = await log.recent(limit=2, incident_id="inc-b")

    assert [r.delivery_id for r in only_a] == ["d-1", "d-0"]
    assert [r.delivery_id for r in only_b] == ["d-699", "d-698"]
    assert await log.recent(limit=5, incident_id="nope") == []


async def test_empty_log_is_empty(redis: Redis) -> None:
    assert await DeliveryLog(redis).recent(limit=10) == []


async def test_audience_and_shortening_are_kept_and_phone_numbers_masked(redis: Redis) -> None:
    log = DeliveryLog(redis)
    await log.record(
        record(1, recipient="+14155550100", channel="sms", audience="customers", shortened=True)
    )
    await log.record(record(2, channel="email", audience="engineering"))

    email, sms = await log.recent(limit=10)

    assert (sms.channel, sms.audience, sms.shortened) == ("sms", "customers", True)
    assert sms.recipient == "+*******0100"
    assert (email.audience, email.shortened) == ("engineering", False)
    raw = data_entries(await redis.xrange(DELIVERY_LOG))
    assert all("4155550100" not in str(payload) for _, payload in raw)


def attempts(metrics: DispatcherMetrics, status: str) -> float | None:
    return metrics.registry.get_sample_value(
        "clarion_delivery_attempts_total", {"channel": "email", "status": status}
    )


async def test_a_prepared_record_is_logged_and_counted_but_stored_only_when_appended(
    redis: Redis,
) -> None:
    metrics = DispatcherMetrics()
    log = DeliveryLog(redis, metrics)
    with structlog.testing.capture_logs() as logs:
        entry = log.prepare(record(1, status=DeliveryStatus.FAILED, error="550 alice@example.com"))

    assert [line["event"] for line in logs] == ["delivery.attempt"]
    assert attempts(metrics, "failed") == 1
    assert entry.record.recipient == "a***@example.com"
    assert entry.record.error == "550 a***@example.com"
    assert await redis.exists(DELIVERY_LOG, incident_index_key("inc-1"), INDEXED_INCIDENTS) == 0

    await log.append(entry)

    assert await log.recent(limit=10) == [entry.record]
    assert await redis.xlen(incident_index_key("inc-1")) == 1
    assert await redis.zscore(INDEXED_INCIDENTS, "inc-1") is not None


async def test_a_record_redis_refuses_is_still_logged_and_counted(redis: Redis) -> None:
    metrics = DispatcherMetrics()
    log = DeliveryLog(redis, metrics)
    await redis.set(DELIVERY_LOG, "not a stream")
    with structlog.testing.capture_logs() as logs, pytest.raises(ResponseError, match="WRONGTYPE"):
        await log.record(record(1))

    assert [line["event"] for line in logs] == ["delivery.attempt"]  # it happened
    assert attempts(metrics, "sent") == 1
    assert await redis.exists(incident_index_key("inc-1"), INDEXED_INCIDENTS) == 0
