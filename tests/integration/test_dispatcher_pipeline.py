"""The Dispatcher pipeline with real Valkey and a real SMTP server."""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta

import pytest
from redis.asyncio import Redis

from services.dispatcher.channels.registry import default_channels
from services.dispatcher.delivery_log import DeliveryLog
from services.dispatcher.outbox import read_outbox
from services.dispatcher.pipeline import Dispatcher
from services.dispatcher.plan import plan
from services.dispatcher.status_page_store import StatusPageStore
from shared.clock import ManualClock
from shared.contracts import DeliveryRecorded, DeliveryStatus, Incident, IncidentStatus
from shared.errors import RetryableFailure
from shared.idempotency import IdempotencyStore
from shared.settings import Settings
from tests.support.builders import (
    T0,
    make_incident,
    make_incident_opened,
    make_incident_resolved,
    make_resolved_incident,
    make_update_due,
    store_incident,
)
from tests.support.smtp import SmtpServer

pytestmark = pytest.mark.integration

ALICE = "alice@example.com"
BOB = "bob@example.com"


OPENED = make_incident_opened(event_id="ev-open", occurred_at=T0)


def dispatcher_for(
    redis: Redis, make_settings: Callable[..., Settings], smtp: SmtpServer | None
) -> Dispatcher:
    settings = make_settings(
        smtp_host=smtp.host if smtp else None,
        smtp_port=smtp.port if smtp else 25,
        email_recipients=(ALICE, BOB),
        public_status_url="https://status.example.com/",
        consumer_name="dispatcher-test",
    )
    clock = ManualClock(T0)
    return Dispatcher(redis, settings, clock, default_channels(settings, redis, clock))


async def log_of(redis: Redis) -> list[DeliveryRecorded]:
    """Every record, oldest first."""
    return list(reversed(await DeliveryLog(redis).recent(limit=1000)))


def statuses(records: list[DeliveryRecorded]) -> list[tuple[str, str, DeliveryStatus, int]]:
    return [(r.channel, r.recipient, r.status, r.attempt) for r in records]


async def test_opened_event_emails_everyone_and_posts_the_status_page(
    redis: Redis, make_settings: Callable[..., Settings], smtp_server: SmtpServer
) -> None:
    dispatcher = dispatcher_for(redis, make_settings, smtp_server)

    await dispatcher.handle_incident_event(OPENED, attempt=1)

    assert len(smtp_server.to(ALICE)) == 1
    assert len(smtp_server.to(BOB)) == 1
    assert smtp_server.to(ALICE)[0]["Subject"] == "Investigating: Checkout is failing"
    assert sorted(statuses(await log_of(redis))) == [
        ("email", "a***@example.com", DeliveryStatus.SENT, 1),
        ("email", "b***@example.com", DeliveryStatus.SENT, 1),
        ("status_page", "status-page", DeliveryStatus.SENT, 1),
    ]
    page = await StatusPageStore(redis).get("inc-1")
    assert page is not None
    assert page.state is IncidentStatus.INVESTIGATING
    assert page.title == "Checkout is failing"
    assert [u.headline for u in page.updates] == ["Investigating"]


async def test_same_event_twice_sends_exactly_one_email_per_recipient(
    redis: Redis, make_settings: Callable[..., Settings], smtp_server: SmtpServer
) -> None:
    dispatcher = dispatcher_for(redis, make_settings, smtp_server)

    await dispatcher.handle_incident_event(OPENED, attempt=1)
    await dispatcher.handle_incident_event(OPENED, attempt=2)

    assert len(smtp_server.mailbox.messages) == 2
    # What dedup remembers names no recipient: its keys are hashes.
    keys = [key.decode() async for key in redis.scan_iter("clarion:idempotency:*")]
    assert len(keys) == 3
    assert not [key for key in keys if "@" in key]
    assert len(await log_of(redis)) == 3
    page = await StatusPageStore(redis).get("inc-1")
    assert page is not None
    assert len(page.updates) == 1


async def test_permanent_failure_for_one_recipient_does_not_block_the_others(
    redis: Redis, make_settings: Callable[..., Settings], smtp_server: SmtpServer
) -> None:
    smtp_server.bounce.add(BOB)
    dispatcher = dispatcher_for(redis, make_settings, smtp_server)

    await dispatcher.handle_incident_event(OPENED, attempt=1)  # does not raise

    assert len(smtp_server.to(ALICE)) == 1
    records = {r.recipient: r for r in await log_of(redis)}
    assert records["b***@example.com"].status is DeliveryStatus.FAILED
    assert "550" in (records["b***@example.com"].error or "")
    assert records["a***@example.com"].status is DeliveryStatus.SENT
    assert records["status-page"].status is DeliveryStatus.SENT

    await dispatcher.handle_incident_event(OPENED, attempt=2)  # a final failure stays final
    assert len(await log_of(redis)) == 3


