"""Safe stream consumption: the guarantees FastStream leaves to us.

Each consumed stream gets two subscribers in one consumer group:

* a reader (``XREADGROUP``) with a unique consumer name and bounded ``max_records``;
* a reclaimer (``XAUTOCLAIM`` with ``min_idle_time``) that picks up entries a
  crashed or failing consumer left pending.

A handler that raises leaves its entry pending, so the reclaimer retries it.
An entry that cannot be decoded, that raises :class:`PermanentFailure`, or that
has been delivered more than ``max_deliveries`` times goes to the dead-letter
stream with its error, and is acknowledged: nothing poisons a stream.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Generic, TypeVar

from faststream.redis import RedisBroker, StreamSub
from faststream.redis.annotations import RedisStreamMessage
from pydantic import ValidationError
from redis.asyncio import Redis

from shared.contracts import DeadLetter
from shared.errors import PermanentFailure
from shared.logs import get_logger
from shared.redis_values import DATA_FIELD, as_text
from shared.settings import Settings
from shared.streams import DEAD_LETTERS, last_error_key

T = TypeVar("T")
log = get_logger("clarion.consumer")


@dataclass(frozen=True)
class StreamEntry:
    """Where a message came from, for logs and dead letters."""

    stream: str
    group: str
    entry_id: str
    delivery_count: int


async def dead_letter(
    redis: Redis, entry: StreamEntry, body: bytes, reason: str, error: str | None
) -> str:
    """Write a message to the dead-letter stream, with enough to replay it."""
    record = DeadLetter(
        kind="message",
        stream=entry.stream,
        group=entry.group,
        entry_id=entry.entry_id,
        delivery_count=entry.delivery_count,
        reason=reason,
        error=error,
        payload=body.decode("utf-8", errors="replace"),
        dead_at=datetime.now(UTC),
    )
    entry_id = await redis.xadd(DEAD_LETTERS, {DATA_FIELD: record.model_dump_json()})
    log.error(
        "message.dead_lettered",
        stream=entry.stream,
        group=entry.group,
        entry_id=entry.entry_id,
        reason=reason,
        error=error,
        delivery_count=entry.delivery_count,
    )
    return as_text(entry_id)


@dataclass
class GuardedConsumer(Generic[T]):
    """Decode, handle, and on failure retry or dead-letter one stream for one group."""

    redis: Redis
    stream: str
    group: str
    decode: Callable[[bytes], T]
    handle: Callable[[T, StreamEntry], Awaitable[None]]
    max_deliveries: int
    on_dead: Callable[[T, StreamEntry, str], Awaitable[None]] | None = None
    max_workers: int = 1  # new entries handled at once (reclaimed ones: one at a time)

    async def process(self, body: bytes, entry: StreamEntry) -> None:
        """Run the handler once. Raises only when the entry should stay pending."""
        errors_key = last_error_key(self.stream, self.group)
        try:
            message = self.decode(body)
        except (ValidationError, ValueError) as exc:
            await dead_letter(self.redis, entry, body, "undecodable", str(exc))
            return
        if entry.delivery_count > self.max_deliveries:
            last_error = await self.redis.hget(errors_key, entry.entry_id)
            error = as_text(last_error) if last_error is not None else None
            await self._give_up(message, body, entry, "max_deliveries_exceeded", error)
            return
        try:
            await self.handle(message, entry)
        except PermanentFailure as exc:
            await self._give_up(message, body, entry, "permanent_failure", str(exc))
            return
        except Exception as exc:
            await self.redis.hset(errors_key, entry.entry_id, f"{type(exc).__name__}: {exc}")
            log.warning(
                "message.handler_failed",
                stream=self.stream,
                group=self.group,
                entry_id=entry.entry_id,
                delivery_count=entry.delivery_count,
                error=f"{type(exc).__name__}: {exc}",
            )
            raise
        if entry.delivery_count > 1:
            await self.redis.hdel(errors_key, entry.entry_id)

    async def _give_up(
        self, message: T, body: bytes, entry: StreamEntry, reason: str, error: str | None
    ) -> None:
        if self.on_dead is not None:
            await self.on_dead(message, entry, error or reason)
        await dead_letter(self.redis, entry, body, reason, error)
        await self.redis.hdel(last_error_key(self.stream, self.group), entry.entry_id)

    def subscribe(self, broker: RedisBroker, settings: Settings) -> None:
        """Register the reader and the reclaimer on ``broker``."""
        reader = StreamSub(
            self.stream,
            group=self.group,
            consumer=settings.consumer_name,
            max_records=settings.max_records,
            polling_interval=settings.polling_interval_ms,
        )
        reclaimer = StreamSub(
            self.stream,
            group=self.group,
            consumer=f"{settings.consumer_name}-reclaim",
            max_records=settings.max_records,
            polling_interval=settings.polling_interval_ms,
            min_idle_time=settings.reclaim_idle_ms,
        )

        async def on_new(msg: RedisStreamMessage) -> None:
            await self.process(msg.body, _entry(msg, self.group, delivery_count=1))

        async def on_reclaimed(msg: RedisStreamMessage) -> None:
            count = await msg.get_delivery_count()
            await self.process(msg.body, _entry(msg, self.group, delivery_count=count))

        workers = self.max_workers if self.max_workers > 1 else None
        broker.subscriber(stream=reader, title=f"{self.stream}:{self.group}", max_workers=workers)(
            on_new
        )
        # Reclaims are rare (a crash, a failing handler): one at a time is enough.
        broker.subscriber(stream=reclaimer, title=f"{self.stream}:{self.group}:reclaim")(
            on_reclaimed
        )


def _entry(msg: Any, group: str, delivery_count: int) -> StreamEntry:
    raw = msg.raw_message
    ids = raw.get("message_ids") or [b""]
    return StreamEntry(
        stream=as_text(raw.get("channel", "")),
        group=group,
        entry_id=as_text(ids[0]),
        delivery_count=delivery_count,
    )
