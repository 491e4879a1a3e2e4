"""Fixtures for the integration tier beyond the shared ones in tests/conftest.py."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from redis.asyncio import Redis

from tests.support.incident_stores import StoreFactory, store_factory


@pytest.fixture
async def make_store(redis: Redis, redis_url: str) -> AsyncIterator[StoreFactory]:
    """Incident stores, each with its own Redis client and broker, like separate ingest
    instances (``redis``: the database is clean first)."""
    async with store_factory(redis_url) as factory:
        yield factory
