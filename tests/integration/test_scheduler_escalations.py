"""The scheduler's acknowledgement escalation and post-mortem reminder, on real Valkey.

Incident events go through the scheduler's own consumer (``incident_event_consumer``,
as wired in production); the timers fire on a manual clock; what they publish is
read back from ``INCIDENT_EVENTS``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import pytest
from redis.asyncio import Redis

from services.scheduler.ack_overdue import (
    AckTimer,
    ack_overdue_event,
    ack_overdue_firer,
    ack_overdue_schedule,
)
from services.scheduler.cadence import ScheduleItem
from services.scheduler.handlers import incident_event_consumer
from services.scheduler.postmortem_reminder import (
    PostmortemTimer,
    postmortem_reminder_firer,
    postmortem_reminder_schedule,
)
from services.scheduler.resolution_hold import ResolutionTimer, resolution_schedule
from services.scheduler.schedule_store import ScheduleStore, update_schedule
from services.scheduler.timers import TimerFirer
from shared.clock import ManualClock
from shared.consumer import GuardedConsumer, StreamEntry
from shared.contracts import (
    Incident,
    IncidentAckOverdue,
    IncidentEvent,
    IncidentPostmortemDue,
    IncidentPostmortemPublished,
    IncidentStatus,
    Severity,
)
from shared.plan import Plan
from shared.redis_values import DATA_FIELD
from shared.settings import Settings
from shared.streams import INCIDENT_EVENTS, SCHEDULER_GROUP
from tests.support.builders import (
    T0,
    make_incident,
    make_incident_opened,
    make_incident_resolved,
    make_incident_severity_changed,
    make_incident_updated,
    make_resolved_incident,
    store_incident,
)
from tests.support.plans import make_plan, plan_data
from tests.support.streams import incident_events

pytestmark = pytest.mark.integration

LEASE = timedelta(seconds=30)
SEV1_WITHIN = timedelta(minutes=15)
SEV3_WITHIN = timedelta(hours=2)
REMINDER = timedelta(hours=48)
RESOLVED_AT = T0 + timedelta(hours=1)
POSTMORTEM_URL = "https://status.example.com/postmortems/inc-1"


def plan_with_acks(**overrides: Any) -> Plan:
    data = plan_data()
    data["severities"]["SEV1"]["acknowledge_within"] = "15m"
    data["severities"]["SEV3"]["acknowledge_within"] = "2h"
    return make_plan(severities=data["severities"], **overrides)


PLAN = plan_with_acks()


@dataclass
class Scheduler:
    """The scheduler's incident-event handling and its two new timers, on one clock."""

    redis: Redis
    clock: ManualClock
    consumer: GuardedConsumer[IncidentEvent]
    updates: ScheduleStore[ScheduleItem]
    resolutions: ScheduleStore[ResolutionTimer]
    acks: ScheduleStore[AckTimer]
    reminders: ScheduleStore[PostmortemTimer]
    ack_firer: TimerFirer[AckTimer]
    reminder_firer: TimerFirer[PostmortemTimer]
    _handled: int = 0

    async def handle(self, event: IncidentEvent, *, store: bool = True) -> None:
        """Ingest's side (store the incident) then the scheduler's consumer."""
        if store and not isinstance(event, IncidentAckOverdue | IncidentPostmortemDue):
            await store_incident(self.redis, event.incident)
        self._handled += 1
        entry = StreamEntry(INCIDENT_EVENTS, SCHEDULER_GROUP, f"1-{self._handled}", 1)
        await self.consumer.process(event.model_dump_json().encode(), entry)

    async def published(self) -> list[IncidentEvent]:
        """What the timers published on ``INCIDENT_EVENTS``, oldest first."""
        return await incident_events(self.redis)

    def move_to(self, moment: datetime) -> None:
        self.clock.advance(moment - self.clock.now())


@pytest.fixture
def make_scheduler(
    redis: Redis, make_settings: Callable[..., Settings]
) -> Callable[..., Scheduler]:
    def factory(plan: Plan = PLAN) -> Scheduler:
        clock = ManualClock(T0)
        acks, reminders = ack_overdue_schedule(redis), postmortem_reminder_schedule(redis)
        updates, resolutions = update_schedule(redis), resolution_schedule(redis)
        consumer = incident_event_consumer(
            redis,
            updates,
            resolutions,
            make_settings(),
            plan=plan,
            acks=acks,
            reminders=reminders,
        )
        return Scheduler(
            redis,
            clock,
            consumer,
            updates,
            resolutions,
            acks,
            reminders,
            ack_overdue_firer(acks, redis, clock, LEASE, plan),
            postmortem_reminder_firer(reminders, redis, clock, LEASE, plan),
        )

    return factory


