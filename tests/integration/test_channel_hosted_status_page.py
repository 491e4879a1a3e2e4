"""Hosted status pages (Atlassian Statuspage, Cachet 2.x) against a local fake provider.

One Clarion incident becomes one provider incident: the first update creates
it, later ones update the same one (the mapping is kept in the real Valkey), and
resolving puts the incident's components back to operational.
"""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any, Final

import httpx
import pytest
from redis.asyncio import Redis

from services.dispatcher.channels.cachet import CACHET_PREFIX, CachetChannel
from services.dispatcher.channels.context import DriverContext, http_client
from services.dispatcher.channels.outcome import NotConfigured, Permanent, Retryable, Sent
from services.dispatcher.channels.status_page import (
    StatusPageChannel,
    build_status_page_channel,
)
from services.dispatcher.channels.statuspage_io import STATUSPAGE_IO_PREFIX, StatuspageIoChannel
from services.dispatcher.fanout import Delivery
from services.dispatcher.rendering.messages import RenderedMessage
from shared.clock import ManualClock
from shared.contracts import Incident, IncidentStatus, Severity
from shared.plan import ChannelName
from shared.settings import Settings
from tests.support.builders import T0, make_delivery, make_incident
from tests.support.fake_provider import FakeProvider
from tests.support.plans import make_plan

pytestmark = pytest.mark.integration

OUTBOUND: Final = Path(__file__).resolve().parent.parent / "fixtures" / "outbound"
PAGE: Final = "pg1"
INCIDENTS: Final = f"/v1/pages/{PAGE}/incidents"
API_KEY: Final = "sp-test-key"
CACHET_TOKEN: Final = "cachet-test-token"
COMPONENTS: Final = ("checkout=comp123", "search=comp456", "api=3")


def outbound(name: str) -> Any:
    return json.loads((OUTBOUND / name).read_text(encoding="utf-8"))


def incident_at(
    revision: int,
    status: IncidentStatus,
    severity: Severity = Severity.WARNING,
    components: tuple[str, ...] = ("checkout",),
) -> Incident:
    return make_incident(revision=revision, status=status, severity=severity, components=components)


def delivery_about(incident: Incident, delivery_id: str) -> Delivery:
    return make_delivery(
        delivery_id=delivery_id,
        channel=ChannelName.STATUS_PAGE,
        recipient="status-page",
        audience="customers",
        incident=incident,
        incident_id=incident.id,
    )


def message(
    status: IncidentStatus, text: str, title: str = "Elevated API error rates"
) -> RenderedMessage:
    return RenderedMessage(ChannelName.STATUS_PAGE, title=title, text=text, status=status.value)


INVESTIGATING_TEXT: Final = "We are investigating elevated error rates on the API."
RESOLVED_TEXT: Final = "This incident has been resolved."


@pytest.fixture
def provider() -> Iterator[FakeProvider]:
    with FakeProvider() as fake:
        yield fake


@pytest.fixture
async def http(make_settings: Callable[..., Settings]) -> AsyncIterator[httpx.AsyncClient]:
    async with http_client(make_settings()) as client:
        yield client


@pytest.fixture
def make_context(
    make_settings: Callable[..., Settings],
    http: httpx.AsyncClient,
    redis: Redis,
    provider: FakeProvider,
) -> Callable[..., DriverContext]:
    def factory(**overrides: Any) -> DriverContext:
        values: dict[str, Any] = {
            "status_page_provider": "statuspage",
            "statuspage_api_url": provider.url,
            "statuspage_api_key": API_KEY,
            "statuspage_page_id": PAGE,
            "statuspage_components": COMPONENTS,
            "cachet_url": provider.url,
            "cachet_api_token": CACHET_TOKEN,
        }
        settings = make_settings(**(values | overrides))
        return DriverContext(settings, make_plan(), http, redis, ManualClock(T0), {})

    return factory


# Choosing the driver


async def test_the_provider_setting_picks_the_driver(
    make_context: Callable[..., DriverContext],
) -> None:
    builtin = build_status_page_channel(make_context(status_page_provider="builtin"))
    statuspage = build_status_page_channel(make_context(status_page_provider="statuspage"))
    cachet = build_status_page_channel(make_context(status_page_provider="cachet"))

    assert isinstance(builtin, StatusPageChannel)
    assert isinstance(statuspage, StatuspageIoChannel)
    assert isinstance(cachet, CachetChannel)
    assert (builtin.idempotent, statuspage.idempotent, cachet.idempotent) == (True, False, False)


