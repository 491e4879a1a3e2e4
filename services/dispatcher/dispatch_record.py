"""What one event's deliveries are sent from: the incident as it stood and each rendering.

Rendered once per (audience, channel) when the event fans out, and kept under the
event (``clarion:dispatch:<event_id>``) for as long as its deliveries may be retried
or replayed, so every attempt of a delivery sends exactly the same words.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Final

from pydantic import TypeAdapter
from redis.asyncio import Redis
from redis.asyncio.client import Pipeline
from redis.typing import EncodableT, FieldT

from services.dispatcher.rendering.messages import RenderedMessage
from shared.contracts import Incident
from shared.redis_values import as_text
from shared.streams import dispatch_record_key

_INCIDENT: Final = "incident"
_MESSAGE = TypeAdapter(RenderedMessage)
_PROBLEM_PREFIX: Final = "problem:"


@dataclass(frozen=True)
class RenderProblem:
    """Why a message could not be rendered: every delivery of it fails with this reason."""

    error: str


Rendering = RenderedMessage | RenderProblem


def rendering_field(audience: str, channel: str) -> str:
    return f"{audience}\x1f{channel}"


class DispatchRecords:
    def __init__(self, redis: Redis, retention_seconds: int) -> None:
        self._redis = redis
        self._retention = retention_seconds

    async def save(
        self,
        event_id: str,
        incident: Incident,
        renderings: Mapping[tuple[str, str], Rendering],
    ) -> None:
        async with self._redis.pipeline(transaction=True) as pipe:
            self.stage(pipe, event_id, incident, renderings)
            await pipe.execute()

    def stage(
        self,
        pipe: Pipeline,
        event_id: str,
        incident: Incident,
        renderings: Mapping[tuple[str, str], Rendering],
    ) -> None:
        """Add what :meth:`save` writes to ``pipe`` (a transaction: the record never
        lacks its expiry), to go with other writes."""
        fields: dict[FieldT, EncodableT] = {_INCIDENT: incident.model_dump_json()}
        for (audience, channel), rendering in renderings.items():
            fields[rendering_field(audience, channel)] = _encode(rendering)
        key = dispatch_record_key(event_id)
        pipe.hset(key, mapping=fields)
        pipe.expire(key, self._retention)

    async def load(
        self, event_id: str, audience: str, channel: str
    ) -> tuple[Incident, Rendering] | None:
        """The incident and the rendering a delivery sends; None once expired (or never saved)."""
        raw_incident, raw_message = await self._redis.hmget(
            dispatch_record_key(event_id), [_INCIDENT, rendering_field(audience, channel)]
        )
        if raw_incident is None or raw_message is None:
            return None
        return Incident.model_validate_json(raw_incident), _decode(as_text(raw_message))


def _encode(rendering: Rendering) -> str:
    if isinstance(rendering, RenderProblem):
        return _PROBLEM_PREFIX + rendering.error
    return _MESSAGE.dump_json(rendering).decode()


def _decode(raw: str) -> Rendering:
    if raw.startswith(_PROBLEM_PREFIX):
        return RenderProblem(raw.removeprefix(_PROBLEM_PREFIX))
    return _MESSAGE.validate_json(raw)