def acknowledged(at_minutes: int = 5) -> Incident:
    return make_incident(
        status=IncidentStatus.IDENTIFIED,
        acknowledged_at=T0 + timedelta(minutes=at_minutes),
        acknowledged_by="oncall-ann",
        updated_at=T0 + timedelta(minutes=at_minutes),
        revision=2,
    )


# Acknowledgement overdue


async def test_an_unacknowledged_incident_escalates_once_at_its_deadline(
    make_scheduler: Callable[..., Scheduler],
) -> None:
    scheduler = make_scheduler()
    await scheduler.handle(make_incident_opened())

    timer = await scheduler.acks.get("inc-1")
    assert timer is not None
    assert timer.due_at == T0 + SEV1_WITHIN

    scheduler.clock.advance(SEV1_WITHIN - timedelta(seconds=1))
    assert await scheduler.ack_firer.run_once() == 0
    assert await scheduler.published() == []

    scheduler.clock.advance(timedelta(seconds=1))
    assert await scheduler.ack_firer.run_once() == 1
    assert await scheduler.ack_firer.run_once() == 0  # fired once, then gone

    [event] = await scheduler.published()
    assert isinstance(event, IncidentAckOverdue)
    assert event.event_id == "inc-1:ack-overdue:SEV1"
    assert event.incident == make_incident()
    assert event.occurred_at == T0 + SEV1_WITHIN
    assert event.due_at == T0 + SEV1_WITHIN
    assert await scheduler.acks.get("inc-1") is None


async def test_an_acknowledgement_cancels_the_escalation(
    make_scheduler: Callable[..., Scheduler],
) -> None:
    scheduler = make_scheduler()
    await scheduler.handle(make_incident_opened())
    await scheduler.handle(make_incident_updated(acknowledged(), event_id="ev-ack"))

    assert await scheduler.acks.get("inc-1") is None
    scheduler.clock.advance(timedelta(hours=1))
    assert await scheduler.ack_firer.run_once() == 0
    assert await scheduler.published() == []


async def test_a_resolution_cancels_the_escalation(
    make_scheduler: Callable[..., Scheduler],
) -> None:
    scheduler = make_scheduler()
    await scheduler.handle(make_incident_opened())
    await scheduler.handle(
        make_incident_resolved(make_resolved_incident(resolved_at=T0 + timedelta(minutes=10)))
    )

    assert await scheduler.acks.get("inc-1") is None
    scheduler.clock.advance(timedelta(hours=1))
    assert await scheduler.ack_firer.run_once() == 0
    assert not any(isinstance(e, IncidentAckOverdue) for e in await scheduler.published())


async def test_an_acknowledgement_not_handled_yet_still_stops_the_escalation(
    make_scheduler: Callable[..., Scheduler],
) -> None:
    scheduler = make_scheduler()
    await scheduler.handle(make_incident_opened())
    await store_incident(scheduler.redis, acknowledged())  # its event is still on its way

    scheduler.clock.advance(SEV1_WITHIN)
    await scheduler.ack_firer.run_once()

    assert await scheduler.published() == []
    assert await scheduler.acks.get("inc-1") is None


async def test_a_worse_severity_moves_the_deadline_to_its_own_clock(
    make_scheduler: Callable[..., Scheduler],
) -> None:
    scheduler = make_scheduler()
    await scheduler.handle(make_incident_opened(make_incident(severity=Severity.WARNING)))
    sev3 = await scheduler.acks.get("inc-1")
    assert sev3 is not None
    assert sev3.due_at == T0 + SEV3_WITHIN

    scheduler.clock.advance(timedelta(minutes=20))
    worse = make_incident(severity=Severity.CRITICAL, revision=2)
    await scheduler.handle(
        make_incident_severity_changed(
            worse, previous_severity=Severity.WARNING, occurred_at=scheduler.clock.now()
        )
    )
    sev1 = await scheduler.acks.get("inc-1")
    assert sev1 is not None
    assert sev1.due_at == T0 + SEV1_WITHIN  # already past: it fires at once

    assert await scheduler.ack_firer.run_once() == 1
    [event] = await scheduler.published()
    assert isinstance(event, IncidentAckOverdue)
    assert event.event_id == "inc-1:ack-overdue:SEV1"
    assert event.occurred_at == T0 + timedelta(minutes=20)


