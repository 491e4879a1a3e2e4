"""The local outbox: where messages go when their channel has no credentials configured.

A Redis stream (``clarion:outbox``) that ``clarion outbox`` reads, so a newcomer
sees exactly what would have been sent, on every channel, without any setup.
"""

from __future__ import annotations

from typing import Any, Final

from pydantic import AwareDatetime, BaseModel, ConfigDict
from redis.asyncio import Redis

from shared.redis_values import DATA_FIELD, as_text, data_entries
from shared.streams import OUTBOX

OUTBOX_MAXLEN: Final = 100_000


class OutboxMessage(BaseModel):
    """One message as it would have been sent."""

    model_config = ConfigDict(frozen=True)

    channel: str
    to: str
    subject: str
    text: str
    message_id: str
    queued_at: AwareDatetime
    incident_id: str
    payload: dict[str, Any] | None = None
    reason: str = "no credentials configured"


async def queue_message(redis: Redis, message: OutboxMessage) -> str:
    """Append ``message`` to the outbox; returns the stream entry id."""
    entry_id = await redis.xadd(
        OUTBOX, {DATA_FIELD: message.model_dump_json()}, maxlen=OUTBOX_MAXLEN, approximate=True
    )
    return as_text(entry_id)


async def read_outbox(
    redis: Redis, limit: int = 20, channel: str | None = None
) -> list[OutboxMessage]:
    """The newest ``limit`` messages in the outbox (of ``channel``, if given), newest first."""
    found: list[OutboxMessage] = []
    last = "+"
    while len(found) < limit:
        entries = data_entries(await redis.xrevrange(OUTBOX, max=last, count=limit * 4))
        if not entries:
            break
        for entry_id, payload in entries:
            if entry_id == last:
                continue
            message = OutboxMessage.model_validate_json(payload)
            if channel is None or message.channel == channel:
                found.append(message)
        last = entries[-1][0]
        if len(entries) < limit * 4:
            break
    return found[:limit]
