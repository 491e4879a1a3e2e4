"""The tick: claim what is due, fire ``UpdateDue`` for open incidents, reschedule.

Each tick first syncs a :class:`~shared.clock.SyncedClock` (in production the
clock on Redis time, so every instance claims, leases and measures lateness on
the same time base), then fires the updates and the other kinds (``also``), then
writes the heartbeat and, with metrics, the size of each schedule. An item that
became due while no scheduler ran fires on the first tick, late, and its
lateness is logged (``late_ms``) and observed in the lateness histogram.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Mapping, Sequence
from datetime import timedelta
from typing import Final, Protocol

from redis.asyncio import Redis

from services.scheduler.cadence import ScheduleItem, advance, fire
from services.scheduler.metrics import SchedulerMetrics
from services.scheduler.schedule_store import Claim, ScheduleStore
from services.scheduler.timers import FIRES_IN_FLIGHT, bounded
from shared.clock import Clock, SyncedClock
from shared.contracts import UpdateDue
from shared.incidents import parse_incident, stored_incidents
from shared.logs import bound, get_logger
from shared.plan import Plan
from shared.settings import Settings
from shared.streams import SCHEDULER_HEARTBEAT

log = get_logger("clarion.scheduler")

DEFAULT_BATCH_SIZE: Final = 100
UPDATE_KIND: Final = "update"
"""The metrics label of the updates this ticker fires itself."""
_MS: Final = timedelta(milliseconds=1)


class UpdatePublisher(Protocol):
    """Where ``UpdateDue`` events go (the ``UPDATES_DUE`` stream in production)."""

    async def publish(self, due: UpdateDue) -> None: ...


class Firer(Protocol):
    """Another kind of due item fired on each tick (resolution holds, ...)."""

    async def run_once(self) -> int: ...


class Ticker:
    def __init__(
        self,
        store: ScheduleStore[ScheduleItem],
        publisher: UpdatePublisher,
        redis: Redis,
        settings: Settings,
        clock: Clock,
        *,
        plan: Plan,
        batch_size: int = DEFAULT_BATCH_SIZE,
        also: Sequence[Firer] = (),
        metrics: SchedulerMetrics | None = None,
        scheduled: Mapping[str, str] | None = None,
    ) -> None:
        """``scheduled`` maps each kind to its due sorted set, counted into ``metrics``
        (``clarion_scheduler_scheduled_items``) on every tick."""
        self._store = store
        self._publisher = publisher
        self._redis = redis
        self._settings = settings
        self._clock = clock
        self._plan = plan
        self._batch_size = batch_size
        self._also = also
        self._lease = timedelta(milliseconds=settings.scheduler_lease_ms)
        self._metrics = metrics
        self._scheduled = dict(scheduled or {})
        self._last_progress: float | None = None

    @property
    def last_progress(self) -> float | None:
        """``time.monotonic()`` when a tick last got on (a batch claimed, a tick done);
        ``None`` before the first. Readiness checks that it is recent."""
        return self._last_progress

    def _progressed(self) -> None:
        self._last_progress = time.monotonic()

    async def run_once(self) -> int:
        """Fire every update due now; returns how many ``UpdateDue`` were published."""
        fired = 0
        while True:
            claims = await self._store.claim(self._clock.now(), self._lease, self._batch_size)
            self._progressed()
            records = await stored_incidents(self._redis, [c.incident_id for c in claims])
            limit = asyncio.Semaphore(FIRES_IN_FLIGHT)
            results = await asyncio.gather(
                *(
                    bounded(limit, self._fire(claim, record))
                    for claim, record in zip(claims, records, strict=True)
                ),
                return_exceptions=True,
            )
            for claim, result in zip(claims, results, strict=True):
                if isinstance(result, BaseException):
                    if not isinstance(result, Exception):
                        raise result
                    # The lease runs out and this item is claimed again later.
                    log.error(
                        "schedule.fire_failed",
                        incident_id=claim.incident_id,
                        error=f"{type(result).__name__}: {result}",
                    )
                elif result:
                    fired += 1
            if len(claims) < self._batch_size:
                return fired

    async def tick(self) -> int:
        """One tick: sync the clock, :meth:`run_once` and the other firers, then the heartbeat."""
        if isinstance(self._clock, SyncedClock):
            await self._clock.sync()
        fired = await self.run_once()
        for firer in self._also:
            fired += await firer.run_once()
            self._progressed()
        kinds = list(self._scheduled) if self._metrics is not None else []
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.hincrby(SCHEDULER_HEARTBEAT, "ticks", 1)
            pipe.hset(SCHEDULER_HEARTBEAT, "at", self._clock.now().isoformat())
            for kind in kinds:
                pipe.zcard(self._scheduled[kind])
            results = await pipe.execute()
        if self._metrics is not None:
            self._metrics.set_scheduled(dict(zip(kinds, map(int, results[2:]), strict=True)))
        self._progressed()
        return fired

    async def run_forever(self, stop: asyncio.Event) -> None:
        """Tick every ``scheduler_tick_ms`` until ``stop`` is set. A failed tick is retried."""
        interval = self._settings.scheduler_tick_ms / 1000
        while not stop.is_set():
            try:
                await self.tick()
            except Exception as exc:
                if self._metrics is not None:
                    self._metrics.tick_failed()
                log.exception("scheduler.tick_failed", error=f"{type(exc).__name__}: {exc}")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=interval)

    async def _fire(self, claim: Claim[ScheduleItem], record: bytes | str | None) -> bool:
        """Fire ``claim`` for its incident (``record``, read with the batch just before)."""
        with bound(incident_id=claim.incident_id):
            item = claim.item
            incident = parse_incident(record)
            if item is None or incident is None or not incident.is_open:
                dropped = await self._store.drop(claim)
                log.info(
                    "schedule.dropped",
                    reason="no item" if item is None else "incident not open",
                    dropped=dropped,
                )
                return False
            fired_at = self._clock.now()
            interval_for = self._plan.cadence
            due, next_item = fire(item, fired_at, incident.severity, interval_for)
            await self._publisher.publish(due)
            late = fired_at - item.due_at
            log.info(
                "update.due",
                event_id=due.event_id,
                sequence=due.sequence,
                due_at=due.due_at.isoformat(),
                late_ms=late // _MS,
                next_update_at=due.next_update_at.isoformat() if due.next_update_at else None,
            )
            if self._metrics is not None:
                self._metrics.observe_fired(UPDATE_KIND, late)
            if not await self._store.complete(claim, next_item):
                # An event moved the item while we held it: keep its newer
                # timing, but this sequence has gone out.
                await self._store.change(
                    claim.incident_id,
                    lambda current: advance(
                        current, item.sequence, fired_at, incident.severity, interval_for
                    ),
                )
            return True
