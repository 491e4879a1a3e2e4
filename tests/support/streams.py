"""Reading Clarion's streams in tests, whichever way an entry was written."""

from __future__ import annotations

import json
from typing import Any, cast

from faststream.redis.parser.binary import BinaryMessageFormatV1
from redis.asyncio import Redis


def decode_entry(fields: dict[bytes, bytes]) -> bytes:
    """The message body of a stream entry: FastStream's envelope or plain JSON."""
    data = fields[b"__data__"]
    body, _headers = BinaryMessageFormatV1.parse(data)
    return body


async def stream_bodies(redis: Redis, stream: str) -> list[bytes]:
    entries = cast(list[tuple[bytes, dict[bytes, bytes]]], await redis.xrange(stream))
    return [decode_entry(fields) for _, fields in entries]


async def stream_json(redis: Redis, stream: str) -> list[dict[str, Any]]:
    return [cast(dict[str, Any], json.loads(body)) for body in await stream_bodies(redis, stream)]
