"""Channel drivers: one module per provider, all the same shape.

A driver takes a rendered message and a recipient, makes one attempt, and says
how it went (:mod:`.outcome`). Drivers never retry, sleep or rate-limit: the
pipeline schedules retries and applies limits. All HTTP goes through the one
shared ``httpx.AsyncClient`` in :class:`DriverContext`.
"""

from __future__ import annotations

from typing import Protocol

from services.dispatcher.channels.outcome import Outcome
from services.dispatcher.fanout import Delivery
from services.dispatcher.rendering.messages import RenderedMessage


class Channel(Protocol):
    """What the pipeline needs from a driver: send once, say how it went. Never loop or sleep."""

    @property
    def idempotent(self) -> bool:
        """True when the provider itself drops a repeat of our idempotency key
        (``delivery.delivery_id``), so a crash between send and record never duplicates."""
        ...

    async def send(self, message: RenderedMessage, recipient: str, delivery: Delivery) -> Outcome:
        """Deliver ``message`` to ``recipient`` once; classify the result."""
        ...
