"""Held messages: customer-facing messages of some severities wait for a human's approval.

Internal audiences hear at once; public deliveries are recorded HELD once, listed at
``GET /v1/approvals`` and announced with ``ApprovalRequested`` (for the scheduler's
auto-publish timer); an ``ApprovalGranted`` sends them, once.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from faststream.redis import RedisBroker
from redis.asyncio import Redis

from services.dispatcher.app import create_app
from services.dispatcher.approvals import ApprovalStore
from services.dispatcher.delivery_log import DeliveryLog
from services.dispatcher.outbox import read_outbox
from services.dispatcher.status_page_store import StatusPageStore
from shared.clock import ManualClock
from shared.contracts import (
    APPROVAL_EVENT,
    ApprovalGranted,
    ApprovalRequested,
    DeliveryRecorded,
    DeliveryStatus,
    IncidentOpened,
    Severity,
)
from shared.plan import Plan
from shared.settings import Settings
from shared.streams import APPROVALS, DELIVERY_LOG, INCIDENT_EVENTS, fanned_out_key
from tests.support.asgi import running
from tests.support.builders import T0, make_incident, make_incident_opened
from tests.support.dispatching import Pipeline, build_pipeline
from tests.support.plans import make_plan
from tests.support.smtp import SmtpServer
from tests.support.streams import stream_bodies, wait_for_entries
from tests.support.waiting import eventually

pytestmark = pytest.mark.integration

ALICE = "alice@example.com"  # a customer
BOB = "bob@example.com"  # an engineer
TOKEN = "ops-secret-token"
AUTO_PUBLISH_AFTER = timedelta(minutes=10)


def approval_plan(**overrides: Any) -> Plan:
    return make_plan(
        approval=["SEV1"],
        auto_publish_after=AUTO_PUBLISH_AFTER,
        status_page_url="https://status.example.com",
        audiences={
            "customers": {"public": True, "email": [ALICE], "status_page": True},
            "engineering": {"email": [BOB]},
        },
        routes=[{"audiences": ["customers", "engineering"]}],
        **overrides,
    )


PLAN = approval_plan()


def opened(severity: Severity = Severity.CRITICAL, event_id: str = "ev-open") -> IncidentOpened:
    incident = make_incident(severity=severity, service="checkout")
    return make_incident_opened(
        incident, event_id=event_id, occurred_at=T0, next_update_at=T0 + timedelta(minutes=30)
    )


@pytest.fixture
async def pipelines(
    redis: Redis, make_settings: Callable[..., Settings]
) -> AsyncIterator[Callable[..., Pipeline]]:
    """Builds the dispatcher's stages on ``redis`` for a plan (the approval plan by default)."""
    built: list[Pipeline] = []

    def factory(plan: Plan = PLAN, smtp: SmtpServer | None = None) -> Pipeline:
        settings = make_settings(
            smtp_host=smtp.host if smtp else None,
            smtp_port=smtp.port if smtp else 25,
            consumer_name="dispatcher-test",
            rate_limits=(),
        )
        pipeline = build_pipeline(
            redis, settings, plan, ManualClock(T0), uniform=lambda low, high: high
        )
        built.append(pipeline)
        return pipeline

    yield factory
    for pipeline in built:
        await pipeline.aclose()


@pytest.fixture
def pipeline(pipelines: Callable[..., Pipeline]) -> Pipeline:
    return pipelines()


def grant(pipeline: Pipeline, event: IncidentOpened, by: str = "carol") -> ApprovalGranted:
    return ApprovalGranted(
        event_id=event.event_id,
        incident_id=event.incident_id,
        granted_at=pipeline.clock.now(),
        by=by,
    )


def summary(records: list[DeliveryRecorded]) -> list[tuple[str | None, str, DeliveryStatus]]:
    return sorted((r.audience, r.channel, r.status) for r in records)


async def log_of(redis: Redis) -> list[DeliveryRecorded]:
    """Every record, oldest first."""
    return list(reversed(await DeliveryLog(redis).recent(limit=1000)))


async def emailed(redis: Redis) -> list[str]:
    """Who has an email in the outbox, oldest first."""
    return [m.to for m in reversed(await read_outbox(redis, channel="email"))]


