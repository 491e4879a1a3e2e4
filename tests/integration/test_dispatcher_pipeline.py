"""The Dispatcher pipeline with real Valkey and a real SMTP server, driven by a plan."""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta
from pathlib import Path

import pytest
from redis.asyncio import Redis

from services.dispatcher.channels.registry import default_channels
from services.dispatcher.delivery_log import DeliveryLog
from services.dispatcher.fanout import plan_deliveries
from services.dispatcher.outbox import read_outbox
from services.dispatcher.pipeline import Dispatcher
from services.dispatcher.status_page_store import StatusPageStore
from shared.clock import ManualClock
from shared.contracts import (
    ApprovalGranted,
    ApprovalRequested,
    DeliveryRecorded,
    DeliveryStatus,
    IncidentStatus,
)
from shared.errors import RetryableFailure
from shared.idempotency import IdempotencyStore
from shared.plan import Plan
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
from tests.support.plans import make_plan
from tests.support.smtp import SmtpServer

pytestmark = pytest.mark.integration

ALICE = "alice@example.com"
BOB = "bob@example.com"
PHONE = "+14155550100"
STATUS_URL = "https://status.example.com"
CUSTOMER_TITLE = "A major outage"
"""What customers read of the default incident: the plan's words for SEV1 (no service)."""

PLAN = make_plan(emails=(ALICE, BOB), status_page_url=STATUS_URL)
OPENED = make_incident_opened(
    event_id="ev-open", occurred_at=T0, next_update_at=T0 + timedelta(minutes=30)
)


class RecordedApprovals:
    """The approvals publisher, recording what the dispatcher publishes."""

    def __init__(self) -> None:
        self.published: list[ApprovalRequested | ApprovalGranted] = []

    async def publish_approval(self, event: ApprovalRequested | ApprovalGranted) -> None:
        self.published.append(event)


def dispatcher_for(
    redis: Redis,
    make_settings: Callable[..., Settings],
    smtp: SmtpServer | None,
    plan: Plan = PLAN,
) -> Dispatcher:
    settings = make_settings(
        smtp_host=smtp.host if smtp else None,
        smtp_port=smtp.port if smtp else 25,
        consumer_name="dispatcher-test",
    )
    clock = ManualClock(T0)
    return Dispatcher(
        redis,
        settings,
        clock,
        default_channels(settings, redis, clock),
        plan=plan,
        approvals=RecordedApprovals(),
    )


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
    email = smtp_server.to(ALICE)[0]
    assert email["Subject"] == f"Investigating: {CUSTOMER_TITLE}"
    body = email.get_body(preferencelist=("plain",))
    assert body is not None
    assert "Next update by 15:00 UTC, Mon 23 Nov 2026" in body.get_content()
    assert STATUS_URL in body.get_content()
    records = await log_of(redis)
    assert sorted(statuses(records)) == [
        ("email", "a***@example.com", DeliveryStatus.SENT, 1),
        ("email", "b***@example.com", DeliveryStatus.SENT, 1),
        ("status_page", "status-page", DeliveryStatus.SENT, 1),
    ]
    assert {r.audience for r in records} == {"customers"}
    assert not any(r.shortened for r in records)
    page = await StatusPageStore(redis).get("inc-1")
    assert page is not None
    assert page.state is IncidentStatus.INVESTIGATING
    assert page.title == CUSTOMER_TITLE  # the customers' words, not the alerts' title
    assert [u.headline for u in page.updates] == ["Investigating"]
    assert "Next update by 15:00 UTC" in page.updates[0].body


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
    bob = next(d for d in plan_deliveries(OPENED, OPENED.incident, PLAN) if d.recipient == BOB)
    other = IdempotencyStore(redis, lease_ms=60_000, retention_seconds=60)
    await other.claim(bob.delivery_id, "another-instance")

    with pytest.raises(RetryableFailure, match=bob.delivery_id):
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
    assert message["Subject"] == f"Update 2: {CUSTOMER_TITLE}"
    body = message.get_body(preferencelist=("plain",))
    assert body is not None
    assert "no new information" in body.get_content()
    assert "Next update by 15:30 UTC, Mon 23 Nov 2026" in body.get_content()  # due + 30 min
    assert {r.status for r in await log_of(redis)} == {DeliveryStatus.SENT}


async def test_update_due_for_a_resolved_incident_is_suppressed(
    redis: Redis, make_settings: Callable[..., Settings], smtp_server: SmtpServer
) -> None:
    await store_incident(redis, make_resolved_incident())
    dispatcher = dispatcher_for(redis, make_settings, smtp_server)

    await dispatcher.handle_update_due(make_update_due(), attempt=1)
    await dispatcher.handle_update_due(make_update_due(), attempt=2)

    assert smtp_server.mailbox.messages == []
    records = await log_of(redis)
    assert len(records) == 3
    assert {(r.status, r.error) for r in records} == {
        (DeliveryStatus.SUPPRESSED, "incident resolved")
    }
    assert await StatusPageStore(redis).get("inc-1") is None


