"""plan_deliveries(): which deliveries an event gets, by the plan's routes and audiences."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest

from services.dispatcher.fanout import (
    SUPPRESSED_RESOLVED,
    Delivery,
    delivery_id_for,
    plan_deliveries,
)
from shared.contracts import Incident, Severity
from shared.plan import ChannelName, Plan
from tests.support.builders import (
    T0,
    make_alert_state,
    make_incident,
    make_incident_opened,
    make_incident_resolved,
    make_resolved_incident,
    make_update_due,
)
from tests.support.plans import make_plan

ALICE = "alice@example.com"
BOB = "bob@example.com"
CAROL = "carol@example.com"
PHONE = "+14155550100"
SLACK = {"name": "#incidents", "url_env": "SLACK_URL"}

AUDIENCES: dict[str, Any] = {
    "customers": {"public": True, "email": [ALICE], "sms": [PHONE], "status_page": True},
    "engineering": {"email": [BOB], "slack": [SLACK]},
    "support": {"email": [CAROL, ALICE]},
}


def plan_with(routes: list[dict[str, Any]], **overrides: Any) -> Plan:
    return make_plan(audiences=AUDIENCES, routes=routes, **overrides)


def targets(deliveries: list[Delivery]) -> list[tuple[str, ChannelName, str]]:
    return [(d.audience, d.channel, d.recipient) for d in deliveries]


def opened(**incident: Any) -> tuple[Any, Incident]:
    subject = make_incident(**incident)
    return make_incident_opened(subject, event_id="ev-1", occurred_at=T0), subject


def test_every_channel_of_every_routed_audience_in_plan_order() -> None:
    plan = plan_with([{"audiences": ["customers", "engineering"]}])
    event, incident = opened()

    deliveries = plan_deliveries(event, incident, plan)

    assert targets(deliveries) == [
        ("customers", ChannelName.EMAIL, ALICE),
        ("customers", ChannelName.SMS, PHONE),
        ("customers", ChannelName.STATUS_PAGE, "status-page"),
        ("engineering", ChannelName.EMAIL, BOB),
        ("engineering", ChannelName.SLACK, "#incidents"),
    ]
    assert all(d.event_id == "ev-1" and d.incident_id == "inc-1" for d in deliveries)
    assert all(d.incident == incident and d.occurred_at == T0 for d in deliveries)
    assert [d.public for d in deliveries] == [True, True, True, False, False]
    assert not any(d.suppressed or d.needs_approval for d in deliveries)


def test_keys_and_ids_are_deterministic_and_distinct() -> None:
    plan = plan_with([{"audiences": ["customers", "engineering"]}])
    event, incident = opened()

    first = plan_deliveries(event, incident, plan)
    again = plan_deliveries(event, incident, plan)

    assert first == again
    assert first[0].idempotency_key == f"ev-1:email:{ALICE}"
    assert first[0].delivery_id == delivery_id_for(f"ev-1:email:{ALICE}")
    assert len({d.delivery_id for d in first}) == len(first)


@pytest.mark.parametrize(
    ("severity", "expected"),
    [
        (Severity.CRITICAL, ["customers", "engineering"]),
        (Severity.ERROR, ["engineering"]),
        (Severity.WARNING, []),
    ],
)
def test_routes_match_by_severity(severity: Severity, expected: list[str]) -> None:
    plan = plan_with(
        [
            {"match": {"severities": ["SEV1"]}, "audiences": ["customers"], "channels": ["email"]},
            {"match": {"severities": ["SEV1", "SEV2"]}, "audiences": ["engineering"]},
        ]
    )
    event, incident = opened(severity=severity)

    audiences = [d.audience for d in plan_deliveries(event, incident, plan)]

    assert list(dict.fromkeys(audiences)) == expected


@pytest.mark.parametrize(
    ("service", "heard"), [("checkout", True), ("search", False), (None, False)]
)
def test_routes_match_by_service(service: str | None, heard: bool) -> None:
    plan = plan_with([{"match": {"services": ["checkout", "payments"]}, "audiences": ["support"]}])
    event, incident = opened(service=service)

    assert bool(plan_deliveries(event, incident, plan)) is heard


@pytest.mark.parametrize(
    ("components", "heard"),
    [(("cart", "api"), True), (("web",), True), (("search",), False), ((), False)],
)
def test_routes_match_when_any_component_is_affected(
    components: tuple[str, ...], heard: bool
) -> None:
    plan = plan_with([{"match": {"components": ["api", "web"]}, "audiences": ["support"]}])
    event, incident = opened(components=components)

    assert bool(plan_deliveries(event, incident, plan)) is heard


def test_routes_match_when_one_alert_carries_every_label() -> None:
    plan = plan_with(
        [{"match": {"labels": {"team": "payments", "env": "prod"}}, "audiences": ["support"]}]
    )
    split = (
        make_alert_state(fingerprint="a", labels={"team": "payments", "env": "staging"}),
        make_alert_state(fingerprint="b", labels={"team": "search", "env": "prod"}),
    )
    together = (
        *split,
        make_alert_state(fingerprint="c", labels={"team": "payments", "env": "prod", "x": "y"}),
    )

    event, incident = opened(alerts=split)
    assert plan_deliveries(event, incident, plan) == []  # each label on some alert is not enough
    event, incident = opened(alerts=together)
    assert targets(plan_deliveries(event, incident, plan)) == [
        ("support", ChannelName.EMAIL, CAROL),
        ("support", ChannelName.EMAIL, ALICE),
    ]


def test_every_condition_of_a_match_must_hold() -> None:
    plan = plan_with(
        [{"match": {"severities": ["SEV1"], "services": ["checkout"]}, "audiences": ["support"]}]
    )

    event, incident = opened(service="checkout", severity=Severity.ERROR)
    assert plan_deliveries(event, incident, plan) == []
    event, incident = opened(service="checkout", severity=Severity.CRITICAL)
    assert len(plan_deliveries(event, incident, plan)) == 2


def test_a_route_only_carries_the_events_it_names() -> None:
    plan = plan_with(
        [
            {"events": ["opened", "resolved"], "audiences": ["customers"], "channels": ["email"]},
            {"events": ["update_due"], "audiences": ["engineering"], "channels": ["email"]},
        ]
    )
    incident = make_incident()
    due = make_update_due()
    resolved = make_incident_resolved(event_id="ev-9")

    assert targets(plan_deliveries(make_incident_opened(incident), incident, plan)) == [
        ("customers", ChannelName.EMAIL, ALICE)
    ]
    assert targets(plan_deliveries(due, incident, plan)) == [
        ("engineering", ChannelName.EMAIL, BOB)
    ]
    assert targets(plan_deliveries(resolved, resolved.incident, plan)) == [
        ("customers", ChannelName.EMAIL, ALICE)
    ]


def test_a_route_can_name_a_subset_of_the_audiences_channels() -> None:
    plan = plan_with([{"audiences": ["customers"], "channels": ["status_page", "sms"]}])
    event, incident = opened()

    assert targets(plan_deliveries(event, incident, plan)) == [
        ("customers", ChannelName.STATUS_PAGE, "status-page"),
        ("customers", ChannelName.SMS, PHONE),
    ]


def test_a_recipient_in_two_audiences_hears_once_in_the_first_audiences_words() -> None:
    plan = plan_with(
        [
            {"audiences": ["customers"], "channels": ["email"]},
            {"audiences": ["support", "customers"]},
        ]
    )
    event, incident = opened()

    deliveries = plan_deliveries(event, incident, plan)

    emails = [(d.audience, d.recipient) for d in deliveries if d.channel is ChannelName.EMAIL]
    assert emails == [("customers", ALICE), ("support", CAROL)]
    assert len({d.idempotency_key for d in deliveries}) == len(deliveries)
    # The same person on another channel is another delivery.
    assert ("customers", ChannelName.SMS, PHONE) in targets(deliveries)


def test_internal_only_severities_never_reach_a_public_audience() -> None:
    severities = {
        "SEV1": {"name": "a major outage"},
        "SEV2": {"name": "a partial outage"},
        "SEV3": {"name": "degraded performance"},
        "SEV4": {"name": "a minor issue", "internal_only": True},
    }
    plan = plan_with([{"audiences": ["customers", "engineering"]}], severities=severities)

    minor, minor_incident = opened(severity=Severity.INFO)
    major, major_incident = opened(severity=Severity.CRITICAL)

    assert {d.audience for d in plan_deliveries(minor, minor_incident, plan)} == {"engineering"}
    assert {d.audience for d in plan_deliveries(major, major_incident, plan)} == {
        "customers",
        "engineering",
    }


def test_update_due_for_an_open_incident_is_sent_at_its_emission_time() -> None:
    plan = plan_with([{"audiences": ["customers"]}])
    due = make_update_due(emitted_at=T0 + timedelta(minutes=31))

    deliveries = plan_deliveries(due, make_incident(), plan)

    assert len(deliveries) == 3
    assert all(d.suppressed_reason is None for d in deliveries)
    assert {d.occurred_at for d in deliveries} == {T0 + timedelta(minutes=31)}
    assert {d.event_id for d in deliveries} == {"due-1"}


def test_update_due_for_a_resolved_incident_is_suppressed() -> None:
    plan = plan_with([{"audiences": ["customers", "engineering"]}])

    deliveries = plan_deliveries(make_update_due(), make_resolved_incident(), plan)

    assert len(deliveries) == 5
    assert {d.suppressed_reason for d in deliveries} == {SUPPRESSED_RESOLVED}
    assert SUPPRESSED_RESOLVED == "incident resolved"
    assert all(d.suppressed for d in deliveries)


def test_a_resolution_is_never_suppressed() -> None:
    plan = plan_with([{"audiences": ["customers", "engineering"]}])
    resolved = make_incident_resolved(event_id="ev-9")

    deliveries = plan_deliveries(resolved, resolved.incident, plan)

    assert deliveries
    assert not any(d.suppressed for d in deliveries)


@pytest.mark.parametrize(("severity", "held"), [(Severity.CRITICAL, True), (Severity.ERROR, False)])
def test_public_deliveries_of_approval_severities_need_approval(
    severity: Severity, held: bool
) -> None:
    plan = plan_with([{"audiences": ["customers", "engineering"]}], approval=["SEV1"])
    event, incident = opened(severity=severity)

    deliveries = plan_deliveries(event, incident, plan)

    assert {d.needs_approval for d in deliveries if d.public} == {held}
    assert {d.needs_approval for d in deliveries if not d.public} == {False}


def test_no_route_no_deliveries() -> None:
    plan = plan_with([])
    event, incident = opened()

    assert plan_deliveries(event, incident, plan) == []
