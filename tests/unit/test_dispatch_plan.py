"""plan(): which deliveries an event gets."""

from __future__ import annotations

from datetime import timedelta

import pytest

from services.dispatcher.plan import (
    EMAIL,
    STATUS_PAGE,
    STATUS_PAGE_RECIPIENT,
    delivery_id_for,
    plan,
)
from shared.contracts import Incident
from tests.support.builders import (
    T0,
    make_incident,
    make_incident_opened,
    make_incident_resolved,
    make_resolved_incident,
    make_update_due,
)

RECIPIENTS = ("alice@example.com", "bob@example.com")


def test_one_email_per_recipient_and_one_status_page_post() -> None:
    event = make_incident_opened(event_id="ev-1", occurred_at=T0)

    deliveries = plan(event, None, RECIPIENTS)

    assert [(d.channel, d.recipient) for d in deliveries] == [
        (EMAIL, "alice@example.com"),
        (EMAIL, "bob@example.com"),
        (STATUS_PAGE, STATUS_PAGE_RECIPIENT),
    ]
    assert all(d.incident_id == "inc-1" and d.event_id == "ev-1" for d in deliveries)
    assert all(not d.suppressed for d in deliveries)
    assert all(d.incident == event.incident for d in deliveries)


def test_keys_and_ids_are_deterministic_and_distinct() -> None:
    event = make_incident_opened(event_id="ev-1", occurred_at=T0)

    first = plan(event, None, RECIPIENTS)
    again = plan(event, None, RECIPIENTS)

    assert first == again
    assert first[0].idempotency_key == "ev-1:email:alice@example.com"
    assert first[0].delivery_id == delivery_id_for("ev-1:email:alice@example.com")
    assert len({d.delivery_id for d in first}) == len(first)


def test_duplicate_recipients_get_one_email() -> None:
    event = make_incident_opened(event_id="ev-1", occurred_at=T0)

    deliveries = plan(event, None, ("alice@example.com", "alice@example.com"))

    assert [d.recipient for d in deliveries if d.channel == EMAIL] == ["alice@example.com"]


def test_no_recipients_still_posts_to_the_status_page() -> None:
    event = make_incident_opened(event_id="ev-1", occurred_at=T0)

    assert [d.channel for d in plan(event, None, ())] == [STATUS_PAGE]


def test_resolution_is_never_suppressed() -> None:
    event = make_incident_resolved(event_id="ev-9", occurred_at=T0)

    assert all(not d.suppressed for d in plan(event, None, RECIPIENTS))


def test_update_due_for_open_incident_is_sent() -> None:
    due = make_update_due(emitted_at=T0 + timedelta(minutes=30))

    deliveries = plan(due, make_incident(), RECIPIENTS)

    assert len(deliveries) == 3
    assert all(d.suppressed_reason is None for d in deliveries)
    assert deliveries[0].occurred_at == T0 + timedelta(minutes=30)


@pytest.mark.parametrize(
    ("incident", "reason"),
    [(make_resolved_incident(), "incident resolved"), (None, "incident not found")],
)
def test_update_due_for_closed_or_unknown_incident_is_suppressed(
    incident: Incident | None, reason: str
) -> None:
    deliveries = plan(make_update_due(), incident, RECIPIENTS)

    assert len(deliveries) == 3
    assert {d.suppressed_reason for d in deliveries} == {reason}