async def test_internal_audiences_hear_at_once_and_public_deliveries_are_held(
    redis: Redis, pipeline: Pipeline
) -> None:
    event = opened()

    await pipeline.handle(event)

    assert await emailed(redis) == [BOB]
    assert await StatusPageStore(redis).get("inc-1") is None
    assert [(j.audience, j.channel) for j in pipeline.delivered] == [("engineering", "email")]
    records = await pipeline.log()
    assert summary(records) == [
        ("customers", "email", DeliveryStatus.HELD),
        ("customers", "status_page", DeliveryStatus.HELD),
        ("engineering", "email", DeliveryStatus.SENT),
    ]
    held = [r for r in records if r.status is DeliveryStatus.HELD]
    auto_publish_at = T0 + AUTO_PUBLISH_AFTER
    assert all(auto_publish_at.isoformat() in (r.error or "") for r in held)
    assert pipeline.approvals.published == [
        ApprovalRequested(
            event_id="ev-open",
            incident_id="inc-1",
            requested_at=T0,
            auto_publish_at=auto_publish_at,
        )
    ]
    [pending] = await ApprovalStore(redis).pending()
    assert (pending.event_id, pending.held) == ("ev-open", 2)
    assert pending.preview_title == "Investigating: A major outage affecting checkout"
    assert "Checkout is failing" not in pending.preview_text  # what customers would read
    assert pending.event == event


async def test_a_redelivered_held_event_is_held_and_asked_for_once(
    redis: Redis, pipeline: Pipeline
) -> None:
    event = opened()
    await pipeline.handle(event, attempt=1)
    pipeline.clock.advance(timedelta(seconds=30))

    await pipeline.handle(event, attempt=2)

    assert await emailed(redis) == [BOB]
    held = [r for r in await pipeline.log() if r.status is DeliveryStatus.HELD]
    assert len(held) == 2  # one per public delivery, from the first handling only
    assert len(pipeline.approvals.published) == 1
    [pending] = await ApprovalStore(redis).pending()
    assert pending.requested_at == T0


async def test_a_request_that_could_not_be_published_is_asked_for_when_the_event_comes_again(
    redis: Redis, pipeline: Pipeline
) -> None:
    """The first handling held the messages, then failed to ask for the timer: the event
    stays pending, and its redelivery asks, without holding (or recording) anything twice."""
    event = opened()
    pipeline.approvals.fail_next = 1
    with pytest.raises(ConnectionError):
        await pipeline.handle(event, attempt=1)
    assert await pipeline.queued() == []  # nothing went out before the request was made
    pipeline.clock.advance(timedelta(seconds=30))

    await pipeline.handle(event, attempt=2)

    assert await emailed(redis) == [BOB]
    assert pipeline.approvals.published == [
        ApprovalRequested(
            event_id="ev-open",
            incident_id="inc-1",
            requested_at=T0,  # the timer runs from the first hold
            auto_publish_at=T0 + AUTO_PUBLISH_AFTER,
        )
    ]
    held = [r for r in await pipeline.log() if r.status is DeliveryStatus.HELD]
    assert len(held) == 2


async def test_a_grant_sends_the_held_messages_once(redis: Redis, pipeline: Pipeline) -> None:
    event = opened()
    await pipeline.handle(event)
    pipeline.clock.advance(timedelta(minutes=2))

    assert await pipeline.approve(grant(pipeline, event)) == 2

    assert await emailed(redis) == [BOB, ALICE]
    page = await StatusPageStore(redis).get("inc-1")
    assert page is not None
    assert page.title == "A major outage affecting checkout"
    assert await ApprovalStore(redis).pending() == []
    records = await pipeline.log()
    sent = [(r.audience, r.channel) for r in records[3:]]
    assert sorted(sent) == [("customers", "email"), ("customers", "status_page")]
    assert {r.status for r in records[3:]} == {DeliveryStatus.SENT}
    assert {r.event_id for r in records} == {"ev-open"}  # the same deliveries, now sent
    held_ids = {r.delivery_id for r in records[:3] if r.status is DeliveryStatus.HELD}
    assert {r.delivery_id for r in records[3:]} == held_ids

    assert await pipeline.approve(grant(pipeline, event, by="dave")) == 0

    assert await emailed(redis) == [BOB, ALICE]
    assert len(await pipeline.log()) == len(records)
    assert [type(e) for e in pipeline.approvals.published] == [ApprovalRequested]


async def test_an_automatic_grant_sends_like_a_human_one(redis: Redis, pipeline: Pipeline) -> None:
    event = opened()
    await pipeline.handle(event)
    pipeline.clock.advance(AUTO_PUBLISH_AFTER)
    automatic = grant(pipeline, event, by="auto-publish").model_copy(update={"automatic": True})

    await pipeline.approve(automatic)

    assert await emailed(redis) == [BOB, ALICE]
    assert await ApprovalStore(redis).pending() == []


