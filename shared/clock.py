"""Time, injected: production uses the wall clock, tests use a clock they move.

The scheduler runs on :class:`RedisTimeClock`: every instance reads "now" on the
Redis server's clock, so instances whose hosts disagree about the time still
agree on what is due and on when a lease runs out.

Why a clock synced to Redis ``TIME`` rather than claim scripts that read ``TIME``
themselves: the scheduler writes more timestamps than the claim comparison. A
claim's lease score, the due time of the next update (``fired_at + interval``),
the ``emitted_at`` and ``next_update_at`` promised to customers, and how late an
item fired must all be on one time base, or a host whose clock is 30 s fast
would promise updates 30 s off and report wrong lateness even if its claims were
right. One offset, measured once per tick (a single ``TIME`` round trip,
compensated for half its round-trip time), puts every one of them on Redis time;
the Lua scripts stay free of clock reads and tests keep driving time with a
:class:`ManualClock`. Between two measurements time advances on the local
monotonic clock, so a step of the host's wall clock (NTP, a manual change)
changes nothing. The remaining disagreement between instances is about half a
round trip to Redis, far below a lease (30 s by default).
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Protocol, runtime_checkable

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


class Clock(Protocol):
    def now(self) -> datetime: ...


@runtime_checkable
class SyncedClock(Protocol):
    """A clock that must be brought in line with a reference (``sync``) before it is read."""

    def now(self) -> datetime: ...

    async def sync(self) -> None: ...


class SystemClock:
    def now(self) -> datetime:
        return datetime.now(UTC)


class ManualClock:
    """A clock that only moves when told to."""

    def __init__(self, start: datetime) -> None:
        self._now = start

    def now(self) -> datetime:
        return self._now

    def advance(self, delta: timedelta) -> None:
        self._now += delta


class MonotonicWallClock:
    """The wall time at creation, moved on by the monotonic clock: never steps, never goes back."""

    def __init__(
        self,
        wall: Callable[[], datetime] = lambda: datetime.now(UTC),
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self._monotonic = monotonic
        self._started = monotonic()
        self._wall = wall()

    def now(self) -> datetime:
        return self._wall + timedelta(seconds=self._monotonic() - self._started)


class ServerTime(Protocol):
    """What the clock asks for the time: Redis' ``TIME`` (seconds, microseconds)."""

    def time(self) -> Awaitable[tuple[int, int]]: ...


class ClockNotSynced(RuntimeError):
    """``now()`` was read before the first successful ``sync()``."""


class RedisTimeClock:
    """The Redis server's time, read locally.

    ``now()`` is ``local.now() + offset``, where ``local`` runs on the monotonic
    clock (:class:`MonotonicWallClock`; tests pass a skewed fake) and ``offset``
    is measured by :meth:`sync`: the server's ``TIME`` minus the local time at
    the middle of the round trip. Call :meth:`sync` before the first ``now()``
    (which raises :class:`ClockNotSynced` otherwise) and then regularly (the
    scheduler does on every tick); a failed sync raises and keeps the last offset.
    """

    def __init__(self, server: ServerTime, local: Clock | None = None) -> None:
        self._server = server
        self._local: Clock = local if local is not None else MonotonicWallClock()
        self._offset: timedelta | None = None
        self._round_trip = timedelta(0)

    @property
    def offset(self) -> timedelta | None:
        """Server time minus local time, as last measured (``None`` before the first sync)."""
        return self._offset

    @property
    def round_trip(self) -> timedelta:
        """How long the last ``TIME`` took; the offset is right within half of it."""
        return self._round_trip

    async def sync(self) -> None:
        """Measure the offset to the server's clock again (one ``TIME`` round trip)."""
        sent = self._local.now()
        seconds, microseconds = await self._server.time()
        received = self._local.now()
        round_trip = received - sent
        if round_trip < timedelta(0) and self._offset is not None:
            return  # the local clock went back: keep the offset measured before
        round_trip = max(round_trip, timedelta(0))
        server = _EPOCH + timedelta(seconds=int(seconds), microseconds=int(microseconds))
        self._offset = server - (sent + round_trip / 2)
        self._round_trip = round_trip

    def now(self) -> datetime:
        if self._offset is None:
            raise ClockNotSynced("RedisTimeClock.now() before the first sync()")
        return self._local.now() + self._offset
