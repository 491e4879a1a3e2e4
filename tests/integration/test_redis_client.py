"""The services' Redis client: under a burst, callers wait for a connection and none
fails; against a server that stops answering, no call hangs."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

import pytest
from redis.asyncio import Redis
from redis.exceptions import TimeoutError as RedisTimeoutError

from shared.redis_client import MAX_CONNECTIONS, connect

pytestmark = pytest.mark.integration


@dataclass
class Burst:
    holding: int = 0
    most: int = 0
    full: asyncio.Event = field(default_factory=asyncio.Event)
    release: asyncio.Event = field(default_factory=asyncio.Event)

    async def transaction(self, client: Redis, key: str) -> str:
        """What an ingest request does: WATCH a key (its connection stays taken), then write."""
        async with client.pipeline(transaction=True) as pipe:
            await pipe.watch(key)
            self.holding += 1
            self.most = max(self.most, self.holding)
            if self.holding == MAX_CONNECTIONS:
                self.full.set()
            await self.release.wait()
            pipe.multi()  # type: ignore[no-untyped-call]
            pipe.set(key, "done")
            await pipe.execute()
            self.holding -= 1
        return key


async def test_more_concurrent_transactions_than_connections_wait_and_all_succeed(
    redis: Redis, redis_url: str
) -> None:
    client = connect(redis_url)
    burst = Burst()
    size = MAX_CONNECTIONS + 50
    try:
        tasks = [asyncio.create_task(burst.transaction(client, f"burst:{n}")) for n in range(size)]
        await asyncio.wait_for(burst.full.wait(), timeout=60)
        burst.release.set()
        done = await asyncio.wait_for(asyncio.gather(*tasks), timeout=60)
    finally:
        await client.aclose()

    assert len(done) == size
    assert burst.most == MAX_CONNECTIONS  # the other 50 waited for a connection
    assert await redis.mget([f"burst:{n}" for n in range(size)]) == [b"done"] * size


@dataclass
class SilentServer:
    """Accepts connections and reads what comes, never answers: a Redis that froze (or a
    connection left half-open by a restart)."""

    received: bytearray = field(default_factory=bytearray)
    connections: int = 0

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        while chunk := await reader.read(4096):
            self.received.extend(chunk)
        writer.close()


async def test_a_server_that_never_answers_fails_the_call_instead_of_hanging() -> None:
    silent = SilentServer()
    server = await asyncio.start_server(silent.serve, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    client = connect(f"redis://127.0.0.1:{port}/0", socket_timeout=0.2)
    try:
        with pytest.raises(RedisTimeoutError):
            await asyncio.wait_for(client.ping(), timeout=30)  # the guard, not the check
    finally:
        await client.aclose()
        server.close()
        await server.wait_closed()

    # Failed at the first timeout: redis-py's nested retries would have made it 49 of them.
    assert silent.connections == 1
    assert b"MAINT_NOTIFICATIONS" not in bytes(silent.received).upper()