async def test_a_grant_for_nothing_held_sends_nothing(redis: Redis, pipeline: Pipeline) -> None:
    assert await pipeline.approve(grant(pipeline, opened(event_id="ev-never"))) == 0

    assert await emailed(redis) == []
    assert await pipeline.log() == []


async def test_a_sev2_event_is_not_held(redis: Redis, pipeline: Pipeline) -> None:
    await pipeline.handle(opened(Severity.ERROR))

    assert sorted(await emailed(redis)) == [ALICE, BOB]
    assert {r.status for r in await pipeline.log()} == {DeliveryStatus.SENT}
    assert pipeline.approvals.published == []
    assert await ApprovalStore(redis).pending() == []


async def test_a_retried_delivery_does_not_hold_up_the_approved_ones(
    redis: Redis, pipelines: Callable[..., Pipeline], smtp_server: SmtpServer
) -> None:
    """An engineer's mail is deferred (a retry is scheduled, nothing raises); the approval
    sends the customers' messages meanwhile, and the retry sends the engineer's once."""
    pipeline = pipelines(smtp=smtp_server)
    event = opened()
    smtp_server.defer.add(BOB)
    await pipeline.handle(event)
    engineer = [r for r in await pipeline.log() if r.audience == "engineering"]
    assert [(r.status, r.attempt) for r in engineer] == [(DeliveryStatus.RETRYING, 1)]

    await pipeline.approve(grant(pipeline, event))

    assert len(smtp_server.to(ALICE)) == 1
    assert smtp_server.to(BOB) == []
    smtp_server.defer.clear()
    await pipeline.fire_retries(after=timedelta(minutes=1))
    assert len(smtp_server.to(BOB)) == 1
    await pipeline.handle(event, attempt=2)  # a late redelivery of the event
    assert len(smtp_server.mailbox.messages) == 2
    assert await ApprovalStore(redis).pending() == []
    assert [type(e) for e in pipeline.approvals.published] == [ApprovalRequested]
    held = [r for r in await pipeline.log() if r.status is DeliveryStatus.HELD]
    assert len(held) == 2  # from the first handling only


async def test_an_event_fanned_out_again_after_its_approval_is_not_held_again(
    redis: Redis, pipelines: Callable[..., Pipeline], smtp_server: SmtpServer
) -> None:
    """The first fan-out died before marking the event done, and was approved meanwhile:
    when the event comes again, what was approved and sent is neither held nor sent again."""
    pipeline = pipelines(smtp=smtp_server)
    event = opened()
    await pipeline.handle(event)
    await pipeline.approve(grant(pipeline, event))
    assert len(smtp_server.mailbox.messages) == 2
    await redis.delete(fanned_out_key("ev-open:event"))
    pipeline.clock.advance(timedelta(minutes=1))

    await pipeline.handle(event, attempt=2)

    assert len(smtp_server.mailbox.messages) == 2
    assert await ApprovalStore(redis).pending() == []
    assert [type(e) for e in pipeline.approvals.published] == [ApprovalRequested]
    held = [r for r in await pipeline.log() if r.status is DeliveryStatus.HELD]
    assert len(held) == 2  # from the first handling only
    page = await StatusPageStore(redis).get("inc-1")
    assert page is not None
    assert len(page.updates) == 1


async def test_a_held_message_that_cannot_be_rendered_holds_up_nobody_else(
    redis: Redis, pipelines: Callable[..., Pipeline], tmp_path: Path
) -> None:
    """The preview of a held message is rendered too; its failure must not stop the event."""
    broken = tmp_path / "customers" / "email" / "message.txt.j2"
    broken.parent.mkdir(parents=True)
    broken.write_text("{{ no_such_value }}\n")
    pipeline = pipelines(approval_plan(templates_dir=str(tmp_path)))
    event = opened()

    await pipeline.handle(event)

    assert await emailed(redis) == [BOB]
    statuses = {(r.audience, r.channel): r.status for r in await pipeline.log()}
    assert statuses[("engineering", "email")] is DeliveryStatus.SENT
    assert statuses[("customers", "email")] is DeliveryStatus.HELD
    [pending] = await ApprovalStore(redis).pending()
    assert "no_such_value" in pending.preview_text

    await pipeline.approve(grant(pipeline, event))

    statuses = {(r.audience, r.channel): r.status for r in await pipeline.log()}
    assert statuses[("customers", "email")] is DeliveryStatus.FAILED
    assert statuses[("customers", "status_page")] is DeliveryStatus.SENT
    assert await emailed(redis) == [BOB]


# Through the dispatcher app: the ops API and the approvals stream


