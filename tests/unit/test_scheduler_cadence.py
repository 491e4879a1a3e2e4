"""The cadence rules: when each update of an open incident is due.

Events carry the ``next_update_at`` ingest promised (from the plan's cadence);
the scheduler moves the pending item to exactly that time. Firing an update
asks the plan (``Plan.cadence``) when the next one is due.
"""

from __future__ import annotations

from datetime import datetime, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from services.scheduler.cadence import (
    NEVER,
    ScheduleItem,
    advance,
    apply_event,
    ceil_ms,
    fire,
    floor_ms,
    update_event_id,
)
from shared.clock import ManualClock
from shared.contracts import (
    IncidentOpened,
    IncidentPostmortemPublished,
    IncidentSeverityChanged,
    IncidentUpdated,
    Severity,
)
from shared.plan import Plan
from tests.support.builders import (
    T0,
    make_incident,
    make_incident_opened,
    make_incident_resolved,
    make_incident_severity_changed,
    make_incident_updated,
    make_resolved_incident,
)
from tests.support.plans import CADENCE, make_plan

PLAN = make_plan()  # SEV1 30 min, SEV2 1 h, SEV3 2 h, SEV4 4 h
NO_SEV3_UPDATES = make_plan(cadence={**CADENCE, Severity.WARNING: None})
"""SEV3 (warning) is updated on open and resolve only."""


def promised(plan: Plan, severity: Severity, at: datetime) -> datetime | None:
    """What ingest stamps on an event of an incident at ``severity`` at ``at``."""
    return plan.next_update_at(severity, at)


def opened(at: datetime, severity: Severity = Severity.ERROR, plan: Plan = PLAN) -> IncidentOpened:
    return make_incident_opened(
        make_incident(severity=severity, updated_at=at),
        occurred_at=at,
        next_update_at=promised(plan, severity, at),
    )


def updated(
    at: datetime, severity: Severity = Severity.ERROR, plan: Plan = PLAN
) -> IncidentUpdated:
    return make_incident_updated(
        make_incident(severity=severity, updated_at=at),
        occurred_at=at,
        next_update_at=promised(plan, severity, at),
    )


def severity_changed(
    at: datetime, severity: Severity, previous: Severity, plan: Plan = PLAN
) -> IncidentSeverityChanged:
    return make_incident_severity_changed(
        make_incident(severity=severity, updated_at=at),
        previous_severity=previous,
        occurred_at=at,
        next_update_at=promised(plan, severity, at),
    )


def item(sequence: int, basis_at: datetime, severity: Severity = Severity.ERROR) -> ScheduleItem:
    interval = PLAN.cadence(severity)
    assert interval is not None
    return ScheduleItem(
        incident_id="inc-1",
        sequence=sequence,
        severity=severity,
        basis_at=basis_at,
        due_at=basis_at + interval,
    )


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock(T0)


# Events


def test_opened_schedules_update_one_at_the_promised_time(clock: ManualClock) -> None:
    result = apply_event(None, opened(clock.now(), Severity.CRITICAL))

    assert result == ScheduleItem(
        incident_id="inc-1",
        sequence=1,
        severity=Severity.CRITICAL,
        basis_at=T0,
        due_at=T0 + timedelta(minutes=30),
    )


def test_the_event_promise_stands_whatever_the_interval(clock: ManualClock) -> None:
    # Ingest stamped the promise once; the scheduler never recomputes it.
    promise = clock.now() + timedelta(minutes=7)
    event = make_incident_opened(occurred_at=clock.now(), next_update_at=promise)

    result = apply_event(None, event)

    assert result is not None
    assert result.due_at == promise


def test_repeated_opened_changes_nothing(clock: ManualClock) -> None:
    first = apply_event(None, opened(clock.now()))

    assert first is not None
    assert apply_event(first, opened(clock.now())) == first


def test_update_moves_due_time_to_the_promised_time_and_keeps_sequence(
    clock: ManualClock,
) -> None:
    current = item(3, basis_at=T0)
    clock.advance(timedelta(minutes=20))

    result = apply_event(current, updated(clock.now()))

    assert result is not None
    assert result.sequence == 3
    assert result.basis_at == T0 + timedelta(minutes=20)
    assert result.due_at == T0 + timedelta(minutes=20) + timedelta(hours=1)


def test_severity_change_uses_the_promise_for_the_new_severity(clock: ManualClock) -> None:
    current = item(2, basis_at=T0, severity=Severity.WARNING)
    clock.advance(timedelta(minutes=10))

    result = apply_event(
        current, severity_changed(clock.now(), Severity.CRITICAL, previous=Severity.WARNING)
    )

    assert result is not None
    assert result.severity is Severity.CRITICAL
    assert result.sequence == 2
    assert result.due_at == T0 + timedelta(minutes=10) + timedelta(minutes=30)


