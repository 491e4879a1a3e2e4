"""The dispatcher's reader of incident events fans out different incidents side by
side and one incident's events in the order read, against a real Valkey."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from redis.asyncio import Redis

from services.dispatcher.handlers import INCIDENTS_AT_ONCE, build_consumers
from shared.consumer import StreamEntry
from shared.contracts import IncidentEvent
from shared.settings import Settings
from shared.streams import DISPATCHER_GROUP, INCIDENT_EVENTS
from tests.support.builders import make_incident, make_incident_opened, make_incident_updated

pytestmark = pytest.mark.integration


class HeldDispatcher:
    """Records when each event's fan-out starts and ends; ``ev-a1`` waits for a go."""

    def __init__(self) -> None:
        self.log: list[str] = []
        self.go = asyncio.Event()
        self.b_done = asyncio.Event()

    async def handle_incident_event(self, event: IncidentEvent, attempt: int) -> None:
        self.log.append(f"start {event.event_id}")
        if event.event_id == "ev-a1":
            await self.go.wait()
        self.log.append(f"end {event.event_id}")
        if event.event_id == "ev-b1":
            self.b_done.set()

    def __getattr__(self, name: str) -> Any:  # the other handlers are not used here
        raise AttributeError(name)


async def test_one_incident_waits_for_its_earlier_event_and_another_goes_meanwhile(
    redis: Redis,
) -> None:
    a, b = make_incident(id="inc-a"), make_incident(id="inc-b")
    events = [
        make_incident_opened(a, event_id="ev-a1"),
        make_incident_updated(a, event_id="ev-a2"),
        make_incident_opened(b, event_id="ev-b1"),
    ]
    entries = [
        (
            event.model_dump_json().encode(),
            StreamEntry(INCIDENT_EVENTS, DISPATCHER_GROUP, f"{n}-1", 1),
        )
        for n, event in enumerate(events, start=1)
    ]
    dispatcher = HeldDispatcher()
    reader, _, _ = build_consumers(redis, Settings(_env_file=None), dispatcher)  # type: ignore[arg-type]
    assert reader.max_workers == INCIDENTS_AT_ONCE

    await reader.process_batch(entries)
    await asyncio.wait_for(dispatcher.b_done.wait(), 5)
    # inc-b's event went while inc-a's first was held; inc-a's second did not start.
    assert dispatcher.log == ["start ev-a1", "start ev-b1", "end ev-b1"]

    dispatcher.go.set()
    await reader.drain(grace=5)
    assert dispatcher.log[3:] == ["end ev-a1", "start ev-a2", "end ev-a2"]
