"""Hypothesis state machines over the scheduler's due items, against a real Valkey.

**One-shot timers** (``ScheduleStore`` + ``TimerFirer``, a ManualClock, two
instances on their own connections): any sequence of schedule, reschedule,
cancel, fire (one instance, or both at once), an instance dying while it holds
claims, and timers moved or cancelled while their own fire is under way keeps:

* every arming fires at most once, and only while it is the key's latest arming
  (a rescheduled or cancelled arming never fires afterwards);
* nothing fires before its due time;
* an arming that is due and not under a live lease fires on the next run, and a
  dead instance's claim fires once its lease has run out: at the end, with the
  clock moved past everything, each arming that was never replaced or cancelled
  has fired exactly once and the store is empty.

**The update cadence** (``schedule_incident_event`` + ``Ticker``): incidents
opened, updated by monitoring or by a human, changing severity (including to a
severity without scheduled updates), resolved, old events redelivered, ticks at
arbitrary times and right at due times, and dead claims keep:

* an incident gets an ``UpdateDue`` exactly when its last promise comes due
  (never before, once, with consecutive sequences and deterministic ids) and
  the ``next_update_at`` it announces is the time of the next one;
* a resolved incident never gets an ``UpdateDue`` again.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Awaitable, Callable
from datetime import datetime, timedelta
from typing import Any, ClassVar, TypeVar

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)
from redis.asyncio import Redis

from services.ingest.incident_change import promised
from services.scheduler.cadence import NEVER, DueItem
from services.scheduler.schedule_store import ScheduleStore, update_schedule
from services.scheduler.scheduling import schedule_incident_event
from services.scheduler.ticker import Ticker
from services.scheduler.timers import TimerFirer
from shared.clock import ManualClock
from shared.contracts import (
    Incident,
    IncidentChange,
    IncidentOpened,
    IncidentResolved,
    IncidentSeverityChanged,
    IncidentStatus,
    IncidentUpdated,
    Severity,
    UpdateAuthor,
    UpdateDue,
)
from shared.settings import Settings
from tests.support.builders import T0, make_incident, store_incident
from tests.support.plans import CADENCE, make_plan

pytestmark = pytest.mark.integration

T = TypeVar("T")
MS = timedelta(milliseconds=1)

MACHINE_SETTINGS = settings(
    max_examples=60,
    stateful_step_count=40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)


class _OwnLoop:
    """A private event loop: Hypothesis drives state machines synchronously."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()

    def run(self, awaitable: Awaitable[T]) -> T:
        return self.loop.run_until_complete(awaitable)

    def close(self) -> None:
        self.loop.run_until_complete(self.loop.shutdown_asyncgens())
        self.loop.close()


def ceil_to_ms(moment: datetime) -> datetime:
    """The first whole millisecond at or after ``moment`` (the clock moves in whole ms)."""
    rest = moment.microsecond % 1000
    return moment if rest == 0 else moment + timedelta(microseconds=1000 - rest)


# One-shot timers

TIMER_KEYS = ("t1", "t2", "t3", "t4")
TIMER_DUE = "test:scheduler-state-machine:due"
TIMER_ITEMS = "test:scheduler-state-machine:items"
LEASE = timedelta(seconds=5)

due_offsets = st.builds(
    lambda ms, us: timedelta(milliseconds=ms, microseconds=us),
    st.integers(min_value=-2_000, max_value=12_000),
    st.sampled_from([0, 1, 500, 999]) | st.integers(min_value=0, max_value=999),
)
"""When a timer is due, from now: sometimes overdue, often between whole milliseconds."""


class Armed(DueItem):
    """A timer; ``arming`` tells one scheduling of a key from the next."""

    arming: int


