"""Reading Clarion's streams in tests, whichever way an entry was written."""

from __future__ import annotations

import asyncio
import json
from typing import Any, cast

from faststream.redis.parser.binary import BinaryMessageFormatV1
from redis.asyncio import Redis

from shared.contracts import INCIDENT_EVENT, IncidentEvent, UpdateDue
from shared.streams import INCIDENT_EVENTS, UPDATES_DUE

StreamEntries = list[tuple[bytes, dict[bytes, bytes]]]


def decode_entry(fields: dict[bytes, bytes]) -> bytes:
    """The message body of a stream entry: FastStream's envelope or plain JSON."""
    data = fields[b"__data__"]
    body, _headers = BinaryMessageFormatV1.parse(data)
    return body


async def stream_bodies(redis: Redis, stream: str) -> list[bytes]:
    entries = cast(StreamEntries, await redis.xrange(stream))
    return [decode_entry(fields) for _, fields in entries]


async def stream_json(redis: Redis, stream: str) -> list[dict[str, Any]]:
    return [cast(dict[str, Any], json.loads(body)) for body in await stream_bodies(redis, stream)]


async def incident_events(redis: Redis) -> list[IncidentEvent]:
    """Every event on the incident-events stream, oldest first, decoded as a consumer would."""
    return [INCIDENT_EVENT.validate_json(b) for b in await stream_bodies(redis, INCIDENT_EVENTS)]


async def updates_due(redis: Redis) -> list[UpdateDue]:
    """Every UpdateDue the scheduler published, oldest first."""
    return [UpdateDue.model_validate_json(b) for b in await stream_bodies(redis, UPDATES_DUE)]


async def wait_for_entries(redis: Redis, stream: str, count: int, *, within: float = 15.0) -> None:
    """Block on ``stream`` itself (XREAD BLOCK) until it holds ``count`` entries.

    Fails the test when ``within`` seconds pass first.
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    last_id = b"0"
    seen = 0
    while seen < count:
        remaining_ms = int((deadline - loop.time()) * 1000)
        if remaining_ms <= 0:  # BLOCK 0 would wait for ever
            raise AssertionError(f"only {seen} of {count} entries on {stream} in {within}s")
        reply = cast(
            list[tuple[bytes, StreamEntries]] | None,
            await redis.xread({stream: last_id}, count=100, block=remaining_ms),
        )
        for _stream, entries in reply or []:
            seen += len(entries)
            last_id = entries[-1][0]
