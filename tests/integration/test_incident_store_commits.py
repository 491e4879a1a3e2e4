"""How the incident store commits: what it saw may be stale, the commit is what counts.

Each store remembers what its last change left of a group and takes a group it
has not seen to have no open incident. These tests change groups behind a store's
back (another instance, the operator's path, Redis itself) and check that what
it stores and answers is what it would be had it read Redis first.
"""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime, timedelta
from typing import cast

import pytest
from faststream.redis.parser.binary import BinaryMessageFormatV1
from redis.asyncio import Redis

from services.ingest.incident_actions import resolve
from shared.clock import ManualClock
from shared.contracts import IncidentStatus
from shared.incidents import load_incident
from shared.redis_values import DATA_FIELD
from shared.streams import INCIDENT_EVENTS, incident_key, open_incident_key
from tests.support.incident_stores import (
    FIRING,
    RESOLVED,
    StoreFactory,
    batch,
)
from tests.support.streams import StreamEntries, incident_events

pytestmark = pytest.mark.integration

T0 = datetime(2026, 11, 23, 14, 31, tzinfo=UTC)


async def test_a_store_that_missed_a_resolution_opens_a_new_incident(
    redis: Redis, make_store: StoreFactory
) -> None:
    clock = ManualClock(T0)
    first, second = await make_store(clock), await make_store(clock)
    group_key, firing = batch(FIRING)
    opened = await first.apply(group_key, firing)
    resolved = await second.apply(group_key, batch(RESOLVED)[1])  # first does not see it

    clock.advance(timedelta(hours=1))
    again = await first.apply(group_key, firing)

    assert resolved.events == ["incident.resolved"]
    assert again.events == ["incident.opened"]
    assert again.incident_id not in {None, opened.incident_id}
    assert await redis.get(open_incident_key(group_key)) == str(again.incident_id).encode()
    types = [e.type for e in await incident_events(redis)]
    assert types == ["incident.opened", "incident.resolved", "incident.opened"]


async def test_a_resend_to_a_store_that_missed_a_change_is_answered_from_redis(
    redis: Redis, make_store: StoreFactory
) -> None:
    clock = ManualClock(T0)
    first, second = await make_store(clock), await make_store(clock)
    group_key, firing = batch(FIRING)
    opened = await first.apply(group_key, firing)
    await second.apply(group_key, batch(RESOLVED)[1])

    repeat = await first.apply(group_key, batch(RESOLVED)[1])  # first still thinks it open

    # As with a read first: the group has no open incident, so the resend touches none.
    assert (repeat.incident_id, repeat.events, repeat.duplicate) == (None, [], False)
    stored = await load_incident(redis, str(opened.incident_id))
    assert stored is not None
    assert stored.status is IncidentStatus.RESOLVED
    assert len(await incident_events(redis)) == 2


async def test_an_operator_resolution_is_seen_by_the_next_alert(
    redis: Redis, make_store: StoreFactory
) -> None:
    clock = ManualClock(T0)
    store = await make_store(clock)
    group_key, firing = batch(FIRING)
    opened = await store.apply(group_key, firing)
    assert opened.incident_id is not None

    clock.advance(timedelta(minutes=5))
    await store.change(opened.incident_id, lambda current, now: resolve(current, now, "fixed"))
    again = await store.apply(group_key, firing)

    assert again.events == ["incident.opened"]
    assert again.incident_id != opened.incident_id


async def test_a_group_whose_pointer_names_no_incident_opens_one(
    redis: Redis, make_store: StoreFactory
) -> None:
    store = await make_store(ManualClock(T0))
    group_key, firing = batch(FIRING)
    await redis.set(open_incident_key(group_key), "gone")

    opened = await store.apply(group_key, firing)

    assert opened.events == ["incident.opened"]
    assert opened.incident_id not in {None, "gone"}
    assert await redis.get(open_incident_key(group_key)) == str(opened.incident_id).encode()


async def test_an_incident_changed_in_redis_is_changed_again_from_there(
    redis: Redis, make_store: StoreFactory
) -> None:
    """Any change to the stored incident (here its title, by hand) makes the commit recompute."""
    store = await make_store(ManualClock(T0))
    group_key, firing = batch(FIRING)
    opened = await store.apply(group_key, firing)
    stored = await load_incident(redis, str(opened.incident_id))
    assert stored is not None
    edited = stored.model_copy(update={"title": "Edited by hand", "headline_by_operator": True})
    await redis.set(incident_key(stored.id), edited.model_dump_json())

    _, resolved_alerts = batch(RESOLVED)
    resolved = await store.apply(group_key, resolved_alerts)

    assert resolved.events == ["incident.resolved"]
    after = await load_incident(redis, stored.id)
    assert after is not None
    assert after.title == "Edited by hand"  # computed from what Redis held, not from memory
    assert after.status is IncidentStatus.RESOLVED


async def test_a_redis_that_forgot_the_script_is_given_it_again(
    redis: Redis, make_store: StoreFactory
) -> None:
    store = await make_store(ManualClock(T0))
    group_key, firing = batch(FIRING)
    await store.apply(group_key, firing)
    await redis.script_flush()

    resolved = await store.apply(group_key, batch(RESOLVED)[1])

    assert resolved.events == ["incident.resolved"]


async def test_events_are_in_faststreams_envelope_correlated_by_their_event_ids(
    redis: Redis, make_store: StoreFactory
) -> None:
    clock = ManualClock(T0)
    store = await make_store(clock)
    group_key, firing = batch(FIRING)
    await store.apply(group_key, firing)
    await store.apply(group_key, batch(RESOLVED)[1])

    entries = cast(StreamEntries, await redis.xrange(INCIDENT_EVENTS))
    envelopes = [BinaryMessageFormatV1.parse(fields[DATA_FIELD.encode()]) for _, fields in entries]

    assert [headers["content-type"] for _, headers in envelopes] == ["application/json"] * 2
    ids = [headers["correlation_id"] for _, headers in envelopes]
    event_ids = [json.loads(body)["event_id"] for body, _ in envelopes]
    assert ids == event_ids  # each envelope is correlated with its own event
    assert len(set(ids)) == 2


async def test_concurrent_changes_to_many_groups_each_land_once(
    redis: Redis, make_store: StoreFactory
) -> None:
    """Requests in flight together share round trips; each still gets its own answer."""
    store = await make_store(ManualClock(T0))
    _, firing = batch(FIRING)
    groups = [f"test:group-{n}" for n in range(40)]
    regrouped = {key: [a.model_copy(update={"group_key": key}) for a in firing] for key in groups}

    results = await asyncio.gather(*(store.apply(key, regrouped[key]) for key in groups))

    assert [r.events for r in results] == [["incident.opened"]] * len(groups)
    assert len({r.incident_id for r in results}) == len(groups)
    for key, result in zip(groups, results, strict=True):
        assert await redis.get(open_incident_key(key)) == str(result.incident_id).encode()
    assert len(await incident_events(redis)) == len(groups)