async def test_the_builtin_page_still_posts_to_its_store(
    make_context: Callable[..., DriverContext], redis: Redis, provider: FakeProvider
) -> None:
    channel = build_status_page_channel(make_context(status_page_provider="builtin"))
    incident = incident_at(1, IncidentStatus.INVESTIGATING)

    outcome = await channel.send(
        message(IncidentStatus.INVESTIGATING, INVESTIGATING_TEXT),
        "status-page",
        delivery_about(incident, "d-builtin"),
    )

    assert outcome == Sent("d-builtin")
    assert await redis.exists("clarion:statuspage:incident:inc-1") == 1
    assert provider.received == []


# Atlassian Statuspage


async def test_statuspage_creates_then_patches_then_resolves_components(
    make_context: Callable[..., DriverContext], provider: FakeProvider, redis: Redis
) -> None:
    provider.answer("POST", INCIDENTS, 201, json={"id": "p1abc", "status": "investigating"})
    provider.answer("PATCH", f"{INCIDENTS}/p1abc", 200, json={"id": "p1abc"})
    channel = StatuspageIoChannel(make_context())

    opened = await channel.send(
        message(IncidentStatus.INVESTIGATING, INVESTIGATING_TEXT),
        "status-page",
        delivery_about(incident_at(1, IncidentStatus.INVESTIGATING), "d-1"),
    )
    identified = await channel.send(
        message(IncidentStatus.IDENTIFIED, "We found the cause."),
        "status-page",
        delivery_about(incident_at(2, IncidentStatus.IDENTIFIED), "d-2"),
    )
    resolved = await channel.send(
        message(IncidentStatus.RESOLVED, RESOLVED_TEXT),
        "status-page",
        delivery_about(incident_at(3, IncidentStatus.RESOLVED), "d-3"),
    )

    assert (opened, identified, resolved) == (Sent("p1abc"), Sent("p1abc"), Sent("p1abc"))
    [create] = provider.requests_to("POST", INCIDENTS)
    assert create.headers["authorization"] == f"OAuth {API_KEY}"
    assert create.json() == outbound("statuspage_create_incident_request.json")
    first_patch, second_patch = provider.requests_to("PATCH", f"{INCIDENTS}/p1abc")
    assert first_patch.headers["authorization"] == f"OAuth {API_KEY}"
    assert first_patch.json()["incident"] == {
        "name": "Elevated API error rates",
        "status": "identified",
        "body": "We found the cause.",
        "impact_override": "minor",
        "component_ids": ["comp123"],
        "components": {"comp123": "degraded_performance"},
        "deliver_notifications": True,
    }
    documented = outbound("statuspage_update_incident_request.json")["incident"]
    sent = second_patch.json()["incident"]
    assert {key: sent[key] for key in documented} == documented
    assert sent["components"] == {"comp123": "operational"}
    stored = await redis.hgetall(f"{STATUSPAGE_IO_PREFIX}incident:inc-1")
    assert stored[b"id"] == b"p1abc"
    assert stored[b"revision"] == b"3"
    assert stored[b"status"] == b"resolved"
    assert await redis.pttl(f"{STATUSPAGE_IO_PREFIX}incident:inc-1") > 0


@pytest.mark.parametrize(
    ("severity", "component_status", "impact"),
    [
        (Severity.CRITICAL, "major_outage", "critical"),
        (Severity.ERROR, "partial_outage", "major"),
        (Severity.WARNING, "degraded_performance", "minor"),
        (Severity.INFO, "degraded_performance", "minor"),
    ],
)
async def test_statuspage_component_status_follows_severity(
    make_context: Callable[..., DriverContext],
    provider: FakeProvider,
    severity: Severity,
    component_status: str,
    impact: str,
) -> None:
    provider.answer("POST", INCIDENTS, 201, json={"id": "p2"})
    incident = incident_at(
        1, IncidentStatus.INVESTIGATING, severity, components=("Search", "checkout", "unmapped")
    )

    await StatuspageIoChannel(make_context()).send(
        message(IncidentStatus.INVESTIGATING, "x"), "status-page", delivery_about(incident, "d")
    )

    sent = provider.requests_to("POST", INCIDENTS)[0].json()["incident"]
    assert sent["component_ids"] == ["comp456", "comp123"]
    assert sent["components"] == {"comp456": component_status, "comp123": component_status}
    assert sent["impact_override"] == impact


