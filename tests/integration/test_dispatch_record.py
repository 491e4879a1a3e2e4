"""What an event's deliveries send from: the incident and one rendering per
(audience, channel), kept under the event in Redis."""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta

import pytest
from redis.asyncio import Redis

from services.dispatcher.dispatch_record import DispatchRecords, RenderProblem
from services.dispatcher.rendering.messages import RenderedMessage, Renderer
from services.dispatcher.rendering.values import RenderContext
from shared.plan import ChannelName
from shared.settings import Settings
from shared.streams import dispatch_record_key
from tests.support.builders import T0, make_incident, make_incident_opened
from tests.support.plans import make_plan

pytestmark = pytest.mark.integration

RETENTION = 3600
INCIDENT = make_incident(service="checkout")
SLACK = RenderedMessage(
    channel="slack",
    title="[SEV1] Investigating: Checkout is failing",
    text="Checkout is failing since 14:30 UTC.",
    html=None,
    payload={"blocks": [{"type": "header", "text": {"type": "plain_text", "text": "SEV1"}}]},
    shortened=True,
    notes=("cut the alert list to 10",),
)
EMAIL = RenderedMessage(
    channel="email",
    title="Investigating: A major outage",
    text="We are sorry.\nNext update by 15:00 UTC.",
    html="<p>We are sorry.</p>",
)


@pytest.fixture
def records(redis: Redis) -> DispatchRecords:
    return DispatchRecords(redis, RETENTION)


async def test_each_rendering_comes_back_as_it_was_saved(records: DispatchRecords) -> None:
    await records.save(
        "ev-1",
        INCIDENT,
        {("engineering", "slack"): SLACK, ("customers", "email"): EMAIL},
    )

    assert await records.load("ev-1", "engineering", "slack") == (INCIDENT, SLACK)
    assert await records.load("ev-1", "customers", "email") == (INCIDENT, EMAIL)


async def test_a_real_rendering_round_trips(
    records: DispatchRecords, make_settings: Callable[..., Settings]
) -> None:
    plan = make_plan(status_page_url="https://status.example.com")
    event = make_incident_opened(
        INCIDENT, event_id="ev-1", occurred_at=T0, next_update_at=T0 + timedelta(minutes=30)
    )
    renderer = Renderer(RenderContext.of(plan, make_settings()))
    email = renderer.render(event, INCIDENT, "customers", ChannelName.EMAIL)
    page = renderer.render(event, INCIDENT, "customers", ChannelName.STATUS_PAGE)

    await records.save(
        "ev-1", INCIDENT, {("customers", "email"): email, ("customers", "status_page"): page}
    )

    assert await records.load("ev-1", "customers", "email") == (INCIDENT, email)
    assert await records.load("ev-1", "customers", "status_page") == (INCIDENT, page)


async def test_a_render_problem_comes_back_as_a_problem(records: DispatchRecords) -> None:
    problem = RenderProblem("render failed: 'no_such_value' is undefined")

    await records.save("ev-1", INCIDENT, {("customers", "email"): problem})

    loaded = await records.load("ev-1", "customers", "email")
    assert loaded == (INCIDENT, problem)


async def test_a_message_that_reads_like_a_problem_is_still_a_message(
    records: DispatchRecords,
) -> None:
    odd = RenderedMessage(channel="sms", title="", text="problem: the database is down")

    await records.save("ev-1", INCIDENT, {("customers", "sms"): odd})

    assert await records.load("ev-1", "customers", "sms") == (INCIDENT, odd)


async def test_nothing_comes_back_for_what_was_never_saved(records: DispatchRecords) -> None:
    await records.save("ev-1", INCIDENT, {("customers", "email"): EMAIL})

    assert await records.load("ev-1", "customers", "sms") is None
    assert await records.load("ev-1", "engineering", "email") is None
    assert await records.load("ev-2", "customers", "email") is None


async def test_renderings_saved_later_for_the_same_event_join_the_earlier_ones(
    records: DispatchRecords,
) -> None:
    """An approval renders the held messages after the event's first fan-out."""
    await records.save("ev-1", INCIDENT, {("engineering", "slack"): SLACK})
    later = INCIDENT.model_copy(update={"revision": 2})

    await records.save("ev-1", later, {("customers", "email"): EMAIL})

    assert await records.load("ev-1", "engineering", "slack") == (later, SLACK)
    assert await records.load("ev-1", "customers", "email") == (later, EMAIL)


async def test_the_record_is_kept_for_the_retention_under_the_event(
    redis: Redis, records: DispatchRecords
) -> None:
    await records.save("ev-1", INCIDENT, {("customers", "email"): EMAIL})

    keys = [key.decode() async for key in redis.scan_iter("*")]
    assert keys == [dispatch_record_key("ev-1")]
    assert 0 < await redis.ttl(dispatch_record_key("ev-1")) <= RETENTION

    await redis.delete(dispatch_record_key("ev-1"))  # the retention ran out
    assert await records.load("ev-1", "customers", "email") is None
