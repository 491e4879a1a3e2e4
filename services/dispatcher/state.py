"""What the dispatcher's HTTP routes need, built once by the app's lifespan."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, cast

from fastapi import Depends, Request
from faststream.redis import RedisBroker
from redis.asyncio import Redis

from services.dispatcher.approvals import ApprovalPublisher
from services.dispatcher.dead_letters import Replayer
from services.dispatcher.delivery_log import DeliveryLog
from services.dispatcher.status_page_store import StatusPageStore
from shared.clock import Clock
from shared.plan import Plan
from shared.settings import Settings


@dataclass(frozen=True)
class DispatcherState:
    settings: Settings
    clock: Clock
    redis: Redis
    delivery_log: DeliveryLog
    status_pages: StatusPageStore
    broker: RedisBroker
    plan: Plan
    approvals: ApprovalPublisher
    replayer: Replayer
    secrets: tuple[str, ...] = ()
    """Configured secret values, scrubbed from what the ops API and pages show."""


def get_state(request: Request) -> DispatcherState:
    return cast(DispatcherState, request.app.state.dispatcher)


async def _state(request: Request) -> DispatcherState:
    """``get_state`` as a dependency: async, so FastAPI calls it inline (a plain ``def``
    would cost every request a hop to the thread pool)."""
    return get_state(request)


State = Annotated[DispatcherState, Depends(_state)]