async def test_statuspage_without_mapped_components_sends_none(
    make_context: Callable[..., DriverContext], provider: FakeProvider
) -> None:
    provider.answer("POST", INCIDENTS, 201, json={"id": "p3"})
    incident = incident_at(1, IncidentStatus.INVESTIGATING, components=())

    outcome = await StatuspageIoChannel(make_context()).send(
        message(IncidentStatus.INVESTIGATING, "x"), "status-page", delivery_about(incident, "d")
    )

    assert outcome == Sent("p3")
    sent = provider.requests_to("POST", INCIDENTS)[0].json()["incident"]
    assert "components" not in sent
    assert "component_ids" not in sent


async def test_a_late_retry_of_an_older_update_never_moves_the_page_backwards(
    make_context: Callable[..., DriverContext], provider: FakeProvider, redis: Redis
) -> None:
    provider.answer("POST", INCIDENTS, 201, json={"id": "p4"})
    provider.answer("PATCH", f"{INCIDENTS}/p4", 200, json={"id": "p4"})
    channel = StatuspageIoChannel(make_context())
    await channel.send(
        message(IncidentStatus.RESOLVED, RESOLVED_TEXT),
        "status-page",
        delivery_about(incident_at(5, IncidentStatus.RESOLVED), "d-5"),
    )

    late = await channel.send(
        message(IncidentStatus.INVESTIGATING, "Still looking."),
        "status-page",
        delivery_about(incident_at(2, IncidentStatus.INVESTIGATING), "d-2"),
    )

    assert late == Sent("p4")
    [patch] = provider.requests_to("PATCH", f"{INCIDENTS}/p4")
    assert patch.json() == {"incident": {"body": "Still looking.", "deliver_notifications": True}}
    stored = await redis.hgetall(f"{STATUSPAGE_IO_PREFIX}incident:inc-1")
    assert (stored[b"revision"], stored[b"status"]) == (b"5", b"resolved")


@pytest.mark.parametrize(
    ("overrides", "missing"),
    [
        ({"statuspage_api_key": None}, "CLARION_STATUSPAGE_API_KEY"),
        ({"statuspage_page_id": None}, "CLARION_STATUSPAGE_PAGE_ID"),
    ],
)
async def test_statuspage_without_credentials_is_not_configured(
    make_context: Callable[..., DriverContext],
    provider: FakeProvider,
    overrides: dict[str, Any],
    missing: str,
) -> None:
    outcome = await StatuspageIoChannel(make_context(**overrides)).send(
        message(IncidentStatus.INVESTIGATING, "x"),
        "status-page",
        delivery_about(incident_at(1, IncidentStatus.INVESTIGATING), "d"),
    )

    assert isinstance(outcome, NotConfigured)
    assert missing in outcome.reason
    assert API_KEY not in outcome.reason
    assert provider.received == []


@pytest.mark.parametrize(
    ("status", "options", "kind", "wait"),
    [
        (401, {"json": {"error": "Could not authenticate"}}, Permanent, None),
        (422, {"json": {"error": "name can't be blank"}}, Permanent, None),
        (420, {"headers": {"Retry-After": "60"}}, Retryable, timedelta(seconds=60)),
        (429, {"headers": {"Retry-After": "5"}}, Retryable, timedelta(seconds=5)),
        (500, {}, Retryable, None),
    ],
)
async def test_statuspage_errors_are_classified_and_nothing_is_mapped(
    make_context: Callable[..., DriverContext],
    provider: FakeProvider,
    redis: Redis,
    status: int,
    options: dict[str, Any],
    kind: type[Permanent] | type[Retryable],
    wait: timedelta | None,
) -> None:
    provider.answer_next("POST", INCIDENTS, status, **options)
    provider.answer("POST", INCIDENTS, 201, json={"id": "p5"})
    channel = StatuspageIoChannel(make_context())
    delivery = delivery_about(incident_at(1, IncidentStatus.INVESTIGATING), "d")

    failed = await channel.send(message(IncidentStatus.INVESTIGATING, "x"), "status-page", delivery)
    mapped_after_failure = await redis.exists(f"{STATUSPAGE_IO_PREFIX}incident:inc-1")
    retried = await channel.send(
        message(IncidentStatus.INVESTIGATING, "x"), "status-page", delivery
    )

    assert isinstance(failed, kind)
    assert API_KEY not in failed.error
    if isinstance(failed, Retryable):
        assert failed.retry_after == wait
    assert mapped_after_failure == 0
    assert retried == Sent("p5")
    assert len(provider.requests_to("POST", INCIDENTS)) == 2


