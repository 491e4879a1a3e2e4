"""One renewer for the leases of every send in progress in this worker.

A claimed delivery holds a lease (``CLARION_IDEMPOTENCY_LEASE_MS``); a send slower than
that must renew it, or another worker would take the delivery for abandoned and send
it again. One task renews every lease held here, every third of a lease, those held
for at least half of that (most sends are over long before), in one round of calls
that share a pipeline. A send only registers its lease and drops it when done: no task,
timer or event of its own.

A renewal that finds the lease gone (another owner took over) stops renewing that one.
A failed renewal (Redis unreachable) is logged; the next may work, and the lease still
runs. The renewer ends when nothing is held, woken at once when the last lease is
dropped; the next lease starts it again. A stopping worker closes it
(:meth:`LeaseKeeper.aclose`), so that no renewal outlives the Redis client.
Nothing waits for a renewal in flight: one landing after the send finished finds the
lease released, and changes nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Protocol

from redis.exceptions import RedisError

from shared.logs import get_logger

log = get_logger("clarion.dispatcher.leases")


class Leases(Protocol):
    """Where leases live (:class:`~services.dispatcher.delivery_state.DeliveryStates`)."""

    @property
    def lease_ms(self) -> int: ...

    async def renew(self, delivery_id: str, owner: str) -> bool:
        """Whether the lease was still ``owner``'s (and is now extended)."""
        ...


MIN_INTERVAL_SECONDS = 0.05


class LeaseKeeper:
    def __init__(self, leases: Leases) -> None:
        self._leases = leases
        self._every = max(leases.lease_ms / 3000, MIN_INTERVAL_SECONDS)
        self._held: dict[str, tuple[str, float]] = {}  # owner -> (delivery id, since)
        self._emptied = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._closed = False

    @property
    def held(self) -> int:
        return len(self._held)

    @contextmanager
    def kept(self, delivery_id: str, owner: str) -> Iterator[None]:
        """Keep ``owner``'s lease on ``delivery_id`` renewed while the block runs."""
        self._held[owner] = (delivery_id, asyncio.get_running_loop().time())
        if not self._closed and (self._task is None or self._task.done()):
            self._emptied.clear()
            self._task = asyncio.create_task(self._keep())
        try:
            yield
        finally:
            self._held.pop(owner, None)
            if not self._held:
                self._emptied.set()

    async def aclose(self, grace: float = 5.0) -> None:
        """Renew nothing more (a stopping worker, its sends drained). A renewal in flight
        gets ``grace`` seconds to end; the renewer is cancelled only after that, since a
        cancellation landing inside a Redis call can be lost in the client."""
        self._closed = True
        self._emptied.set()
        task = self._task
        if task is None or task.done():
            return
        await asyncio.wait({task}, timeout=grace)
        if not task.done():
            task.cancel()
            await asyncio.wait({task}, timeout=grace)

    async def _keep(self) -> None:
        loop = asyncio.get_running_loop()
        while self._held and not self._closed:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._emptied.wait(), timeout=self._every)
            if not self._held or self._closed:
                return
            self._emptied.clear()
            oldest = loop.time() - self._every / 2
            due = [(owner, held[0]) for owner, held in self._held.items() if held[1] <= oldest]
            await asyncio.gather(*(self._renew_one(delivery, owner) for owner, delivery in due))

    async def _renew_one(self, delivery_id: str, owner: str) -> None:
        try:
            kept = await self._leases.renew(delivery_id, owner)
        except (RedisError, OSError) as exc:  # the next renewal may work; the lease still runs
            log.warning("delivery.lease_renewal_failed", error=str(exc))
            return
        if not kept:
            self._held.pop(owner, None)  # another owner has it now: stop renewing