def test_severity_change_to_a_severity_without_cadence_makes_the_item_dormant(
    clock: ManualClock,
) -> None:
    current = item(2, basis_at=T0, severity=Severity.CRITICAL)
    clock.advance(timedelta(minutes=10))
    event = severity_changed(
        clock.now(), Severity.WARNING, previous=Severity.CRITICAL, plan=NO_SEV3_UPDATES
    )
    assert event.next_update_at is None  # ingest promised nothing

    result = apply_event(current, event)

    assert result is not None
    assert not result.promised
    assert result.due_at == NEVER
    assert (result.sequence, result.basis_at) == (2, clock.now())  # remembered, not fired


def test_opened_at_a_severity_without_cadence_schedules_nothing(clock: ManualClock) -> None:
    result = apply_event(None, opened(clock.now(), Severity.WARNING, NO_SEV3_UPDATES))

    assert result is not None
    assert not result.promised


def test_severity_change_from_no_cadence_to_sev1_arms_at_the_promised_time(
    clock: ManualClock,
) -> None:
    sev3 = apply_event(None, opened(clock.now(), Severity.WARNING, NO_SEV3_UPDATES))
    assert sev3 is not None
    assert not sev3.promised
    clock.advance(timedelta(minutes=45))
    event = severity_changed(
        clock.now(), Severity.CRITICAL, previous=Severity.WARNING, plan=NO_SEV3_UPDATES
    )

    result = apply_event(sev3, event)

    assert result is not None
    assert result.severity is Severity.CRITICAL
    assert result.basis_at == clock.now()
    assert result.due_at == event.next_update_at == clock.now() + timedelta(minutes=30)


def test_event_older_than_the_basis_is_ignored(clock: ManualClock) -> None:
    stale_at = clock.now()
    clock.advance(timedelta(minutes=5))
    current = item(4, basis_at=clock.now())

    assert apply_event(current, updated(stale_at, Severity.CRITICAL)) == current


def test_stale_event_without_a_promise_does_not_remove_the_item(clock: ManualClock) -> None:
    # A reclaimed SEV3 event from before the incident became SEV1 again.
    stale_at = clock.now()
    clock.advance(timedelta(minutes=5))
    current = item(2, basis_at=clock.now(), severity=Severity.CRITICAL)
    stale = severity_changed(
        stale_at, Severity.WARNING, previous=Severity.CRITICAL, plan=NO_SEV3_UPDATES
    )

    assert apply_event(current, stale) == current


def test_update_without_pending_item_schedules_update_one(clock: ManualClock) -> None:
    result = apply_event(None, updated(clock.now()))

    assert result is not None
    assert result.sequence == 1
    assert result.due_at == T0 + timedelta(hours=1)


def test_resolved_removes_the_item_even_when_older_than_the_basis(clock: ManualClock) -> None:
    resolved_at = clock.now()
    clock.advance(timedelta(minutes=1))
    current = item(2, basis_at=clock.now())
    event = make_incident_resolved(
        make_resolved_incident(resolved_at=resolved_at), occurred_at=resolved_at
    )

    assert apply_event(current, event) is None


def test_postmortem_removes_the_item(clock: ManualClock) -> None:
    # A post-mortem only follows a resolution; should an item linger, it goes.
    clock.advance(timedelta(hours=2))
    current = item(3, basis_at=T0)
    incident = make_resolved_incident(
        resolved_at=T0 + timedelta(hours=1), postmortem_url="https://example.com/pm"
    )
    event = IncidentPostmortemPublished(
        event_id="ev-postmortem", occurred_at=clock.now(), incident=incident
    )

    assert apply_event(current, event) is None
    assert apply_event(None, event) is None


# Firing


def test_fire_on_time_emits_update_and_schedules_the_next(clock: ManualClock) -> None:
    current = item(1, basis_at=T0)
    clock.advance(timedelta(hours=1))

    due, next_item = fire(current, clock.now(), Severity.ERROR, PLAN.cadence)

    assert due.event_id == "inc-1:update:1" == update_event_id("inc-1", 1)
    assert due.incident_id == "inc-1"
    assert due.sequence == 1
    assert due.due_at == T0 + timedelta(hours=1)
    assert due.emitted_at == clock.now()
    assert due.next_update_at == T0 + timedelta(hours=2)
    assert next_item is not None
    assert next_item.sequence == 2
    assert next_item.due_at == due.next_update_at
    assert next_item.basis_at == clock.now()


def test_late_fire_fires_once_and_counts_the_interval_from_the_fire(clock: ManualClock) -> None:
    current = item(5, basis_at=T0)
    clock.advance(timedelta(hours=7, minutes=13))  # six intervals late

    due, next_item = fire(current, clock.now(), Severity.ERROR, PLAN.cadence)

    assert due.sequence == 5
    assert due.due_at == T0 + timedelta(hours=1)
    assert due.next_update_at == clock.now() + timedelta(hours=1)
    assert next_item is not None
    assert next_item.sequence == 6
    assert next_item.due_at > clock.now()  # no catch-up burst: the next is in the future