async def test_a_milder_stored_severity_moves_a_due_timer_instead_of_firing(
    make_scheduler: Callable[..., Scheduler],
) -> None:
    scheduler = make_scheduler()
    await scheduler.handle(make_incident_opened())
    # SEV1 became SEV3 (2 h to acknowledge); the scheduler has not handled that event yet.
    await store_incident(scheduler.redis, make_incident(severity=Severity.WARNING, revision=2))

    scheduler.clock.advance(SEV1_WITHIN)
    await scheduler.ack_firer.run_once()

    assert await scheduler.published() == []
    moved = await scheduler.acks.get("inc-1")
    assert moved is not None
    assert moved.due_at == T0 + SEV3_WITHIN
    scheduler.clock.advance(SEV3_WITHIN - SEV1_WITHIN)
    assert await scheduler.ack_firer.run_once() == 1
    [event] = await scheduler.published()
    assert event.event_id == "inc-1:ack-overdue:SEV3"


async def test_a_fire_repeated_after_a_crash_publishes_the_same_event_id(
    make_scheduler: Callable[..., Scheduler],
) -> None:
    scheduler = make_scheduler()
    await scheduler.handle(make_incident_opened())
    scheduler.clock.advance(SEV1_WITHIN)

    # Instance A claims the timer, publishes, and dies before dropping it.
    [claim] = await scheduler.acks.claim(scheduler.clock.now(), LEASE, 10)
    assert claim.item is not None
    crashed = ack_overdue_event(claim.item, make_incident(), scheduler.clock.now())
    await scheduler.redis.xadd(INCIDENT_EVENTS, {DATA_FIELD: crashed.model_dump_json()})
    assert await scheduler.ack_firer.run_once() == 0  # A's lease still holds

    scheduler.clock.advance(LEASE)  # A's lease runs out: instance B fires it again
    assert await scheduler.ack_firer.run_once() == 1

    first, second = await scheduler.published()
    assert first.event_id == second.event_id == "inc-1:ack-overdue:SEV1"
    assert await scheduler.acks.get("inc-1") is None


async def test_the_scheduler_ignores_its_own_escalation_on_the_stream(
    make_scheduler: Callable[..., Scheduler],
) -> None:
    scheduler = make_scheduler()
    promised = T0 + timedelta(minutes=30)
    await scheduler.handle(make_incident_opened(next_update_at=promised))
    scheduler.clock.advance(SEV1_WITHIN)
    await scheduler.ack_firer.run_once()
    [escalation] = await scheduler.published()

    await scheduler.handle(escalation)  # the scheduler's group reads it back

    update = await scheduler.updates.get("inc-1")
    assert update is not None
    assert update.due_at == promised  # the cadence promise stands
    assert update.basis_at == T0
    assert await scheduler.acks.get("inc-1") is None  # not armed again
    assert await scheduler.reminders.get("inc-1") is None


async def test_a_plan_without_acknowledge_within_arms_nothing(
    make_scheduler: Callable[..., Scheduler],
) -> None:
    scheduler = make_scheduler(make_plan())
    await scheduler.handle(make_incident_opened())

    assert await scheduler.acks.get("inc-1") is None


# Post-mortem reminder


async def test_a_resolution_without_a_post_mortem_is_reminded_once(
    make_scheduler: Callable[..., Scheduler],
) -> None:
    scheduler = make_scheduler()
    resolved = make_resolved_incident(resolved_at=RESOLVED_AT, acknowledged_at=T0, revision=3)
    await scheduler.handle(make_incident_resolved(resolved))

    timer = await scheduler.reminders.get("inc-1")
    assert timer is not None
    assert timer.due_at == RESOLVED_AT + REMINDER

    scheduler.move_to(RESOLVED_AT + REMINDER - timedelta(minutes=1))
    assert await scheduler.reminder_firer.run_once() == 0
    scheduler.clock.advance(timedelta(minutes=1))
    assert await scheduler.reminder_firer.run_once() == 1
    assert await scheduler.reminder_firer.run_once() == 0

    [event] = await scheduler.published()
    assert isinstance(event, IncidentPostmortemDue)
    assert event.event_id == f"inc-1:postmortem-due:{RESOLVED_AT.isoformat()}"
    assert event.incident == resolved
    assert event.due_at == RESOLVED_AT + REMINDER


