from __future__ import annotations

import asyncio

import pytest
from redis.asyncio import Redis

from shared.idempotency import Claim, IdempotencyStore
from shared.streams import idempotency_key
from tests.support.waiting import eventually

pytestmark = pytest.mark.integration


async def test_one_owner_claims_and_completion_is_final(redis: Redis) -> None:
    store = IdempotencyStore(redis, lease_ms=10_000, retention_seconds=60)
    results = await asyncio.gather(*(store.claim("evt:email:a", f"owner-{i}") for i in range(10)))
    assert results.count(Claim.CLAIMED) == 1
    assert results.count(Claim.BUSY) == 9
    await store.complete("evt:email:a")
    assert await store.claim("evt:email:a", "owner-1") is Claim.DONE
    assert await store.is_done("evt:email:a")


async def test_a_released_claim_can_be_taken_by_another_owner(redis: Redis) -> None:
    store = IdempotencyStore(redis, lease_ms=10_000, retention_seconds=60)
    assert await store.claim("k", "a") is Claim.CLAIMED
    await store.release("k", "b")  # not b's to release
    assert await store.claim("k", "b") is Claim.BUSY
    await store.release("k", "a")
    assert await store.claim("k", "b") is Claim.CLAIMED


async def test_an_expired_lease_frees_the_key(redis: Redis) -> None:
    store = IdempotencyStore(redis, lease_ms=10_000, retention_seconds=60)
    assert await store.claim("k", "dead-owner") is Claim.CLAIMED
    await redis.pexpire(idempotency_key("k"), 1)  # the owner died; its lease runs out

    async def lease_gone() -> bool:
        return not await redis.exists(idempotency_key("k"))

    assert await eventually(lease_gone, what="lease expiry")
    assert await store.claim("k", "new-owner") is Claim.CLAIMED
