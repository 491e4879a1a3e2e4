"""The local outbox as a channel: what a channel without a configured driver would send.

Until a channel's provider is configured, its messages are kept in the local
outbox (``clarion outbox``) and the delivery log says so in the provider id
(``outbox:<entry id>``), so the system works end to end with zero setup.
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


class OutboxChannel:
    def __init__(self, redis: Redis, clock: Clock, reason: str) -> None:
        self._redis = redis
        self._clock = clock
        self._reason = reason

    async def send(self, message: RenderedMessage, recipient: str, delivery: Delivery) -> Outcome:
        outgoing = OutboxMessage(
            channel=delivery.channel,
            to=recipient,
            subject=message.title,
            text=message.text,
            message_id=delivery.delivery_id,
            queued_at=self._clock.now(),
            incident_id=delivery.incident_id,
            payload=dict(message.payload) if message.payload is not None else None,
            reason=self._reason,
        )
        try:
            entry_id = await queue_message(self._redis, outgoing)
        except (RedisConnectionError, RedisTimeoutError) as exc:
            return Retryable(f"{type(exc).__name__}: {exc}")
        return Sent(f"outbox:{entry_id}")
