"""One-shot timers: claim what is due with a lease, fire it, drop it.

The resolution hold and the approval auto-publish are both one-shot timers in a
:class:`ScheduleStore`; this fires them. A claim whose fire fails keeps its lease
and fires again once the lease runs out: late, never lost. Every fire logs how
late it was (``late_ms``) and, with :meth:`TimerFirer.observed_by`, counts in the
scheduler's metrics.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from datetime import datetime, timedelta
from typing import Final, Generic, TypeVar

from services.scheduler.cadence import DueItem
from services.scheduler.metrics import SchedulerMetrics
from services.scheduler.schedule_store import Claim, ItemT, ScheduleStore
from shared.clock import Clock
from shared.logs import bound, get_logger

BATCH_SIZE: Final = 100
FiredT = TypeVar("FiredT")

FIRES_IN_FLIGHT: Final = 16
"""Fires publishing at once: well under a connection pool's size (redis-py's default is
100, and the broker's subscribers hold some), so a full batch never runs out of them."""


async def bounded(limit: asyncio.Semaphore, work: Awaitable[FiredT]) -> FiredT:
    """``work`` once one of ``limit``'s slots is free."""
    async with limit:
        return await work


_MS: Final = timedelta(milliseconds=1)

log = get_logger("clarion.scheduler.timers")

FireTimer = Callable[[ItemT, datetime], Awaitable[str | None]]
"""Publish what a due timer stands for; returns the id of the published event, or None
when, on a second look, there was nothing to publish (it is then not counted as fired)."""


class TimerFirer(Generic[ItemT]):
    def __init__(
        self,
        kind: str,
        store: ScheduleStore[ItemT],
        fire: FireTimer[ItemT],
        clock: Clock,
        lease: timedelta,
        *,
        metrics: SchedulerMetrics | None = None,
    ) -> None:
        self._kind = kind
        self._store = store
        self._fire_item = fire
        self._clock = clock
        self._lease = lease
        self._metrics = metrics

    @property
    def kind(self) -> str:
        """What this firer fires (``resolution``, ``approval``, ...): its metrics label."""
        return self._kind

    def observed_by(self, metrics: SchedulerMetrics) -> TimerFirer[ItemT]:
        """The same firer, counting what it fires (and how late) in ``metrics``."""
        return TimerFirer(
            self._kind, self._store, self._fire_item, self._clock, self._lease, metrics=metrics
        )

    async def run_once(self) -> int:
        """Fire every timer due now; returns how many were published."""
        fired = 0
        while True:
            claims = await self._store.claim(self._clock.now(), self._lease, BATCH_SIZE)
            limit = asyncio.Semaphore(FIRES_IN_FLIGHT)
            results = await asyncio.gather(
                *(bounded(limit, self._fire(c)) for c in claims), return_exceptions=True
            )
            for claim, result in zip(claims, results, strict=True):
                if isinstance(result, Exception):  # the lease runs out; fired again later
                    log.error(
                        f"{self._kind}.fire_failed",
                        key=claim.incident_id,
                        error=f"{type(result).__name__}: {result}",
                    )
                elif isinstance(result, BaseException):
                    raise result
                else:
                    fired += int(result)
            if len(claims) < BATCH_SIZE:
                return fired

    async def _fire(self, claim: Claim[ItemT]) -> bool:
        with bound(incident_id=claim.item.incident_id if claim.item else claim.incident_id):
            if claim.item is None:
                await self._store.drop(claim)
                return False
            now = self._clock.now()
            event_id = await self._fire_item(claim.item, now)
            if event_id is None:
                log.info(f"{self._kind}.nothing_due")
                await self._store.drop(claim)  # if it was re-armed meanwhile, that stays
                return False
            late = now - claim.item.due_at
            log.info(f"{self._kind}.due", event_id=event_id, late_ms=late // _MS)
            if self._metrics is not None:
                self._metrics.observe_fired(self._kind, late)
            await self._store.drop(claim)  # if it moved meanwhile, the new timer stays
            return True


__all__ = ["DueItem", "TimerFirer"]