async def test_update_due_for_an_unknown_incident_sends_and_records_nothing(
    redis: Redis, make_settings: Callable[..., Settings], smtp_server: SmtpServer
) -> None:
    dispatcher = dispatcher_for(redis, make_settings, smtp_server)

    await dispatcher.handle_update_due(make_update_due(incident_id="inc-gone"), attempt=1)

    assert smtp_server.mailbox.messages == []
    assert await log_of(redis) == []


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
    outbox = await read_outbox(redis, channel="email")
    assert [e.subject for e in outbox] == [
        f"Resolved: {CUSTOMER_TITLE}",
        f"Resolved: {CUSTOMER_TITLE}",
        f"Investigating: {CUSTOMER_TITLE}",
        f"Investigating: {CUSTOMER_TITLE}",
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
    assert last.audience == "customers"
    assert len(await log_of(redis)) == 4


# Every channel, every audience


def sms_and_chat_plan(**overrides: object) -> Plan:
    return make_plan(
        emails=(ALICE,),
        status_page_url=STATUS_URL,
        audiences={
            "customers": {"public": True, "email": [ALICE], "sms": [PHONE], "status_page": True},
            "engineering": {
                "email": [BOB],
                "slack": [{"name": "#incidents", "url_env": "CLARION_TEST_SLACK_URL"}],
            },
        },
        routes=[{"audiences": ["customers", "engineering"]}],
        **overrides,
    )


async def test_channels_without_a_driver_go_to_the_outbox_with_audience_in_the_log(
    redis: Redis, make_settings: Callable[..., Settings]
) -> None:
    dispatcher = dispatcher_for(redis, make_settings, None, plan=sms_and_chat_plan())

    await dispatcher.handle_incident_event(OPENED, attempt=1)

    records = {(r.audience, r.channel): r for r in await log_of(redis)}
    assert set(records) == {
        ("customers", "email"),
        ("customers", "sms"),
        ("customers", "status_page"),
        ("engineering", "email"),
        ("engineering", "slack"),
    }
    assert {r.status for r in records.values()} == {DeliveryStatus.SENT}
    assert (records[("customers", "sms")].provider_message_id or "").startswith("outbox:")
    [sms] = await read_outbox(redis, channel="sms")
    assert sms.to == PHONE
    assert "Next update by 15:00 UTC" in sms.text
    [slack] = await read_outbox(redis, channel="slack")
    assert slack.to == "#incidents"
    assert slack.payload is not None
    assert [block["type"] for block in slack.payload["blocks"]][:2] == ["header", "section"]
    assert slack.subject == "Investigating: Checkout is failing"  # engineering's own words
    emails = {m.to: m for m in await read_outbox(redis, channel="email")}
    assert emails[ALICE].subject == f"Investigating: {CUSTOMER_TITLE}"
    assert emails[BOB].subject == "[SEV1] Investigating: Checkout is failing"


async def test_a_shortened_message_says_so_in_the_delivery_log(
    redis: Redis, make_settings: Callable[..., Settings]
) -> None:
    plan = sms_and_chat_plan(sms_max_segments=1)
    dispatcher = dispatcher_for(redis, make_settings, None, plan=plan)

    await dispatcher.handle_incident_event(OPENED, attempt=1)

    records = {(r.audience, r.channel): r for r in await log_of(redis)}
    assert records[("customers", "sms")].status is DeliveryStatus.SENT
    assert records[("customers", "sms")].shortened
    assert not records[("customers", "email")].shortened
    [sms] = await read_outbox(redis, channel="sms")
    assert "Next update by 15:00 UTC" in sms.text
    assert STATUS_URL in sms.text


async def test_a_message_that_cannot_be_rendered_fails_only_its_own_deliveries(
    redis: Redis, make_settings: Callable[..., Settings], tmp_path: Path
) -> None:
    broken = tmp_path / "customers" / "email" / "message.txt.j2"
    broken.parent.mkdir(parents=True)
    broken.write_text("{{ no_such_value }}\n")
    plan = sms_and_chat_plan(templates_dir=str(tmp_path))
    dispatcher = dispatcher_for(redis, make_settings, None, plan=plan)

    await dispatcher.handle_incident_event(OPENED, attempt=1)  # does not raise
    await dispatcher.handle_incident_event(OPENED, attempt=2)  # a failure is final

    records = await log_of(redis)
    assert len(records) == 5
    by_target = {(r.audience, r.channel): r for r in records}
    failed = by_target[("customers", "email")]
    assert failed.status is DeliveryStatus.FAILED
    assert failed.error is not None
    assert failed.error.startswith("render failed:")
    assert "no_such_value" in failed.error
    others = [r for key, r in by_target.items() if key != ("customers", "email")]
    assert {r.status for r in others} == {DeliveryStatus.SENT}
    assert [m.to for m in await read_outbox(redis, channel="email")] == [BOB]