async def test_a_deleted_provider_incident_is_forgotten_and_recreated(
    make_context: Callable[..., DriverContext], provider: FakeProvider
) -> None:
    provider.answer_next("POST", INCIDENTS, 201, json={"id": "old"})
    provider.answer("PATCH", f"{INCIDENTS}/old", 404, json={"error": "not found"})
    provider.answer("POST", INCIDENTS, 201, json={"id": "new"})
    channel = StatuspageIoChannel(make_context())
    first = delivery_about(incident_at(1, IncidentStatus.INVESTIGATING), "d-1")
    second = delivery_about(incident_at(2, IncidentStatus.IDENTIFIED), "d-2")

    created = await channel.send(message(IncidentStatus.INVESTIGATING, "a"), "status-page", first)
    gone = await channel.send(message(IncidentStatus.IDENTIFIED, "b"), "status-page", second)
    again = await channel.send(message(IncidentStatus.IDENTIFIED, "b"), "status-page", second)

    assert created == Sent("old")
    assert isinstance(gone, Retryable)
    assert "old" in gone.error
    assert again == Sent("new")


async def test_only_one_attempt_creates_the_provider_incident(
    make_context: Callable[..., DriverContext], provider: FakeProvider
) -> None:
    release = threading.Event()
    provider.answer("POST", INCIDENTS, 201, json={"id": "p6"}, hold=release)
    channel = StatuspageIoChannel(make_context())
    opened = delivery_about(incident_at(1, IncidentStatus.INVESTIGATING), "d-1")
    updated = delivery_about(incident_at(2, IncidentStatus.IDENTIFIED), "d-2")

    creating = asyncio.create_task(
        channel.send(message(IncidentStatus.INVESTIGATING, "a"), "status-page", opened)
    )
    await asyncio.to_thread(provider.wait_for_requests, 1)
    meanwhile = await channel.send(message(IncidentStatus.IDENTIFIED, "b"), "status-page", updated)
    release.set()
    created = await asyncio.wait_for(creating, 10)

    assert isinstance(meanwhile, Retryable)
    assert meanwhile.retry_after is not None
    assert created == Sent("p6")
    assert len(provider.requests_to("POST", INCIDENTS)) == 1


# Cachet (2.x API)


def cachet_incident(revision: int, status: IncidentStatus) -> Incident:
    return incident_at(revision, status, Severity.ERROR, components=("api",))