class TimerMachine(RuleBasedStateMachine):
    redis_url: ClassVar[str]

    def __init__(self) -> None:
        super().__init__()
        self.own = _OwnLoop()
        self.clock = ManualClock(T0)
        self.clients = [Redis.from_url(self.redis_url) for _ in range(2)]
        self.own.run(self.clients[0].delete(TIMER_DUE, TIMER_ITEMS))
        self.stores = [ScheduleStore(c, Armed, TIMER_DUE, TIMER_ITEMS) for c in self.clients]
        self.firers = [
            TimerFirer("test", store, self._fire, self.clock, LEASE) for store in self.stores
        ]
        self.armings = itertools.count(1)
        self.current: dict[str, Armed] = {}  # the latest arming of each armed key
        self.lease_ends: dict[str, datetime] = {}  # keys a dead instance claimed
        self.fired: set[int] = set()
        self.retired: set[int] = set()  # replaced or cancelled before they fired
        self.run_fires: list[tuple[Armed, datetime]] = []
        self.during_fire: Callable[[Armed], Awaitable[Armed | None]] | None = None
        self.changed_during_fire: dict[str, Armed | None] = {}

    async def _fire(self, item: Armed, now: datetime) -> str:
        self.run_fires.append((item, now))
        if self.during_fire is not None and item.incident_id not in self.changed_during_fire:
            self.changed_during_fire[item.incident_id] = await self.during_fire(item)
        return f"{item.incident_id}#{item.arming}"

    # Model helpers

    def _arm(self, key: str, offset: timedelta) -> Armed:
        return Armed(incident_id=key, due_at=self.clock.now() + offset, arming=next(self.armings))

    def _retire(self, key: str) -> None:
        old = self.current.pop(key, None)
        if old is not None:
            self.retired.add(old.arming)
        self.lease_ends.pop(key, None)

    def _claimable(self, item: Armed) -> bool:
        now = self.clock.now()
        lease_end = self.lease_ends.get(item.incident_id)
        return item.due_at <= now and (lease_end is None or lease_end <= now)

    async def _set(self, key: str, item: Armed | None) -> None:
        await self.stores[0].change(key, lambda _current: item)

    def _run(self, *instances: int) -> None:
        """Run the firers of ``instances`` at once; check what fired against the model."""
        before = dict(self.current)
        self.run_fires = []
        self.changed_during_fire = {}

        async def together() -> list[int]:
            return list(await asyncio.gather(*(self.firers[i].run_once() for i in instances)))

        counts = self.own.run(together())

        assert sum(counts) == len(self.run_fires)
        now = self.clock.now()
        for item, at in self.run_fires:
            assert at == now
            assert at >= item.due_at, f"{item} fired early, at {at}"
            assert item.arming not in self.retired, f"replaced or cancelled {item} fired"
            assert item.arming not in self.fired, f"{item} fired twice"
            assert before.get(item.incident_id) == item
            assert self._claimable(item), f"{item} fired under another instance's live lease"
            self.fired.add(item.arming)
            del self.current[item.incident_id]
            self.lease_ends.pop(item.incident_id, None)
        for item in before.values():
            if self._claimable(item):
                assert item.arming in self.fired, f"{item} was due at {now} and did not fire"
        for key, moved in self.changed_during_fire.items():  # after its fire: a new arming
            if moved is not None:
                self.current[key] = moved

    # Rules

    @rule(key=st.sampled_from(TIMER_KEYS), offset=due_offsets)
    def schedule(self, key: str, offset: timedelta) -> None:
        """Arm ``key`` (when it is armed already, this arming replaces the old one)."""
        item = self._arm(key, offset)
        self.own.run(self._set(key, item))
        self._retire(key)
        self.current[key] = item

    @precondition(lambda self: self.current)
    @rule(data=st.data(), offset=due_offsets)
    def reschedule(self, data: st.DataObject, offset: timedelta) -> None:
        key = data.draw(st.sampled_from(sorted(self.current)))
        self.schedule(key, offset)

    @precondition(lambda self: self.current)
    @rule(data=st.data())
    def cancel(self, data: st.DataObject) -> None:
        key = data.draw(st.sampled_from(sorted(self.current)))
        self.own.run(self._set(key, None))
        self._retire(key)

    @rule(by=st.integers(min_value=0, max_value=8_000))
    def advance(self, by: int) -> None:
        self.clock.advance(by * MS)

    @precondition(lambda self: self.current)
    @rule(data=st.data(), delta=st.sampled_from([-1, 0, 1]), instance=st.sampled_from([0, 1]))
    def fire_at_a_due_time(self, data: st.DataObject, delta: int, instance: int) -> None:
        """The clock lands just before, on, or just after a due time (or a lease's end)."""
        key = data.draw(st.sampled_from(sorted(self.current)))
        due = self.current[key].due_at
        target = ceil_to_ms(max(due, self.lease_ends.get(key, due))) + delta * MS
        if target > self.clock.now():
            self.clock.advance(target - self.clock.now())
        self._run(instance)

    @rule(instance=st.sampled_from([0, 1]))
    def fire(self, instance: int) -> None:
        self._run(instance)

    @rule()
    def fire_on_both_instances_at_once(self) -> None:
        self._run(0, 1)

    @rule(limit=st.integers(min_value=1, max_value=3))
    def an_instance_dies_holding_claims(self, limit: int) -> None:
        now = self.clock.now()
        claims = self.own.run(self.stores[1].claim(now, LEASE, limit))
        for claim in claims:
            assert claim.item is not None
            assert claim.item == self.current[claim.incident_id]
            assert claim.item.due_at <= now, f"{claim.item} claimed before it was due"
            lease_end = self.lease_ends.get(claim.incident_id)
            assert lease_end is None or lease_end <= now, "claimed under a live lease"
            self.lease_ends[claim.incident_id] = now + LEASE

    @rule(offset=st.none() | due_offsets)
    def fire_while_timers_move(self, offset: timedelta | None) -> None:
        """Each timer that fires is rescheduled (or cancelled, ``None``) during its own fire.

        The arming under way has gone out: it counts as fired. The new arming
        must survive the firer's clean-up and fire in its turn.
        """

        async def move(item: Armed) -> Armed | None:
            moved = None if offset is None else self._arm(item.incident_id, offset)
            await self._set(item.incident_id, moved)
            return moved

        self.during_fire = move
        try:
            self._run(0)
        finally:
            self.during_fire = None

    @invariant()
    def nothing_retired_is_stored(self) -> None:
        stored = self.own.run(self.clients[0].hgetall(TIMER_ITEMS))
        armings = {Armed.model_validate_json(raw).arming for raw in stored.values()}
        assert armings == {item.arming for item in self.current.values()}

    def teardown(self) -> None:
        try:
            self._drain()
        finally:
            for client in self.clients:
                self.own.run(client.aclose())
            self.own.close()

    def _drain(self) -> None:
        """Past every due time and lease: every live arming fires, exactly once."""
        latest = max(
            [item.due_at for item in self.current.values()] + list(self.lease_ends.values()),
            default=self.clock.now(),
        )
        if latest >= self.clock.now():
            self.clock.advance(ceil_to_ms(latest) - self.clock.now() + MS)
        self._run(0)
        assert self.current == {}
        assert self.own.run(self.clients[0].zcard(TIMER_DUE)) == 0
        assert self.own.run(self.clients[0].hlen(TIMER_ITEMS)) == 0