async def test_retryable_failure_raises_and_a_retry_redoes_only_that_delivery(
    redis: Redis, make_settings: Callable[..., Settings], smtp_server: SmtpServer
) -> None:
    smtp_server.defer.add(BOB)
    dispatcher = dispatcher_for(redis, make_settings, smtp_server)

    with pytest.raises(RetryableFailure, match="1 of 3"):
        await dispatcher.handle_incident_event(OPENED, attempt=1)

    assert len(smtp_server.to(ALICE)) == 1
    assert smtp_server.to(BOB) == []
    records = {r.recipient: r for r in await log_of(redis)}
    assert records["b***@example.com"].status is DeliveryStatus.RETRYING
    assert "451" in (records["b***@example.com"].error or "")

    smtp_server.defer.clear()
    await dispatcher.handle_incident_event(OPENED, attempt=2)

    assert len(smtp_server.to(ALICE)) == 1
    assert len(smtp_server.to(BOB)) == 1
    assert statuses(await log_of(redis))[-1] == (
        "email",
        "b***@example.com",
        DeliveryStatus.SENT,
        2,
    )
    page = await StatusPageStore(redis).get("inc-1")
    assert page is not None
    assert len(page.updates) == 1


async def test_delivery_claimed_elsewhere_is_retried_later(
    redis: Redis, make_settings: Callable[..., Settings], smtp_server: SmtpServer
) -> None:
    dispatcher = dispatcher_for(redis, make_settings, smtp_server)
    bob = next(d for d in plan(OPENED, None, (ALICE, BOB)) if d.recipient == BOB)
    other = IdempotencyStore(redis, lease_ms=60_000, retention_seconds=60)
    await other.claim(bob.delivery_id, "another-instance")

    with pytest.raises(RetryableFailure):
        await dispatcher.handle_incident_event(OPENED, attempt=1)

    assert len(smtp_server.to(ALICE)) == 1
    assert smtp_server.to(BOB) == []


async def test_update_due_for_open_incident_is_sent(
    redis: Redis, make_settings: Callable[..., Settings], smtp_server: SmtpServer
) -> None:
    await store_incident(redis, make_incident())
    dispatcher = dispatcher_for(redis, make_settings, smtp_server)

    await dispatcher.handle_update_due(make_update_due(sequence=2), attempt=1)

    [message] = smtp_server.to(ALICE)
    assert message["Subject"] == "Update 2: Checkout is failing"
    assert {r.status for r in await log_of(redis)} == {DeliveryStatus.SENT}


@pytest.mark.parametrize(
    ("stored", "reason"),
    [(make_resolved_incident(), "incident resolved"), (None, "incident not found")],
)
async def test_update_due_for_resolved_or_unknown_incident_is_suppressed(
    redis: Redis,
    make_settings: Callable[..., Settings],
    smtp_server: SmtpServer,
    stored: Incident | None,
    reason: str,
) -> None:
    if stored is not None:
        await store_incident(redis, stored)
    dispatcher = dispatcher_for(redis, make_settings, smtp_server)

    await dispatcher.handle_update_due(make_update_due(), attempt=1)
    await dispatcher.handle_update_due(make_update_due(), attempt=2)

    assert smtp_server.mailbox.messages == []
    records = await log_of(redis)
    assert len(records) == 3
    assert {(r.status, r.error) for r in records} == {(DeliveryStatus.SUPPRESSED, reason)}
    assert await StatusPageStore(redis).get("inc-1") is None


async def test_resolution_moves_the_status_page_to_resolved(
    redis: Redis, make_settings: Callable[..., Settings]
) -> None:
    dispatcher = dispatcher_for(redis, make_settings, None)
    resolved = make_incident_resolved(
        make_resolved_incident(resolved_at=T0 + timedelta(hours=1)),
        event_id="ev-resolved",
        occurred_at=T0 + timedelta(hours=1),
    )

    await dispatcher.handle_incident_event(OPENED, attempt=1)
    await dispatcher.handle_incident_event(resolved, attempt=1)
    await dispatcher.handle_incident_event(OPENED, attempt=2)  # a late redelivery

    page = await StatusPageStore(redis).get("inc-1")
    assert page is not None
    assert page.state is IncidentStatus.RESOLVED
    assert [u.headline for u in page.updates] == ["Resolved", "Investigating"]
    outbox = await read_outbox(redis)
    assert [e.subject for e in outbox] == [
        "Resolved: Checkout is failing",
        "Resolved: Checkout is failing",
        "Investigating: Checkout is failing",
        "Investigating: Checkout is failing",
    ]


async def test_record_dead_marks_only_unfinished_deliveries(
    redis: Redis, make_settings: Callable[..., Settings], smtp_server: SmtpServer
) -> None:
    smtp_server.defer.add(BOB)
    dispatcher = dispatcher_for(redis, make_settings, smtp_server)
    with pytest.raises(RetryableFailure):
        await dispatcher.handle_incident_event(OPENED, attempt=1)

    await dispatcher.record_dead(OPENED, attempt=4, error="max deliveries exceeded")

    last = (await log_of(redis))[-1]
    assert (last.recipient, last.status, last.attempt) == (
        "b***@example.com",
        DeliveryStatus.DEAD,
        4,
    )
    assert last.error == "max deliveries exceeded"
    assert len(await log_of(redis)) == 4