async def test_cachet_creates_then_adds_updates_and_resolves_the_component(
    make_context: Callable[..., DriverContext], provider: FakeProvider, redis: Redis
) -> None:
    provider.answer("POST", "/api/v1/incidents", 200, json={"data": {"id": 12, "status": 1}})
    provider.answer("POST", "/api/v1/incidents/12/updates", 200, json={"data": {"id": 40}})
    channel = CachetChannel(make_context(status_page_provider="cachet"))

    opened = await channel.send(
        message(IncidentStatus.INVESTIGATING, INVESTIGATING_TEXT),
        "status-page",
        delivery_about(cachet_incident(1, IncidentStatus.INVESTIGATING), "d-1"),
    )
    watching = await channel.send(
        message(IncidentStatus.MONITORING, "A fix is out; we are watching."),
        "status-page",
        delivery_about(cachet_incident(2, IncidentStatus.MONITORING), "d-2"),
    )
    fixed = await channel.send(
        message(IncidentStatus.RESOLVED, "The issue has been fixed."),
        "status-page",
        delivery_about(cachet_incident(3, IncidentStatus.RESOLVED), "d-3"),
    )

    assert (opened, watching, fixed) == (Sent("12"), Sent("12"), Sent("12"))
    [create] = provider.requests_to("POST", "/api/v1/incidents")
    assert create.headers["x-cachet-token"] == CACHET_TOKEN
    assert create.json() == outbound("cachet_v2_create_incident_request.json")
    first, second = provider.requests_to("POST", "/api/v1/incidents/12/updates")
    assert first.headers["x-cachet-token"] == CACHET_TOKEN
    assert first.json() == {
        "status": 3,
        "message": "A fix is out; we are watching.",
        "component_id": 3,
        "component_status": 3,
    }
    documented = outbound("cachet_v3_create_incident_update_request.json")  # same fields in 2.x
    assert {key: second.json()[key] for key in documented} == documented
    assert second.json()["component_status"] == 1
    stored = await redis.hgetall(f"{CACHET_PREFIX}incident:inc-1")
    assert (stored[b"id"], stored[b"revision"]) == (b"12", b"3")


@pytest.mark.parametrize(
    ("overrides", "missing"),
    [
        ({"cachet_url": None}, "CLARION_CACHET_URL"),
        ({"cachet_api_token": None}, "CLARION_CACHET_API_TOKEN"),
    ],
)
async def test_cachet_without_credentials_is_not_configured(
    make_context: Callable[..., DriverContext],
    provider: FakeProvider,
    overrides: dict[str, Any],
    missing: str,
) -> None:
    outcome = await CachetChannel(make_context(**overrides)).send(
        message(IncidentStatus.INVESTIGATING, "x"),
        "status-page",
        delivery_about(cachet_incident(1, IncidentStatus.INVESTIGATING), "d"),
    )

    assert isinstance(outcome, NotConfigured)
    assert missing in outcome.reason
    assert provider.received == []


@pytest.mark.parametrize(
    ("status", "options", "kind", "wait"),
    [
        (401, {"json": {"errors": [{"status": 401, "title": "Unauthorized"}]}}, Permanent, None),
        (400, {"json": {"errors": [{"status": 400}]}}, Permanent, None),
        (429, {"headers": {"Retry-After": "30"}}, Retryable, timedelta(seconds=30)),
        (503, {}, Retryable, None),
    ],
)
async def test_cachet_errors_are_classified(
    make_context: Callable[..., DriverContext],
    provider: FakeProvider,
    status: int,
    options: dict[str, Any],
    kind: type[Permanent] | type[Retryable],
    wait: timedelta | None,
) -> None:
    provider.answer("POST", "/api/v1/incidents", status, **options)

    outcome = await CachetChannel(make_context()).send(
        message(IncidentStatus.INVESTIGATING, "x"),
        "status-page",
        delivery_about(cachet_incident(1, IncidentStatus.INVESTIGATING), "d"),
    )

    assert isinstance(outcome, kind)
    assert CACHET_TOKEN not in outcome.error
    if isinstance(outcome, Retryable):
        assert outcome.retry_after == wait


async def test_cachet_late_retry_keeps_the_status_cachet_shows(
    make_context: Callable[..., DriverContext], provider: FakeProvider
) -> None:
    provider.answer("POST", "/api/v1/incidents", 200, json={"data": {"id": 7}})
    provider.answer("POST", "/api/v1/incidents/7/updates", 200, json={"data": {"id": 1}})
    channel = CachetChannel(make_context())
    await channel.send(
        message(IncidentStatus.RESOLVED, "Fixed."),
        "status-page",
        delivery_about(cachet_incident(4, IncidentStatus.RESOLVED), "d-4"),
    )

    late = await channel.send(
        message(IncidentStatus.IDENTIFIED, "Cause found."),
        "status-page",
        delivery_about(cachet_incident(2, IncidentStatus.IDENTIFIED), "d-2"),
    )

    assert late == Sent("7")
    [update] = provider.requests_to("POST", "/api/v1/incidents/7/updates")
    assert update.json() == {"status": 4, "message": "Cause found."}
