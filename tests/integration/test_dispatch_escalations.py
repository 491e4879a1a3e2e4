"""The dispatcher and the scheduler's internal events: escalations go to the team only.

``ack_overdue`` and ``postmortem_due`` are routable like any kind, and a route that
lists no events matches them, but they never reach a public audience nor a channel
anyone can read (status page, social accounts). The customers' own follow-up is the
post-mortem itself (``postmortem_published``), checked here end to end as well.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from datetime import timedelta
from pathlib import Path
from typing import Any, Protocol

import pytest
from redis.asyncio import Redis

from services.dispatcher.channels import Channel
from services.dispatcher.fanout import plan_deliveries
from services.dispatcher.plan_check import check_plan
from services.dispatcher.rendering.messages import RenderedMessage
from services.dispatcher.status_page_store import StatusPageStore
from services.scheduler.ack_overdue import (
    AckTimer,
    ack_overdue_event,
    ack_overdue_firer,
    ack_overdue_schedule,
    follow_ack,
)
from services.scheduler.postmortem_reminder import (
    PostmortemTimer,
    follow_postmortem,
    postmortem_due_event,
    postmortem_reminder_firer,
    postmortem_reminder_schedule,
)
from shared.clock import ManualClock
from shared.contracts import (
    AlertState,
    AlertStatus,
    DeliveryStatus,
    IncidentAckOverdue,
    IncidentPostmortemDue,
    IncidentPostmortemPublished,
    IncidentStatus,
    Severity,
)
from shared.plan import ChannelName, EventKind, Plan, PlanError, load_plan
from shared.settings import Settings
from tests.support.builders import (
    T0,
    make_alert_state,
    make_incident,
    make_incident_opened,
    make_incident_resolved,
    make_resolved_incident,
    store_incident,
)
from tests.support.dispatching import Pipeline, ScriptedChannel, build_pipeline
from tests.support.plans import make_plan, plan_data
from tests.support.smtp import SmtpServer
from tests.support.streams import incident_events

pytestmark = pytest.mark.integration

CUSTOMER = "customer@example.com"
ENGINEER = "oncall@example.com"
STATUS_URL = "https://status.example.com"
RUNBOOK = "https://runbooks.example.com/checkout-errors"
DASHBOARD = "https://grafana.example.com/d/checkout"
POSTMORTEM_URL = "https://status.example.com/postmortems/inc-1"
RESOLVED_AT = T0 + timedelta(hours=1)
LEASE = timedelta(seconds=30)


def severities() -> dict[str, Any]:
    data = plan_data()["severities"]
    data["SEV1"]["acknowledge_within"] = "15m"
    return dict(data)


def two_audiences(**overrides: Any) -> Plan:
    """Customers (public: email and the status page) and engineering (internal: email);
    one route each, hearing every kind of event."""
    values: dict[str, Any] = {
        "status_page_url": STATUS_URL,
        "severities": severities(),
        "audiences": {
            "customers": {"public": True, "email": [CUSTOMER], "status_page": True},
            "engineering": {"email": [ENGINEER]},
        },
        "routes": [{"audiences": ["customers"]}, {"audiences": ["engineering"]}],
    }
    return make_plan(**(values | overrides))


PLAN = two_audiences()
ALERT: AlertState = make_alert_state(links={"runbook": RUNBOOK, "dashboard": DASHBOARD})
OPEN = make_incident(service="checkout", alerts=(ALERT,))
RESOLVED = make_resolved_incident(
    resolved_at=RESOLVED_AT,
    service="checkout",
    alerts=(ALERT.model_copy(update={"status": AlertStatus.RESOLVED}),),
    acknowledged_at=T0 + timedelta(minutes=4),
    acknowledged_by="oncall-ann",
    revision=3,
)


def escalation(at: timedelta = timedelta(minutes=15)) -> IncidentAckOverdue:
    timer = AckTimer(
        incident_id="inc-1", due_at=T0 + timedelta(minutes=15), severity=Severity.CRITICAL
    )
    return ack_overdue_event(timer, OPEN, T0 + at)


def reminder() -> IncidentPostmortemDue:
    due = RESOLVED_AT + timedelta(hours=48)
    timer = PostmortemTimer(incident_id="inc-1", resolved_at=RESOLVED_AT, due_at=due)
    return postmortem_due_event(timer, RESOLVED, due)


class MakePipeline(Protocol):
    def __call__(
        self, plan: Plan = ..., *, channels: dict[str, Channel] | None = ..., **settings: Any
    ) -> Pipeline: ...


@pytest.fixture
async def make_pipeline(
    redis: Redis, make_settings: Callable[..., Settings]
) -> AsyncIterator[MakePipeline]:
    built: list[Pipeline] = []

    def factory(
        plan: Plan = PLAN, *, channels: dict[str, Channel] | None = None, **settings: Any
    ) -> Pipeline:
        values: dict[str, Any] = {"consumer_name": "dispatcher-test", "rate_limits": ()}
        pipeline = build_pipeline(
            redis, make_settings(**(values | settings)), plan, ManualClock(T0), channels=channels
        )
        built.append(pipeline)
        return pipeline

    yield factory
    for pipeline in built:
        await pipeline.aclose()


def sent_to(email: ScriptedChannel) -> list[tuple[str, RenderedMessage]]:
    return [(recipient, message) for recipient, message, _ in email.sends]


# Fan-out: internal audiences only


async def test_an_ack_overdue_escalation_reaches_only_the_internal_audience(
    make_pipeline: MakePipeline,
) -> None:
    email = ScriptedChannel()
    pipeline = make_pipeline(channels={"email": email})

    ran = await pipeline.handle(escalation())

    assert ran == 1
    [(recipient, message)] = sent_to(email)
    assert recipient == ENGINEER
    assert message.title == "[SEV1] Not acknowledged: Checkout is failing"
    assert (
        'SEV1 (a major outage) incident inc-1, "Checkout is failing", opened about 15 minutes '
        "ago and nobody has acknowledged it (the plan asks for it within 15 minutes)."
    ) in " ".join(message.text.split())
    assert f"Runbook: {RUNBOOK}" in message.text
    assert f"Dashboard: {DASHBOARD}" in message.text
    assert "POST /v1/incidents/inc-1/acknowledge" in message.text
    assert "sorry" not in message.text.lower()  # written for the team, not for customers
    records = await pipeline.log()
    assert [(r.audience, r.channel, r.status) for r in records] == [
        ("engineering", "email", DeliveryStatus.SENT)
    ]
    assert [(j.audience, j.public, j.event_type) for j in pipeline.delivered] == [
        ("engineering", False, "incident.ack_overdue")
    ]


async def test_a_double_fire_of_the_same_escalation_is_sent_once(
    make_pipeline: MakePipeline,
) -> None:
    email = ScriptedChannel()
    pipeline = make_pipeline(channels={"email": email})

    assert await pipeline.handle(escalation(timedelta(minutes=15))) == 1
    # The timer fired again (a crash before it was dropped): same id, a later time.
    assert await pipeline.handle(escalation(timedelta(minutes=16))) == 0

    assert len(email.sends) == 1
    assert len(await pipeline.log()) == 1


async def test_a_post_mortem_reminder_reaches_only_the_internal_audience(
    make_pipeline: MakePipeline,
) -> None:
    email = ScriptedChannel()
    pipeline = make_pipeline(channels={"email": email})

    assert await pipeline.handle(reminder()) == 1

    [(recipient, message)] = sent_to(email)
    assert recipient == ENGINEER
    assert message.title == "[SEV1] Post-mortem due: Checkout is failing"
    text = " ".join(message.text.split())
    assert (
        'Incident inc-1, "Checkout is failing", was resolved about 2 days ago; '
        "no post-mortem has been posted yet. Post it with POST /v1/incidents/inc-1/postmortem"
    ) in text
    assert "Next update" not in text


def test_a_default_route_never_takes_them_public_nor_to_a_broadcast_channel() -> None:
    plan = two_audiences(
        audiences={
            "customers": {"public": True, "email": [CUSTOMER], "status_page": True},
            "engineering": {
                "email": [ENGINEER],
                "status_page": True,
                "mastodon": [
                    {"instance": "https://mastodon.example", "access_token_env": "ENG_TOKEN"}
                ],
            },
        }
    )
    opened = make_incident_opened(OPEN)

    everyone = {(d.audience, d.channel) for d in plan_deliveries(opened, OPEN, plan)}
    assert ("customers", ChannelName.EMAIL) in everyone  # the routes do match them
    assert ("engineering", ChannelName.MASTODON) in everyone
    for event, incident in ((escalation(), OPEN), (reminder(), RESOLVED)):
        deliveries = plan_deliveries(event, incident, plan)
        assert [(d.audience, d.channel, d.recipient, d.public) for d in deliveries] == [
            ("engineering", ChannelName.EMAIL, ENGINEER, False)
        ]
        assert not any(d.needs_approval for d in deliveries)


@pytest.mark.parametrize("severity", list(Severity))
def test_every_severitys_escalation_stays_internal(severity: Severity) -> None:
    incident = make_incident(severity=severity)
    timer = AckTimer(incident_id=incident.id, due_at=T0, severity=severity)
    event = ack_overdue_event(timer, incident, T0)

    assert {d.audience for d in plan_deliveries(event, incident, PLAN)} == {"engineering"}
    opened = make_incident_opened(incident)
    assert {d.audience for d in plan_deliveries(opened, incident, PLAN)} == {
        "customers",
        "engineering",
    }


# The plan: routable, but never to a public audience


def test_a_route_may_name_them_for_an_internal_audience() -> None:
    plan = two_audiences(
        routes=[
            {"audiences": ["customers"], "events": ["opened", "resolved"]},
            {"audiences": ["engineering"], "events": ["ack_overdue", "postmortem_due"]},
        ]
    )

    assert [d.audience for d in plan_deliveries(escalation(), OPEN, plan)] == ["engineering"]
    assert [d.audience for d in plan_deliveries(reminder(), RESOLVED, plan)] == ["engineering"]
    assert plan_deliveries(make_incident_opened(OPEN), OPEN, plan)[0].audience == "customers"


def test_naming_them_for_a_public_audience_is_refused() -> None:
    with pytest.raises(PlanError, match="ack_overdue is internal only, but the route sends it"):
        two_audiences(routes=[{"audiences": ["customers"], "events": ["opened", "ack_overdue"]}])


def test_naming_them_with_a_broadcast_channel_is_refused() -> None:
    with pytest.raises(PlanError, match="status_page can be read by anyone"):
        two_audiences(
            audiences={"engineering": {"email": [ENGINEER], "status_page": True}},
            routes=[
                {
                    "audiences": ["engineering"],
                    "events": ["postmortem_due"],
                    "channels": ["status_page"],
                }
            ],
        )


# clarion plan check


def test_the_shipped_default_plan_checks_them_for_internal_audiences_only() -> None:
    settings = Settings(dispatcher_host="127.0.0.1", dispatcher_port=8001)
    plan = load_plan()

    report = check_plan(plan, settings)

    assert report.passed, [row.reasons for row in report.failures]
    rows = {(row.event, row.audience) for row in report.messages if row.event in INTERNAL_KINDS}
    assert rows
    assert {audience for _, audience in rows} <= {
        name for name, audience in plan.audiences.items() if not audience.public
    }
    assert {event for event, _ in rows} == INTERNAL_KINDS


INTERNAL_KINDS = {EventKind.ACK_OVERDUE.value, EventKind.POSTMORTEM_DUE.value}


def test_plan_check_fails_a_template_that_cannot_render_them(tmp_path: Path) -> None:
    templates = tmp_path / "plan-templates" / "email"
    templates.mkdir(parents=True)
    (templates / "ack_overdue.txt.j2").write_text("{{ pager_rotation }}\n", encoding="utf-8")
    settings = Settings(dispatcher_host="127.0.0.1", dispatcher_port=8001)
    plan = two_audiences(templates_dir=str(tmp_path / "plan-templates"))

    report = check_plan(plan, settings)

    failed = {(row.severity, row.event, row.audience, row.channel) for row in report.failures}
    assert ("SEV1", "ack_overdue", "engineering", "email") in failed
    assert {event for _, event, _, _ in failed} == {"ack_overdue"}
    assert {audience for _, _, audience, _ in failed} == {"engineering"}


# End to end: scheduler timer -> INCIDENT_EVENTS -> dispatcher


async def test_the_scheduler_escalation_travels_to_the_team_and_no_further(
    redis: Redis, make_pipeline: MakePipeline
) -> None:
    email = ScriptedChannel()
    pipeline = make_pipeline(channels={"email": email})
    clock = ManualClock(T0)
    acks = ack_overdue_schedule(redis)
    opened = make_incident_opened(OPEN)
    await store_incident(redis, OPEN)
    await follow_ack(acks, redis, PLAN, opened)

    clock.advance(timedelta(minutes=15))
    firer = ack_overdue_firer(acks, redis, clock, LEASE, PLAN)
    assert await firer.run_once() == 1

    [event] = await incident_events(redis)
    assert isinstance(event, IncidentAckOverdue)
    assert await pipeline.handle(event) == 1
    assert [recipient for recipient, _ in sent_to(email)] == [ENGINEER]
    assert await StatusPageStore(redis).get("inc-1") is None  # nothing on the public page


async def test_the_post_mortem_reminder_travels_to_the_team_and_no_further(
    redis: Redis, make_pipeline: MakePipeline
) -> None:
    email = ScriptedChannel()
    pipeline = make_pipeline(channels={"email": email})
    clock = ManualClock(RESOLVED_AT)
    reminders = postmortem_reminder_schedule(redis)
    await store_incident(redis, RESOLVED)
    await follow_postmortem(reminders, redis, PLAN, make_incident_resolved(RESOLVED))

    clock.advance(timedelta(hours=48))
    firer = postmortem_reminder_firer(reminders, redis, clock, LEASE, PLAN)
    assert await firer.run_once() == 1

    [event] = await incident_events(redis)
    assert isinstance(event, IncidentPostmortemDue)
    assert await pipeline.handle(event) == 1
    [(recipient, message)] = sent_to(email)
    assert recipient == ENGINEER
    assert "/v1/incidents/inc-1/postmortem" in message.text


# The customers' follow-up: the post-mortem itself


async def test_customers_told_of_the_incident_receive_its_post_mortem(
    redis: Redis, make_settings: Callable[..., Settings], smtp_server: SmtpServer
) -> None:
    settings = make_settings(
        consumer_name="dispatcher-test",
        rate_limits=(),
        smtp_host=smtp_server.host,
        smtp_port=smtp_server.port,
    )
    pipeline = build_pipeline(redis, settings, PLAN, ManualClock(RESOLVED_AT))
    try:
        await pipeline.handle(make_incident_resolved(RESOLVED))
        assert len(smtp_server.to(CUSTOMER)) == 1  # the customers were told

        reviewed = RESOLVED.model_copy(
            update={
                "postmortem_url": POSTMORTEM_URL,
                "postmortem_summary": "A configuration change overloaded the database.",
                "revision": 4,
            }
        )
        await pipeline.handle(
            IncidentPostmortemPublished(
                event_id="inc-1:4:incident.postmortem_published",
                occurred_at=RESOLVED_AT + timedelta(hours=20),
                incident=reviewed,
            )
        )
    finally:
        await pipeline.aclose()

    first, follow_up = smtp_server.to(CUSTOMER)
    assert first["Subject"] == "Resolved: A major outage affecting checkout"
    assert follow_up["Subject"] == "Post-mortem: A major outage affecting checkout"
    body = follow_up.get_body(preferencelist=("plain",))
    assert body is not None
    assert POSTMORTEM_URL in body.get_content()
    assert "A configuration change overloaded the database." in body.get_content()
    page = await StatusPageStore(redis).get("inc-1")
    assert page is not None
    assert page.state is IncidentStatus.RESOLVED
    assert POSTMORTEM_URL in page.updates[0].body  # newest first
    records = await pipeline.log()
    assert {(r.audience, r.event_id) for r in records if r.event_id.endswith("published")} == {
        ("customers", "inc-1:4:incident.postmortem_published"),
        ("engineering", "inc-1:4:incident.postmortem_published"),
    }
    assert all(r.status is DeliveryStatus.SENT for r in records if r.channel == "email")
