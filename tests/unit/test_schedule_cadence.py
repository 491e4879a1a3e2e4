"""The cadence rules: when each update of an open incident is due."""

from __future__ import annotations

from datetime import datetime, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from services.scheduler.cadence import (
    ScheduleItem,
    advance,
    apply_event,
    ceil_ms,
    fire,
    floor_ms,
    update_event_id,
)
from shared.clock import ManualClock
from shared.contracts import IncidentOpened, IncidentUpdated, Severity
from tests.support.builders import (
    T0,
    make_incident,
    make_incident_opened,
    make_incident_resolved,
    make_incident_severity_changed,
    make_incident_updated,
    make_resolved_incident,
)

INTERVALS = {
    Severity.CRITICAL: timedelta(minutes=30),
    Severity.ERROR: timedelta(hours=1),
    Severity.WARNING: timedelta(hours=2),
    Severity.INFO: timedelta(hours=4),
}


def interval_for(severity: Severity) -> timedelta:
    return INTERVALS[severity]


def opened(at: datetime, severity: Severity = Severity.ERROR) -> IncidentOpened:
    return make_incident_opened(make_incident(severity=severity, updated_at=at), occurred_at=at)


def updated(at: datetime, severity: Severity = Severity.ERROR) -> IncidentUpdated:
    return make_incident_updated(make_incident(severity=severity, updated_at=at), occurred_at=at)


def item(sequence: int, basis_at: datetime, severity: Severity = Severity.ERROR) -> ScheduleItem:
    return ScheduleItem(
        incident_id="inc-1",
        sequence=sequence,
        severity=severity,
        basis_at=basis_at,
        due_at=basis_at + interval_for(severity),
    )


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock(T0)


def test_opened_schedules_update_one_an_interval_after_opening(clock: ManualClock) -> None:
    result = apply_event(None, opened(clock.now(), Severity.CRITICAL), interval_for)

    assert result == ScheduleItem(
        incident_id="inc-1",
        sequence=1,
        severity=Severity.CRITICAL,
        basis_at=T0,
        due_at=T0 + timedelta(minutes=30),
    )


def test_repeated_opened_changes_nothing(clock: ManualClock) -> None:
    first = apply_event(None, opened(clock.now()), interval_for)

    assert apply_event(first, opened(clock.now()), interval_for) == first


def test_update_moves_due_time_to_the_promised_time_and_keeps_sequence(
    clock: ManualClock,
) -> None:
    current = item(3, basis_at=T0)
    clock.advance(timedelta(minutes=20))

    result = apply_event(current, updated(clock.now()), interval_for)

    assert result is not None
    assert result.sequence == 3
    assert result.basis_at == T0 + timedelta(minutes=20)
    assert result.due_at == T0 + timedelta(minutes=20) + timedelta(hours=1)


def test_severity_change_uses_the_interval_of_the_new_severity(clock: ManualClock) -> None:
    current = item(2, basis_at=T0, severity=Severity.WARNING)
    clock.advance(timedelta(minutes=10))
    event = make_incident_severity_changed(
        make_incident(severity=Severity.CRITICAL, updated_at=clock.now()),
        previous_severity=Severity.WARNING,
        occurred_at=clock.now(),
    )

    result = apply_event(current, event, interval_for)

    assert result is not None
    assert result.severity is Severity.CRITICAL
    assert result.sequence == 2
    assert result.due_at == T0 + timedelta(minutes=10) + timedelta(minutes=30)


def test_event_older_than_the_basis_is_ignored(clock: ManualClock) -> None:
    stale_at = clock.now()
    clock.advance(timedelta(minutes=5))
    current = item(4, basis_at=clock.now())

    assert apply_event(current, updated(stale_at, Severity.CRITICAL), interval_for) == current


def test_update_without_pending_item_schedules_update_one(clock: ManualClock) -> None:
    result = apply_event(None, updated(clock.now()), interval_for)

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

    assert apply_event(current, event, interval_for) is None


def test_fire_on_time_emits_update_and_schedules_the_next(clock: ManualClock) -> None:
    current = item(1, basis_at=T0)
    clock.advance(timedelta(hours=1))

    due, next_item = fire(current, clock.now(), Severity.ERROR, interval_for)

    assert due.event_id == "inc-1:update:1" == update_event_id("inc-1", 1)
    assert due.incident_id == "inc-1"
    assert due.sequence == 1
    assert due.due_at == T0 + timedelta(hours=1)
    assert due.emitted_at == clock.now()
    assert due.next_update_at == T0 + timedelta(hours=2)
    assert next_item.sequence == 2
    assert next_item.due_at == due.next_update_at
    assert next_item.basis_at == clock.now()


def test_late_fire_fires_once_and_counts_the_interval_from_the_fire(clock: ManualClock) -> None:
    current = item(5, basis_at=T0)
    clock.advance(timedelta(hours=7, minutes=13))  # six intervals late

    due, next_item = fire(current, clock.now(), Severity.ERROR, interval_for)

    assert due.sequence == 5
    assert due.due_at == T0 + timedelta(hours=1)
    assert due.next_update_at == clock.now() + timedelta(hours=1)
    assert next_item.sequence == 6
    assert next_item.due_at > clock.now()  # no catch-up burst: the next is in the future


def test_fire_uses_the_incident_severity_at_fire_time(clock: ManualClock) -> None:
    current = item(1, basis_at=T0, severity=Severity.INFO)
    clock.advance(timedelta(hours=4))

    due, next_item = fire(current, clock.now(), Severity.CRITICAL, interval_for)

    assert due.next_update_at == clock.now() + timedelta(minutes=30)
    assert next_item.severity is Severity.CRITICAL


def test_advance_leaves_an_item_another_instance_already_advanced(clock: ManualClock) -> None:
    current = item(3, basis_at=T0)

    assert advance(current, 2, clock.now(), Severity.ERROR, interval_for) == current
    assert advance(None, 2, clock.now(), Severity.ERROR, interval_for) is None


def test_advance_keeps_a_newer_promise_made_while_firing(clock: ManualClock) -> None:
    fired_at = clock.now()
    clock.advance(timedelta(seconds=30))
    moved = item(2, basis_at=clock.now())

    result = advance(moved, 2, fired_at, Severity.ERROR, interval_for)

    assert result == moved.model_copy(update={"sequence": 3})


def test_due_scores_round_up_and_now_rounds_down() -> None:
    due = T0 + timedelta(microseconds=1500)

    assert ceil_ms(due) == floor_ms(T0) + 2
    assert floor_ms(due) == floor_ms(T0) + 1
    assert ceil_ms(T0) == floor_ms(T0)


@given(lateness=st.lists(st.integers(min_value=0, max_value=10_000), min_size=1, max_size=20))
def test_updates_never_skip_a_sequence_and_never_burst(lateness: list[int]) -> None:
    clock = ManualClock(T0)
    current = item(1, basis_at=T0)
    for sequence, late_seconds in enumerate(lateness, start=1):
        clock.advance(current.due_at - clock.now() + timedelta(seconds=late_seconds))
        due, current = fire(current, clock.now(), Severity.ERROR, interval_for)
        assert due.sequence == sequence
        assert due.next_update_at - due.emitted_at == timedelta(hours=1)
        assert current.sequence == sequence + 1
