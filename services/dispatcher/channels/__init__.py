"""Channel drivers: one module per channel, each with ``send(message, recipient, delivery)``."""

from __future__ import annotations

from typing import Protocol

from services.dispatcher.channels.outcome import Outcome
from services.dispatcher.fanout import Delivery
from services.dispatcher.rendering.messages import RenderedMessage


class Channel(Protocol):
    """What the pipeline needs from a driver: send once, say how it went. Never loop or sleep."""

    async def send(self, message: RenderedMessage, recipient: str, delivery: Delivery) -> Outcome:
        """Deliver ``message`` to ``recipient``; classify the result."""
        ...
