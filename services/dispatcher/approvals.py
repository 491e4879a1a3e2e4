"""Held messages: customer-facing messages that wait for a human's approval.

The plan names the severities whose public messages wait. The dispatcher keeps
the held event in a Redis hash (``clarion:approvals:pending``) and asks the
scheduler for an auto-publish timer (``ApprovalRequested``), so "respond at
once" still holds when nobody answers. An operator's approval, or the timer,
publishes ``ApprovalGranted``; the dispatcher then sends the held messages with
the same idempotency keys, so a second grant sends nothing twice.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Protocol

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, TypeAdapter
from redis.asyncio import Redis

from services.dispatcher.rendering.values import DispatchEvent
from shared.contracts import (
    ApprovalGranted,
    ApprovalRequested,
)
from shared.redis_values import as_text
from shared.streams import PENDING_APPROVALS

DISPATCH_EVENT: TypeAdapter[DispatchEvent] = TypeAdapter(
    Annotated[DispatchEvent, Field(discriminator="type")]
)


class PendingApproval(BaseModel):
    """One held event: what waits, since when, until when, and what customers would read."""

    model_config = ConfigDict(frozen=True)

    event_id: str
    incident_id: str
    event_type: str
    event_json: str
    requested_at: AwareDatetime
    auto_publish_at: AwareDatetime
    held: int
    preview_title: str
    preview_text: str

    @property
    def event(self) -> DispatchEvent:
        return DISPATCH_EVENT.validate_json(self.event_json)

    @property
    def request(self) -> ApprovalRequested:
        return ApprovalRequested(
            event_id=self.event_id,
            incident_id=self.incident_id,
            requested_at=self.requested_at,
            auto_publish_at=self.auto_publish_at,
        )


class ApprovalPublisher(Protocol):
    async def publish_approval(self, event: ApprovalRequested | ApprovalGranted) -> None: ...


class ApprovalStore:
    def __init__(self, redis: Redis) -> None:
        self._redis = redis

    async def hold(self, pending: PendingApproval) -> tuple[PendingApproval, bool]:
        """Keep ``pending`` unless the event is already held; returns what is held, and
        whether it was held just now."""
        created = await self._redis.hsetnx(
            PENDING_APPROVALS, pending.event_id, pending.model_dump_json()
        )
        if created:
            return pending, True
        held = await self.get(pending.event_id)
        return held or pending, False

    async def get(self, event_id: str) -> PendingApproval | None:
        raw = await self._redis.hget(PENDING_APPROVALS, event_id)
        return None if raw is None else PendingApproval.model_validate_json(as_text(raw))

    async def pending(self) -> list[PendingApproval]:
        """Everything held, the soonest auto-publish first."""
        raw = await self._redis.hvals(PENDING_APPROVALS)
        held = [PendingApproval.model_validate_json(as_text(value)) for value in raw]
        return sorted(held, key=lambda p: p.auto_publish_at)

    async def release(self, event_id: str) -> None:
        await self._redis.hdel(PENDING_APPROVALS, event_id)


def granted(
    pending: PendingApproval, at: datetime, by: str, *, automatic: bool = False
) -> ApprovalGranted:
    return ApprovalGranted(
        event_id=pending.event_id,
        incident_id=pending.incident_id,
        granted_at=at,
        by=by,
        automatic=automatic,
    )
