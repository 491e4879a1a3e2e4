"""The local outbox: where a channel without credentials delivers.

Until a channel's provider is configured, its messages are kept in the local
outbox (``clarion outbox``) and the delivery log says so, with the provider id
``outbox:<entry id>`` and a note naming what to configure, so the system works
end to end with zero setup.
"""

from __future__ import annotations

from redis.asyncio import Redis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from services.dispatcher.channels.outcome import Outcome, Retryable, Sent
from services.dispatcher.fanout import Delivery
from services.dispatcher.outbox import OutboxMessage, queue_message
from services.dispatcher.rendering.messages import RenderedMessage
from shared.clock import Clock


class OutboxWriter:
    def __init__(self, redis: Redis, clock: Clock) -> None:
        self._redis = redis
        self._clock = clock

    async def keep(self, message: RenderedMessage, delivery: Delivery, reason: str) -> Outcome:
        outgoing = OutboxMessage(
            channel=delivery.channel,
            to=delivery.recipient,
            subject=message.title,
            text=message.text,
            message_id=delivery.delivery_id,
            queued_at=self._clock.now(),
            incident_id=delivery.incident_id,
            payload=dict(message.payload) if message.payload is not None else None,
            reason=reason,
        )
        try:
            entry_id = await queue_message(self._redis, outgoing)
        except (RedisConnectionError, RedisTimeoutError) as exc:
            return Retryable(f"{type(exc).__name__}: {exc}")
        return Sent(f"outbox:{entry_id}")