@pytest.fixture
async def client(
    redis: Redis, make_settings: Callable[..., Settings]
) -> AsyncIterator[httpx.AsyncClient]:
    settings = make_settings(smtp_host=None, ops_token=TOKEN)
    app = create_app(settings, ManualClock(T0), plan=PLAN)
    async with running(app, "http://dispatcher") as http:
        yield http


def auth() -> dict[str, str]:
    return {"Authorization": f"Bearer {TOKEN}"}


async def publish(redis_url: str, event: IncidentOpened) -> None:
    async with RedisBroker(redis_url) as broker:
        await broker.publish(event, stream=INCIDENT_EVENTS)


async def approval_events(redis: Redis) -> list[ApprovalRequested | ApprovalGranted]:
    return [APPROVAL_EVENT.validate_json(body) for body in await stream_bodies(redis, APPROVALS)]


async def test_the_app_lists_held_messages_and_an_approval_sends_them(
    client: httpx.AsyncClient, redis: Redis, redis_url: str
) -> None:
    await publish(redis_url, opened())
    await wait_for_entries(redis, DELIVERY_LOG, 3, within=20.0)  # 1 sent, 2 held

    listed = await client.get("/v1/approvals", headers=auth())

    assert listed.status_code == 200
    [item] = listed.json()
    assert item["event_id"] == "ev-open"
    assert item["incident_id"] == "inc-1"
    assert item["event_type"] == "incident.opened"
    assert item["held"] == 2
    assert item["requested_at"] == T0.isoformat()
    assert item["auto_publish_at"] == (T0 + AUTO_PUBLISH_AFTER).isoformat()
    assert item["preview"]["title"] == "Investigating: A major outage affecting checkout"
    assert "https://status.example.com" in item["preview"]["text"]
    [requested] = await approval_events(redis)
    assert isinstance(requested, ApprovalRequested)
    assert requested.event_id == "ev-open"
    assert await emailed(redis) == [BOB]

    approved = await client.post(
        "/v1/approvals/ev-open/approve", json={"by": "carol"}, headers=auth()
    )

    assert approved.status_code == 202
    assert approved.json() == {
        "status": "approved",
        "event_id": "ev-open",
        "by": "carol",
        "held": 2,
    }
    await wait_for_entries(redis, DELIVERY_LOG, 5, within=20.0)
    assert sorted(await emailed(redis)) == [ALICE, BOB]
    grants = [e for e in await approval_events(redis) if isinstance(e, ApprovalGranted)]
    assert [(g.event_id, g.by, g.automatic) for g in grants] == [("ev-open", "carol", False)]
    await eventually(
        lambda: _nothing_pending(client), what="the approval list to empty", within=20.0
    )


async def _nothing_pending(client: httpx.AsyncClient) -> bool:
    response = await client.get("/v1/approvals", headers=auth())
    return response.status_code == 200 and response.json() == []


async def test_approving_without_a_body_names_the_operator(
    client: httpx.AsyncClient, redis: Redis, redis_url: str
) -> None:
    await publish(redis_url, opened())
    await wait_for_entries(redis, DELIVERY_LOG, 3, within=20.0)

    approved = await client.post("/v1/approvals/ev-open/approve", headers=auth())

    assert approved.status_code == 202
    assert approved.json()["by"] == "operator"


async def test_approving_an_unknown_event_is_404(client: httpx.AsyncClient, redis: Redis) -> None:
    response = await client.post("/v1/approvals/ev-nope/approve", headers=auth())

    assert response.status_code == 404
    error = response.json()["error"]
    assert error["code"] == "not_found"
    assert "ev-nope" in error["message"]
    assert await stream_bodies(redis, APPROVALS) == []


async def test_approvals_need_the_ops_token(client: httpx.AsyncClient) -> None:
    assert (await client.get("/v1/approvals")).status_code == 401
    assert (await client.post("/v1/approvals/ev-open/approve")).status_code == 401
    assert (await client.get("/v1/approvals", headers=auth())).json() == []


async def test_the_app_does_not_hold_a_sev2_event(
    client: httpx.AsyncClient, redis: Redis, redis_url: str
) -> None:
    await publish(redis_url, opened(Severity.ERROR))
    await wait_for_entries(redis, DELIVERY_LOG, 3, within=20.0)

    assert (await client.get("/v1/approvals", headers=auth())).json() == []
    assert {r.status for r in await log_of(redis)} == {DeliveryStatus.SENT}
    assert sorted(await emailed(redis)) == [ALICE, BOB]
    assert await stream_bodies(redis, APPROVALS) == []
