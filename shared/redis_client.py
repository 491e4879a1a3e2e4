"""Redis connections, the FastStream broker and consumer groups, built one way."""

from __future__ import annotations

import asyncio
from typing import Any, Final

from faststream.redis import RedisBroker
from redis.asyncio import BlockingConnectionPool, Redis
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError
from redis.maint_notifications import MaintNotificationsConfig

from shared.streams import CONSUMER_GROUPS

_RETRY_ATTEMPTS = 6
MAX_CONNECTIONS = 200
"""Connections one client opens at most; past that, callers wait for one to come back."""
POOL_WAIT_SECONDS = 10.0
"""How long a caller waits for a free connection before its command fails."""
SOCKET_TIMEOUT_SECONDS: Final = 5.0
"""How long one read or write on a Redis socket may take. Without it a reply that never
comes (a server frozen or restarted under a half-open connection) holds its caller, and
the connection, for ever. Longer than any command Clarion sends: the brokers' blocking
reads wait ``CLARION_POLLING_INTERVAL_MS`` at most."""
CONNECT_TIMEOUT_SECONDS: Final = 2.0
CANCELLED_TASKS_WAIT_SECONDS: Final = 5.0
"""How long a stopping broker waits for its cancelled reading tasks to end."""


def _retry() -> Retry:
    return Retry(ExponentialBackoff(cap=1.0, base=0.05), _RETRY_ATTEMPTS, RETRY_ON)


RETRY_ON: Final = (RedisConnectionError,)
"""What is retried: a refused or reset connection (Redis restarting, loading its AOF:
a quick failure). Not a timeout: redis-py nests its retries (each command's attempt
reconnects with its own retries), so a server that accepts connections but never
answers would hold a caller for 7 x 7 socket timeouts; a timed-out write may also have
been applied already. A timeout fails the call at once, and its caller (a consumer's
reclaim, a webhook sender's retry) tries again."""


def connect(url: str, *, socket_timeout: float = SOCKET_TIMEOUT_SECONDS) -> Redis:
    """A client that rides out a short Redis restart instead of failing the caller.

    Its pool blocks: a burst of concurrent requests (each ingest request holds a
    connection for its transaction) waits for a free connection rather than failing
    with "too many connections" as redis-py's default pool does past its limit. Every
    socket operation is bounded (``socket_timeout``): a timeout fails the call.
    Maintenance notifications (a Redis Enterprise/Cloud handshake that Redis and Valkey
    refuse) are off: one command less per new connection.
    """
    pool = BlockingConnectionPool.from_url(
        url,
        max_connections=MAX_CONNECTIONS,
        timeout=POOL_WAIT_SECONDS,
        maint_notifications_config=MaintNotificationsConfig(enabled=False),
        socket_timeout=socket_timeout,
        **_connection_options(),
    )
    return Redis.from_pool(pool)


def broker_connection() -> dict[str, Any]:
    """The connection options of every service's FastStream broker: the same retries
    and bounded socket operations as :func:`connect`."""
    return {"socket_timeout": SOCKET_TIMEOUT_SECONDS, **_connection_options()}


def _connection_options() -> dict[str, Any]:
    return {
        "retry": _retry(),
        "retry_on_error": list(RETRY_ON),
        "health_check_interval": 15,
        "socket_keepalive": True,
        "socket_connect_timeout": CONNECT_TIMEOUT_SECONDS,
    }


async def ensure_consumer_groups(redis: Redis) -> None:
    """Create every consumer group from the start of its stream.

    FastStream creates a missing group at ``$``, which skips whatever was
    published before the first consumer started. Creating groups at ``0``
    first means an event published by ingest before the dispatcher ever ran
    is still delivered.
    """
    for stream, groups in CONSUMER_GROUPS.items():
        for group in groups:
            try:
                await redis.xgroup_create(name=stream, groupname=group, id="0", mkstream=True)
            except ResponseError as exc:
                if "BUSYGROUP" not in str(exc):
                    raise


async def stop_broker(broker: RedisBroker) -> None:
    """Stop ``broker`` without leaking a connection.

    FastStream 0.7 cancels each subscriber's tasks in ``stop()`` without waiting for
    them, then closes the connection pool: a task still inside a read (or a
    reconnect) can then leave its socket open. Stopping the subscribers, then
    cancelling their tasks and waiting for them, lets each one give its connection
    back while the pool still exists.
    """
    subscribers = list(broker.subscribers)
    tasks = [task for sub in subscribers for task in getattr(sub, "tasks", ())]
    # Stop reading first, and let handlers in flight finish (the broker's graceful_timeout).
    await asyncio.gather(*(sub.stop() for sub in subscribers), return_exceptions=True)
    for task in tasks:
        task.cancel()
    if tasks:  # bounded: redis-py can lose a cancellation that lands inside a call
        await asyncio.wait(tasks, timeout=CANCELLED_TASKS_WAIT_SECONDS)
    await broker.stop()
