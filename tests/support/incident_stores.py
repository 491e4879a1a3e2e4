"""Incident stores on a real server, each with its own client and broker like separate
ingest instances, and the Alertmanager batches the store tests feed them."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from typing import Final

from faststream.redis import RedisBroker
from redis.asyncio import Redis

from services.ingest.incident_store import IncidentStore
from services.ingest.sources.alertmanager import AlertmanagerWebhook, group_key_of, parse
from shared.clock import ManualClock
from shared.contracts import Alert
from tests.conftest import load_fixture
from tests.support.plans import make_plan

FIRING: Final = "alertmanager_webhook_v4_firing.json"
RESOLVED: Final = "alertmanager_webhook_v4_resolved.json"

StoreFactory = Callable[[ManualClock], Awaitable[IncidentStore]]


def batch(name: str) -> tuple[str, list[Alert]]:
    """The group key and the alerts of the Alertmanager fixture ``name``."""
    payload = AlertmanagerWebhook.model_validate(load_fixture(name))
    return group_key_of(payload), parse(payload)


@asynccontextmanager
async def store_factory(redis_url: str) -> AsyncIterator[StoreFactory]:
    """Build stores, each with its own Redis client and broker; all closed on exit."""
    async with AsyncExitStack() as stack:

        async def factory(clock: ManualClock) -> IncidentStore:
            client = Redis.from_url(redis_url)
            stack.push_async_callback(client.aclose)
            broker = RedisBroker(redis_url)
            await broker.connect()
            stack.push_async_callback(broker.stop)
            return IncidentStore(client, broker, clock, make_plan())

        yield factory
