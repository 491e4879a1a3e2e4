"""The local email outbox: where email goes when no SMTP server is configured.

A Redis stream (``clarion:outbox:email``) that ``clarion outbox`` reads, so a
newcomer sees exactly what would have been mailed without setting up SMTP.
"""

from __future__ import annotations

from datetime import datetime
from typing import Final

from pydantic import AwareDatetime, BaseModel, ConfigDict
from redis.asyncio import Redis

from shared.redis_values import DATA_FIELD, as_text, data_entries
from shared.streams import EMAIL_OUTBOX

OUTBOX_MAXLEN: Final = 10_000


class OutboxEmail(BaseModel):
    """One email as it would have been sent."""

    model_config = ConfigDict(frozen=True)

    to: str
    subject: str
    text: str
    message_id: str
    queued_at: AwareDatetime
    incident_id: str


async def queue_email(
    redis: Redis,
    *,
    to: str,
    subject: str,
    text: str,
    message_id: str,
    queued_at: datetime,
    incident_id: str,
) -> str:
    """Append an email to the outbox; returns the stream entry id."""
    email = OutboxEmail(
        to=to,
        subject=subject,
        text=text,
        message_id=message_id,
        queued_at=queued_at,
        incident_id=incident_id,
    )
    entry_id = await redis.xadd(
        EMAIL_OUTBOX,
        {DATA_FIELD: email.model_dump_json()},
        maxlen=OUTBOX_MAXLEN,
        approximate=True,
    )
    return as_text(entry_id)


async def read_outbox(redis: Redis, limit: int = 20) -> list[OutboxEmail]:
    """The newest ``limit`` emails in the outbox, newest first."""
    entries = data_entries(await redis.xrevrange(EMAIL_OUTBOX, count=limit))
    return [OutboxEmail.model_validate_json(payload) for _, payload in entries]