def test_scheduler_timers_fire_each_live_arming_exactly_once(redis_url: str) -> None:
    class Machine(TimerMachine):
        pass

    Machine.redis_url = redis_url
    run_state_machine_as_test(Machine, settings=MACHINE_SETTINGS)


# The update cadence

PLAN = make_plan(cadence={**CADENCE, Severity.INFO: None})  # SEV4: open and resolve only
INCIDENT_IDS = ("inc-a", "inc-b", "inc-c")

event_gaps = st.integers(min_value=1, max_value=20 * 60 * 1000)
"""Events of one incident come at strictly increasing times (ms since the last step)."""

tick_gaps = st.one_of(
    st.integers(min_value=0, max_value=2_000), st.integers(min_value=0, max_value=3 * 3600 * 1000)
)


class Recorder:
    def __init__(self) -> None:
        self.published: list[UpdateDue] = []

    async def publish(self, due: UpdateDue) -> None:
        self.published.append(due)


class CadenceMachine(RuleBasedStateMachine):
    redis_url: ClassVar[str]
    settings: ClassVar[Settings]

    def __init__(self) -> None:
        super().__init__()
        self.own = _OwnLoop()
        self.clock = ManualClock(T0)
        self.redis = Redis.from_url(self.redis_url)
        self.own.run(self.redis.flushdb())
        self.store = update_schedule(self.redis)
        self.recorder = Recorder()
        self.ticker = Ticker(
            self.store, self.recorder, self.redis, self.settings, self.clock, plan=PLAN
        )
        self.lease = timedelta(milliseconds=self.settings.scheduler_lease_ms)
        self.incidents: dict[str, Incident] = {}
        self.history: dict[str, list[IncidentChange]] = {}
        self.promise: dict[str, datetime | None] = {}  # open incidents: next due (None: dormant)
        self.sequence: dict[str, int] = {}  # open incidents: the sequence that fires next
        self.resolved: set[str] = set()
        self.lease_ends: dict[str, datetime] = {}

    def _open_ids(self) -> list[str]:
        return sorted(self.promise)

    def _publish(self, event: IncidentChange) -> None:
        """What ingest does (store the incident, stamp the promise) and the scheduler's handling."""
        stamped = promised(event, PLAN)
        self.own.run(store_incident(self.redis, stamped.incident))
        self.own.run(schedule_incident_event(self.store, stamped))
        self.incidents[stamped.incident_id] = stamped.incident
        self.history.setdefault(stamped.incident_id, []).append(stamped)
        self.lease_ends.pop(stamped.incident_id, None)  # the item moved: its lease is gone
        if stamped.incident.is_open:
            self.promise[stamped.incident_id] = stamped.next_update_at
        else:
            self.promise.pop(stamped.incident_id)
            self.sequence.pop(stamped.incident_id)
            self.resolved.add(stamped.incident_id)

    def _changed(self, incident_id: str, **changes: Any) -> Incident:
        incident = self.incidents[incident_id]
        return incident.model_copy(
            update={"revision": incident.revision + 1, "updated_at": self.clock.now(), **changes}
        )

    def _event_id(self, incident: Incident, kind: str) -> str:
        return f"{incident.id}:{incident.revision}:{kind}"

    @precondition(lambda self: len(self.incidents) < len(INCIDENT_IDS))
    @rule(severity=st.sampled_from(list(Severity)), gap=event_gaps)
    def open(self, severity: Severity, gap: int) -> None:
        incident_id = INCIDENT_IDS[len(self.incidents)]
        self.clock.advance(gap * MS)
        incident = make_incident(
            id=incident_id,
            key=f"group-{incident_id}",
            severity=severity,
            opened_at=self.clock.now(),
        )
        self.sequence[incident_id] = 1
        self._publish(
            IncidentOpened(
                event_id=self._event_id(incident, "opened"),
                occurred_at=self.clock.now(),
                incident=incident,
            )
        )

    @precondition(lambda self: self.promise)
    @rule(data=st.data(), author=st.sampled_from(list(UpdateAuthor)), gap=event_gaps)
    def update(self, data: st.DataObject, author: UpdateAuthor, gap: int) -> None:
        """A monitoring update or an operator's own words: either re-arms from its time."""
        incident_id = data.draw(st.sampled_from(self._open_ids()))
        self.clock.advance(gap * MS)
        incident = self._changed(incident_id, status=IncidentStatus.IDENTIFIED)
        self._publish(
            IncidentUpdated(
                event_id=self._event_id(incident, "updated"),
                occurred_at=self.clock.now(),
                incident=incident,
                author=author,
                message="We found the cause." if author is UpdateAuthor.OPERATOR else None,
            )
        )

    @precondition(lambda self: self.promise)
    @rule(data=st.data(), severity=st.sampled_from(list(Severity)), gap=event_gaps)
    def change_severity(self, data: st.DataObject, severity: Severity, gap: int) -> None:
        incident_id = data.draw(st.sampled_from(self._open_ids()))
        previous = self.incidents[incident_id].severity
        if severity is previous:
            return
        self.clock.advance(gap * MS)
        incident = self._changed(incident_id, severity=severity)
        self._publish(
            IncidentSeverityChanged(
                event_id=self._event_id(incident, "severity_changed"),
                occurred_at=self.clock.now(),
                incident=incident,
                previous_severity=previous,
            )
        )

    @precondition(lambda self: self.promise)
    @rule(data=st.data(), gap=event_gaps)
    def resolve(self, data: st.DataObject, gap: int) -> None:
        incident_id = data.draw(st.sampled_from(self._open_ids()))
        self.clock.advance(gap * MS)
        incident = self._changed(
            incident_id, status=IncidentStatus.RESOLVED, resolved_at=self.clock.now()
        )
        self._publish(
            IncidentResolved(
                event_id=self._event_id(incident, "resolved"),
                occurred_at=self.clock.now(),
                incident=incident,
            )
        )

    @precondition(lambda self: any(len(events) > 1 for events in self.history.values()))
    @rule(data=st.data())
    def redeliver_an_older_event(self, data: st.DataObject) -> None:
        """A reclaimed entry, handled again after newer ones: it must change nothing that fires."""
        incident_id = data.draw(
            st.sampled_from(sorted(i for i, events in self.history.items() if len(events) > 1))
        )
        old = data.draw(st.sampled_from(self.history[incident_id][:-1]))
        self.own.run(schedule_incident_event(self.store, old))

    @precondition(lambda self: self.promise)
    @rule(limit=st.integers(min_value=1, max_value=2))
    def an_instance_dies_holding_claims(self, limit: int) -> None:
        now = self.clock.now()
        for claim in self.own.run(self.store.claim(now, self.lease, limit)):
            assert claim.item is not None
            assert claim.item.due_at <= now, f"{claim.item} claimed before it was due"
            if claim.incident_id in self.promise:
                self.lease_ends[claim.incident_id] = now + self.lease

    @rule(gap=tick_gaps)
    def tick(self, gap: int) -> None:
        self.clock.advance(gap * MS)
        self._tick()

    @precondition(lambda self: any(p is not None for p in self.promise.values()))
    @rule(data=st.data(), delta=st.sampled_from([-1, 0, 1]))
    def tick_at_a_due_time(self, data: st.DataObject, delta: int) -> None:
        incident_id = data.draw(
            st.sampled_from(sorted(i for i, p in self.promise.items() if p is not None))
        )
        due = self.promise[incident_id]
        assert due is not None
        target = ceil_to_ms(due) + delta * MS
        if target > self.clock.now():
            self.clock.advance(target - self.clock.now())
        self._tick()

    def _expected_fires(self) -> dict[str, UpdateDue]:
        now = self.clock.now()
        expected = {}
        for incident_id, due in self.promise.items():
            lease_end = self.lease_ends.get(incident_id)
            if due is None or due > now or (lease_end is not None and lease_end > now):
                continue
            sequence = self.sequence[incident_id]
            expected[incident_id] = UpdateDue(
                event_id=f"{incident_id}:update:{sequence}",
                incident_id=incident_id,
                sequence=sequence,
                due_at=due,
                emitted_at=now,
                next_update_at=PLAN.next_update_at(self.incidents[incident_id].severity, now),
            )
        return expected

    def _tick(self) -> None:
        expected = self._expected_fires()
        seen = len(self.recorder.published)
        fired = self.own.run(self.ticker.run_once())
        published = self.recorder.published[seen:]

        assert not {u.incident_id for u in published} & self.resolved, "update after resolution"
        assert fired == len(published)
        assert {u.incident_id: u for u in published} == expected
        assert len(published) == len(expected)  # one each, never a burst
        for incident_id, due in expected.items():
            self.sequence[incident_id] += 1
            self.promise[incident_id] = due.next_update_at
            self.lease_ends.pop(incident_id, None)

    @invariant()
    def stored_items_match_the_promises(self) -> None:
        for incident_id, due in self.promise.items():
            item = self.own.run(self.store.get(incident_id))
            assert item is not None
            assert item.sequence == self.sequence[incident_id]
            assert item.due_at == (NEVER if due is None else due)

    @invariant()
    def update_ids_are_never_reused(self) -> None:
        ids = [u.event_id for u in self.recorder.published]
        assert len(ids) == len(set(ids))

    def teardown(self) -> None:
        try:
            # Far past every promise: each open incident with a promise fires once more,
            # and no resolved incident fires ever again.
            self.clock.advance(timedelta(days=1))
            self._tick()
        finally:
            self.own.run(self.redis.aclose())
            self.own.close()


def test_scheduler_cadence_fires_each_promise_once_and_never_after_resolution(
    redis_url: str, make_settings: Callable[..., Settings]
) -> None:
    class Machine(CadenceMachine):
        pass

    Machine.redis_url = redis_url
    Machine.settings = make_settings()
    run_state_machine_as_test(Machine, settings=MACHINE_SETTINGS)
