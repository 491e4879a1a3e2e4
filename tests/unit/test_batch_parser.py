"""A guarded batch's FastStream message is made without decoding its entries: the
consumer decodes each entry from the raw read itself."""

from __future__ import annotations

from typing import Any

from faststream.message import StreamMessage

from shared.consumer import parse_batch_unread


async def test_the_batch_message_keeps_the_whole_read_and_decodes_no_entry() -> None:
    given: list[dict[str, Any]] = []

    async def default(raw: dict[str, Any]) -> StreamMessage[Any]:
        given.append(raw)
        return StreamMessage(raw_message=raw, body=b"[]")

    read = {
        "type": "bstream",
        "channel": "clarion:deliveries:email",
        "data": [{b"__data__": b"{not json"}, {b"__data__": b'{"n": 1}'}],
        "message_ids": [b"1-0", b"2-0"],
    }
    message = await parse_batch_unread(read, default)

    assert given == [{**read, "data": []}]  # FastStream saw no entry to decode
    assert message.raw_message is read