async def test_publishing_the_post_mortem_cancels_the_reminder(
    make_scheduler: Callable[..., Scheduler],
) -> None:
    scheduler = make_scheduler()
    resolved = make_resolved_incident(resolved_at=RESOLVED_AT, revision=3)
    await scheduler.handle(make_incident_resolved(resolved))
    reviewed = resolved.model_copy(update={"postmortem_url": POSTMORTEM_URL, "revision": 4})
    await scheduler.handle(
        IncidentPostmortemPublished(
            event_id="inc-1:4:incident.postmortem_published",
            occurred_at=RESOLVED_AT + timedelta(hours=20),
            incident=reviewed,
        )
    )

    assert await scheduler.reminders.get("inc-1") is None
    scheduler.move_to(RESOLVED_AT + REMINDER + timedelta(hours=1))
    assert await scheduler.reminder_firer.run_once() == 0
    assert await scheduler.published() == []


async def test_a_post_mortem_posted_before_the_event_is_handled_stops_the_reminder(
    make_scheduler: Callable[..., Scheduler],
) -> None:
    scheduler = make_scheduler()
    resolved = make_resolved_incident(resolved_at=RESOLVED_AT, revision=3)
    await scheduler.handle(make_incident_resolved(resolved))
    reviewed = resolved.model_copy(update={"postmortem_url": POSTMORTEM_URL, "revision": 4})
    await store_incident(scheduler.redis, reviewed)

    scheduler.move_to(RESOLVED_AT + REMINDER)
    await scheduler.reminder_firer.run_once()

    assert await scheduler.published() == []
    assert await scheduler.reminders.get("inc-1") is None


async def test_reopening_cancels_the_reminder(make_scheduler: Callable[..., Scheduler]) -> None:
    scheduler = make_scheduler()
    await scheduler.handle(
        make_incident_resolved(make_resolved_incident(resolved_at=RESOLVED_AT, revision=3))
    )
    reopened = make_incident(status=IncidentStatus.INVESTIGATING, revision=4)
    await scheduler.handle(make_incident_updated(reopened, event_id="ev-reopened"))

    assert await scheduler.reminders.get("inc-1") is None
    scheduler.move_to(RESOLVED_AT + REMINDER)
    assert await scheduler.reminder_firer.run_once() == 0


async def test_a_reminder_fired_twice_publishes_the_same_event_id(
    make_scheduler: Callable[..., Scheduler],
) -> None:
    scheduler = make_scheduler()
    resolved_event = make_incident_resolved(
        make_resolved_incident(resolved_at=RESOLVED_AT, revision=3)
    )
    await scheduler.handle(resolved_event)
    scheduler.move_to(RESOLVED_AT + REMINDER)
    assert await scheduler.reminder_firer.run_once() == 1
    # A redelivered "resolved" arms it again; it fires again, as the same reminder.
    await scheduler.handle(resolved_event)
    assert await scheduler.reminder_firer.run_once() == 1

    first, second = await scheduler.published()
    assert first.event_id == second.event_id


async def test_no_reminder_when_the_plan_turns_it_off(
    make_scheduler: Callable[..., Scheduler],
) -> None:
    scheduler = make_scheduler(plan_with_acks(postmortem_reminder_after=None))
    await scheduler.handle(
        make_incident_resolved(make_resolved_incident(resolved_at=RESOLVED_AT, revision=3))
    )

    assert await scheduler.reminders.get("inc-1") is None


def test_the_consumer_refuses_timers_without_a_plan(
    redis: Redis, make_settings: Callable[..., Settings]
) -> None:
    with pytest.raises(ValueError, match="need the plan"):
        incident_event_consumer(
            redis,
            update_schedule(redis),
            resolution_schedule(redis),
            make_settings(),
            acks=ack_overdue_schedule(redis),
        )
