"""The post-mortem reminder, as pure rules, and the plan field that sets it."""

from __future__ import annotations

from datetime import timedelta

import pytest

from services.dispatcher.rendering.content_check import EVENTS
from services.scheduler.postmortem_reminder import (
    PostmortemTimer,
    next_reminder,
    postmortem_due_event,
    reminder_for,
)
from shared.contracts import IncidentPostmortemPublished, IncidentStatus, postmortem_due_event_id
from shared.plan import EventKind, PlanError, load_plan
from tests.support.builders import (
    T0,
    make_incident,
    make_incident_opened,
    make_incident_resolved,
    make_incident_updated,
    make_resolved_incident,
)
from tests.support.plans import make_plan

PLAN = make_plan()  # postmortem_reminder_after: the default, 48 h
RESOLVED_AT = T0 + timedelta(hours=1)
RESOLVED = make_resolved_incident(resolved_at=RESOLVED_AT, revision=3)
TIMER = PostmortemTimer(
    incident_id="inc-1", resolved_at=RESOLVED_AT, due_at=RESOLVED_AT + timedelta(hours=48)
)
POSTMORTEM_URL = "https://status.example.com/postmortems/inc-1"


def published() -> IncidentPostmortemPublished:
    reviewed = RESOLVED.model_copy(update={"postmortem_url": POSTMORTEM_URL, "revision": 4})
    return IncidentPostmortemPublished(
        event_id="inc-1:4:incident.postmortem_published",
        occurred_at=RESOLVED_AT + timedelta(hours=20),
        incident=reviewed,
    )


# The plan field


def test_the_reminder_defaults_to_48_hours_and_can_be_set_or_turned_off() -> None:
    assert PLAN.postmortem_reminder_after == timedelta(hours=48)
    assert load_plan().postmortem_reminder_after == timedelta(hours=48)
    assert make_plan(postmortem_reminder_after="72h").postmortem_reminder_after == timedelta(
        hours=72
    )
    assert make_plan(postmortem_reminder_after=None).postmortem_reminder_after is None


@pytest.mark.parametrize("value", ["30s", "31d"])
def test_a_reminder_out_of_bounds_is_refused(value: str) -> None:
    with pytest.raises(PlanError, match="postmortem_reminder_after must be between 1 minute"):
        make_plan(postmortem_reminder_after=value)


@pytest.mark.parametrize("value", ["1m", "30d"])
def test_the_bounds_themselves_are_allowed(value: str) -> None:
    assert make_plan(postmortem_reminder_after=value).postmortem_reminder_after is not None


def test_the_new_kinds_are_routable_and_internal_only() -> None:
    assert EventKind("ack_overdue").internal_only
    assert EventKind("postmortem_due").internal_only
    assert not any(kind.internal_only for kind in EventKind if kind.value in EVENTS[:6])
    assert set(EVENTS) == {kind.value for kind in EventKind}


# What an incident needs as it stands


def test_a_resolved_incident_without_a_post_mortem_is_due_a_reminder() -> None:
    assert reminder_for(RESOLVED, PLAN) == TIMER


def test_no_reminder_while_open_once_posted_when_off_or_when_gone() -> None:
    assert reminder_for(make_incident(), PLAN) is None
    assert reminder_for(published().incident, PLAN) is None
    assert reminder_for(RESOLVED, make_plan(postmortem_reminder_after=None)) is None
    assert reminder_for(None, PLAN) is None


# Arming and cancelling


def test_a_resolution_arms_it_and_a_redelivered_one_keeps_it() -> None:
    resolved = make_incident_resolved(RESOLVED)

    armed = next_reminder(None, resolved, RESOLVED, PLAN)

    assert armed == TIMER
    assert next_reminder(armed, resolved, RESOLVED, PLAN) == armed


def test_publishing_the_post_mortem_cancels_it() -> None:
    event = published()

    assert next_reminder(TIMER, event, event.incident, PLAN) is None


def test_reopening_cancels_it() -> None:
    reopened = make_incident(status=IncidentStatus.INVESTIGATING, revision=4)
    event = make_incident_updated(reopened)

    assert next_reminder(TIMER, event, reopened, PLAN) is None


def test_other_events_never_arm_a_missing_reminder() -> None:
    # After it fired (the timer is gone), a late update about the resolved incident
    # does not bring it back.
    late = make_incident_updated(RESOLVED)

    assert next_reminder(None, late, RESOLVED, PLAN) is None
    assert next_reminder(None, make_incident_opened(), make_incident(), PLAN) is None


def test_a_later_resolution_moves_a_pending_reminder() -> None:
    again_at = RESOLVED_AT + timedelta(hours=5)
    again = make_resolved_incident(resolved_at=again_at, revision=6)

    moved = next_reminder(TIMER, make_incident_resolved(again), again, PLAN)

    assert moved == PostmortemTimer(
        incident_id="inc-1", resolved_at=again_at, due_at=again_at + timedelta(hours=48)
    )


def test_its_own_reminder_changes_nothing() -> None:
    fired = postmortem_due_event(TIMER, RESOLVED, TIMER.due_at)

    assert next_reminder(TIMER, fired, RESOLVED, PLAN) == TIMER
    assert next_reminder(None, fired, RESOLVED, PLAN) is None


# The reminder event


def test_the_reminder_has_one_id_per_resolution_however_often_it_fires() -> None:
    first = postmortem_due_event(TIMER, RESOLVED, TIMER.due_at)
    again = postmortem_due_event(TIMER, RESOLVED, TIMER.due_at + timedelta(minutes=3))

    assert first.event_id == again.event_id == postmortem_due_event_id("inc-1", RESOLVED_AT)
    assert first.event_id == f"inc-1:postmortem-due:{RESOLVED_AT.isoformat()}"
    assert first.incident == RESOLVED
    assert first.due_at == RESOLVED_AT + timedelta(hours=48)
    later = TIMER.model_copy(update={"resolved_at": RESOLVED_AT + timedelta(hours=5)})
    assert postmortem_due_event(later, RESOLVED, T0).event_id != first.event_id