def test_fire_uses_the_incident_severity_at_fire_time(clock: ManualClock) -> None:
    current = item(1, basis_at=T0, severity=Severity.INFO)
    clock.advance(timedelta(hours=4))

    due, next_item = fire(current, clock.now(), Severity.CRITICAL, PLAN.cadence)

    assert due.next_update_at == clock.now() + timedelta(minutes=30)
    assert next_item is not None
    assert next_item.severity is Severity.CRITICAL


def test_fire_for_a_severity_now_without_cadence_sends_this_one_and_no_next(
    clock: ManualClock,
) -> None:
    current = item(2, basis_at=T0, severity=Severity.CRITICAL)
    clock.advance(timedelta(minutes=30))

    due, next_item = fire(current, clock.now(), Severity.WARNING, NO_SEV3_UPDATES.cadence)

    assert due.event_id == update_event_id("inc-1", 2)  # the promised update still goes out
    assert due.due_at == T0 + timedelta(minutes=30)
    assert due.next_update_at is None
    assert not next_item.promised
    assert next_item.sequence == 3


def test_advance_leaves_an_item_another_instance_already_advanced(clock: ManualClock) -> None:
    current = item(3, basis_at=T0)

    assert advance(current, 2, clock.now(), Severity.ERROR, PLAN.cadence) == current
    assert advance(None, 2, clock.now(), Severity.ERROR, PLAN.cadence) is None


def test_advance_keeps_a_newer_promise_made_while_firing(clock: ManualClock) -> None:
    fired_at = clock.now()
    clock.advance(timedelta(seconds=30))
    moved = item(2, basis_at=clock.now())

    result = advance(moved, 2, fired_at, Severity.ERROR, PLAN.cadence)

    assert result == moved.model_copy(update={"sequence": 3})


def test_advance_to_a_severity_without_cadence_ends_the_updates(clock: ManualClock) -> None:
    current = item(2, basis_at=T0)
    clock.advance(timedelta(hours=1))

    result = advance(current, 2, clock.now(), Severity.WARNING, NO_SEV3_UPDATES.cadence)

    assert result is not None
    assert not result.promised
    assert result.sequence == 3


def test_due_scores_round_up_and_now_rounds_down() -> None:
    due = T0 + timedelta(microseconds=1500)

    assert ceil_ms(due) == floor_ms(T0) + 2
    assert floor_ms(due) == floor_ms(T0) + 1
    assert ceil_ms(T0) == floor_ms(T0)


@given(lateness=st.lists(st.integers(min_value=0, max_value=10_000), min_size=1, max_size=20))
def test_updates_never_skip_a_sequence_and_never_burst(lateness: list[int]) -> None:
    clock = ManualClock(T0)
    current: ScheduleItem | None = item(1, basis_at=T0)
    for sequence, late_seconds in enumerate(lateness, start=1):
        assert current is not None
        clock.advance(current.due_at - clock.now() + timedelta(seconds=late_seconds))
        due, current = fire(current, clock.now(), Severity.ERROR, PLAN.cadence)
        assert due.sequence == sequence
        assert due.next_update_at is not None
        assert due.next_update_at - due.emitted_at == timedelta(hours=1)
        assert current is not None
        assert current.sequence == sequence + 1


# A promise-less event keeps the item dormant, so its sequence and basis survive.


def test_rearmed_updates_never_reuse_an_update_id_already_sent(clock: ManualClock) -> None:
    current = apply_event(None, opened(clock.now(), Severity.CRITICAL, NO_SEV3_UPDATES))
    assert current is not None
    clock.advance(timedelta(minutes=30))
    first, current = fire(current, clock.now(), Severity.CRITICAL, NO_SEV3_UPDATES.cadence)
    clock.advance(timedelta(minutes=1))
    current = apply_event(
        current,
        severity_changed(
            clock.now(), Severity.WARNING, previous=Severity.CRITICAL, plan=NO_SEV3_UPDATES
        ),
    )
    clock.advance(timedelta(minutes=1))
    current = apply_event(
        current,
        severity_changed(
            clock.now(), Severity.CRITICAL, previous=Severity.WARNING, plan=NO_SEV3_UPDATES
        ),
    )
    assert current is not None
    clock.advance(timedelta(minutes=30))

    second, _ = fire(current, clock.now(), Severity.CRITICAL, NO_SEV3_UPDATES.cadence)

    # The dispatcher keys deliveries by event id: a reused id is never delivered.
    assert second.event_id != first.event_id


def test_stale_event_after_a_promise_less_one_arms_nothing(clock: ManualClock) -> None:
    stale = opened(clock.now(), Severity.CRITICAL, NO_SEV3_UPDATES)  # reclaimed late
    clock.advance(timedelta(minutes=5))
    now_sev3 = severity_changed(
        clock.now(), Severity.WARNING, previous=Severity.CRITICAL, plan=NO_SEV3_UPDATES
    )
    current = apply_event(apply_event(None, stale), now_sev3)
    assert current is not None
    assert not current.promised

    # The SEV3 incident was promised no more updates; the older SEV1 promise stays gone.
    assert apply_event(current, stale) == current
