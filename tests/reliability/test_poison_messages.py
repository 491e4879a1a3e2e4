"""Scenario: a poison message on any consumed stream never blocks it.

Ingest, the dispatcher and the scheduler run in process on one Valkey, consuming as in
production. Every stream some group consumes (``shared.streams.CONSUMER_GROUPS``) gets
poison first: entries that cannot be decoded (dead-lettered at once), and entries that
decode but cannot be processed because the state they name is corrupt (retried, then
dead-lettered after ``CLARION_MAX_DELIVERIES``). Then good messages follow on every
stream: a real webhook (its incident event fans out a job on all ten delivery streams),
an update due, a resolution due, an approval request and grant. Every good message must
be processed, and every poison must end in the dead letters (or, where a group has
nothing to do with it, be acknowledged); nothing may stay pending.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Final

import httpx
import pytest
import structlog
from faststream.redis import RedisBroker
from pydantic import BaseModel
from redis.asyncio import Redis

from services.dispatcher.app import create_app as create_dispatcher
from services.dispatcher.handlers import build_consumers
from services.ingest.app import create_app as create_ingest
from services.scheduler.health import create_app as create_scheduler
from shared.clock import ManualClock
from shared.consumer import GuardedConsumer, StreamEntry
from shared.contracts import (
    ApprovalGranted,
    ApprovalRequested,
    DeliveryJob,
    DeliveryStatus,
    ResolutionDue,
    UpdateDue,
)
from shared.plan import Plan
from shared.redis_values import DATA_FIELD, as_text
from shared.settings import Settings
from shared.streams import (
    APPROVAL_ITEMS,
    APPROVALS,
    CONSUMER_GROUPS,
    DEAD_LETTERS,
    DELIVERY_CHANNELS,
    DELIVERY_LOG,
    DISPATCHER_GROUP,
    INCIDENT_EVENTS,
    PENDING_APPROVALS,
    RESOLUTIONS_DUE,
    SCHEDULE_DUE,
    SCHEDULER_GROUP,
    UPDATES_DUE,
    delivery_stream,
    incident_key,
)
from tests.conftest import load_fixture
from tests.reliability.hostile import Tally
from tests.reliability.scale import report
from tests.support.builders import make_incident, make_incident_opened
from tests.support.dispatching import build_pipeline
from tests.support.plans import make_plan
from tests.support.streams import stream_json
from tests.support.waiting import eventually

pytestmark = pytest.mark.integration

MAX_DELIVERIES: Final = 3
SETTLE_SECONDS: Final = 15.0  # a generous bound on a busy 2-core machine; usually ~3 s
CORRUPT: Final = "inc-corrupt"  # an incident whose stored record is not JSON
HANDLED: Final = "handled"
UNDECODABLE: Final = "dead: undecodable"
GAVE_UP: Final = "dead: max_deliveries_exceeded"

# What the last consumer of each kind makes of a poison, per group.
Endings = Mapping[str, frozenset[str]]


def every_group(stream: str, *endings: str) -> Endings:
    return {group: frozenset(endings) for group in CONSUMER_GROUPS[stream]}


def every_channel_plan() -> Plan:
    """Customers and engineering on all ten channels; no credentials: the outbox."""
    return make_plan(
        audiences={
            "customers": {
                "public": True,
                "status_page": True,
                "email": ["alice@example.com"],
                "sms": ["+15555550100"],
                "mastodon": [
                    {"instance": "https://mastodon.example", "access_token_env": "P_MASTODON"}
                ],
                "bluesky": [{"handle": "status.example.com", "app_password_env": "P_BLUESKY"}],
                "x": [{"account": "examplestatus", "access_token_env": "P_X"}],
            },
            "engineering": {
                "email": ["eng@example.com"],
                "slack": [{"name": "#incidents", "url_env": "P_SLACK"}],
                "discord": [{"name": "ops", "url_env": "P_DISCORD"}],
                "chat_webhook": [{"name": "bot", "url_env": "P_CHAT"}],
                "webhook": [{"name": "partner", "url": "http://127.0.0.1:9/hook"}],
            },
        },
        routes=[{"name": "everyone", "audiences": ["customers", "engineering"]}],
    )


@dataclass(frozen=True)
class Poison:
    name: str
    stream: str
    body: bytes
    endings: Endings


def undecodable() -> list[Poison]:
    """Bodies no consumer can decode, spread over every consumed stream."""
    bodies = (
        b"\xff\xfe not JSON",
        b"[1, 2, 3]",
        b'{"schema_version": 1, "type": "incident.opened"}',
        b'{"type": "delivery.job", "delivery_id": 7}',
        b"",
    )
    return [
        Poison(
            f"undecodable #{n}", stream, bodies[n % len(bodies)], every_group(stream, UNDECODABLE)
        )
        for n, stream in enumerate(CONSUMER_GROUPS)
    ]


def body(model: BaseModel) -> bytes:
    return model.model_dump_json().encode()


def naming_corrupt_state(now: datetime) -> list[Poison]:
    """Messages that decode, but whose incident (or held approval, or timer) is corrupt."""
    corrupt = make_incident(id=CORRUPT, opened_at=now)
    jobs = [
        Poison(
            f"a job about a corrupt incident on {channel}",
            delivery_stream(channel),
            body(
                DeliveryJob(
                    delivery_id=f"d-corrupt-{channel}",
                    event_id="due-corrupt",
                    event_type="update.due",  # checked against the stored incident at send
                    incident_id=CORRUPT,
                    channel=channel,
                    recipient="anyone",
                    audience="customers",
                    occurred_at=now,
                    last_attempt=6,
                )
            ),
            every_group(delivery_stream(channel), GAVE_UP),
        )
        for channel in DELIVERY_CHANNELS
    ]
    return [
        *jobs,
        Poison(
            "an event about a corrupt incident",
            INCIDENT_EVENTS,
            body(make_incident_opened(corrupt, event_id="ev-corrupt", occurred_at=now)),
            # The scheduler reads the stored incident; the dispatcher uses the event's copy.
            {SCHEDULER_GROUP: frozenset({GAVE_UP}), DISPATCHER_GROUP: frozenset({HANDLED})},
        ),
        Poison(
            "a resolution due of a corrupt incident",
            RESOLUTIONS_DUE,
            body(
                ResolutionDue(
                    event_id="res-corrupt",
                    incident_id=CORRUPT,
                    monitoring_since=now,
                    due_at=now,
                    emitted_at=now,
                )
            ),
            every_group(RESOLUTIONS_DUE, GAVE_UP),
        ),
        Poison(
            "an approval request whose timer is corrupt",
            APPROVALS,
            body(
                ApprovalRequested(
                    event_id="ev-corrupt-timer",
                    incident_id=CORRUPT,
                    requested_at=now,
                    auto_publish_at=now + timedelta(minutes=10),
                )
            ),
            {SCHEDULER_GROUP: frozenset({GAVE_UP}), DISPATCHER_GROUP: frozenset({HANDLED})},
        ),
        Poison(
            "an approval grant whose held messages are corrupt",
            APPROVALS,
            body(
                ApprovalGranted(
                    event_id="ev-corrupt-held",
                    incident_id=CORRUPT,
                    granted_at=now,
                    by="alice",
                )
            ),
            {SCHEDULER_GROUP: frozenset({HANDLED}), DISPATCHER_GROUP: frozenset({GAVE_UP})},
        ),
    ]


async def corrupt_state(redis: Redis) -> None:
    await redis.set(incident_key(CORRUPT), b"{not an incident")
    await redis.hset(APPROVAL_ITEMS, "ev-corrupt-timer", b"{not a timer")
    await redis.hset(PENDING_APPROVALS, "ev-corrupt-held", b"{not held messages")


@asynccontextmanager
async def clarion(settings: Settings, plan: Plan) -> AsyncIterator[httpx.AsyncClient]:
    """Ingest, dispatcher and scheduler consuming in this process; a client for ingest."""
    ingest = create_ingest(settings, plan=plan)
    dispatcher = create_dispatcher(settings, plan=plan, environ={})
    scheduler = create_scheduler(settings, plan=plan)
    async with AsyncExitStack() as stack:
        for app in (dispatcher, scheduler, ingest):
            await stack.enter_async_context(app.router.lifespan_context(app))
        transport = httpx.ASGITransport(app=ingest)
        yield await stack.enter_async_context(
            httpx.AsyncClient(transport=transport, base_url="http://ingest")
        )


def entry_order(entry_id: str) -> tuple[int, int]:
    millis, _, seq = entry_id.partition("-")
    return int(millis), int(seq or 0)


@dataclass
class Streams:
    """Where each entry stands for each group that reads its stream."""

    redis: Redis

    async def ending(self, stream: str, group: str, entry_id: str, dead: list[Any]) -> str:
        for letter in dead:
            if (letter["stream"], letter["group"], letter["entry_id"]) == (stream, group, entry_id):
                return f"dead: {letter['reason']}"
        pending = await self.redis.xpending_range(
            stream, group, min=entry_id, max=entry_id, count=1
        )
        if pending:
            return "pending"
        groups = {as_text(g["name"]): g for g in await self.redis.xinfo_groups(stream)}
        last = as_text(groups[group]["last-delivered-id"])
        return HANDLED if entry_order(last) >= entry_order(entry_id) else "unread"


async def publish_good(broker: RedisBroker, incident_id: str, now: datetime) -> None:
    await broker.publish(
        UpdateDue(
            event_id="due-good",
            incident_id=incident_id,
            sequence=1,
            due_at=now,
            emitted_at=now,
            next_update_at=now + timedelta(minutes=30),
        ),
        stream=UPDATES_DUE,
    )
    await broker.publish(
        ResolutionDue(
            event_id="res-good",
            incident_id=incident_id,
            monitoring_since=now,
            due_at=now,
            emitted_at=now,
        ),
        stream=RESOLUTIONS_DUE,
    )
    await broker.publish(
        ApprovalRequested(
            event_id="appr-good",
            incident_id=incident_id,
            requested_at=now,
            auto_publish_at=now + timedelta(minutes=10),
        ),
        stream=APPROVALS,
    )
    await broker.publish(
        ApprovalGranted(event_id="grant-good", incident_id=incident_id, granted_at=now, by="bob"),
        stream=APPROVALS,
    )


FINAL: Final = frozenset(
    {DeliveryStatus.SENT, DeliveryStatus.FAILED, DeliveryStatus.DEAD, DeliveryStatus.SUPPRESSED}
)


async def good_work_done(redis: Redis, incident_id: str) -> set[str]:
    """What of the good messages' work is visible: channels delivered, timers armed."""
    done: set[str] = set()
    for record in await stream_json(redis, DELIVERY_LOG):
        if record["incident_id"] == incident_id and record["status"] in FINAL:
            done.add(
                f"{'update' if record['event_id'] == 'due-good' else 'opened'}:{record['channel']}"
            )
    if await redis.zscore(SCHEDULE_DUE, incident_id) is not None:
        done.add("scheduled")
    if await redis.hexists(APPROVAL_ITEMS, "appr-good"):
        done.add("approval timer")
    return done


def expected_work(plan: Plan) -> set[str]:
    channels = {c.value for audience in plan.audiences.values() for c in audience.channels}
    return {
        *(f"opened:{c}" for c in channels),
        *(f"update:{c}" for c in channels),
        "scheduled",
        "approval timer",
    }


@dataclass
class Run:
    """Where every poison ended, the good work done, and what is still pending."""

    placed: list[tuple[Poison, str]]
    endings: dict[tuple[str, str], str]
    dead: list[dict[str, Any]]
    work: set[str]
    backlog: dict[tuple[str, str], int]


async def settle(
    redis: Redis, placed: list[tuple[Poison, str]], incident_id: str, wanted: set[str]
) -> Run:
    """Poll Redis until every poison has ended and the good work is done (or time is up)."""
    streams = Streams(redis)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + SETTLE_SECONDS
    while True:
        dead = await stream_json(redis, DEAD_LETTERS)
        endings = {
            (poison.name, group): await streams.ending(poison.stream, group, entry_id, dead)
            for poison, entry_id in placed
            for group in poison.endings
        }
        work = await good_work_done(redis, incident_id)
        settled = not {"pending", "unread"} & set(endings.values())
        if (settled and work >= wanted) or loop.time() > deadline:
            break
        await asyncio.sleep(0.1)  # bounded poll of Redis state: noqa: sleep-ok
    backlog = {
        (stream, group): int((await redis.xpending(stream, group))["pending"])
        for stream, groups in CONSUMER_GROUPS.items()
        for group in groups
    }
    return Run(placed, endings, dead, work, backlog)


async def test_poison_on_every_stream_is_dead_lettered_and_never_blocks_it(
    redis: Redis, redis_url: str, make_settings: Callable[..., Settings]
) -> None:
    now = datetime.now(UTC)
    settings = make_settings(
        max_deliveries=MAX_DELIVERIES,
        reclaim_idle_ms=500,
        polling_interval_ms=50,
        rate_limits=(),  # one SMS a minute per number would hold the update back
    )
    plan = every_channel_plan()
    await corrupt_state(redis)

    # Logs are kept as data, not rendered: the handler failures' tracebacks would
    # otherwise take the event loop's time in this one process.
    with structlog.testing.capture_logs() as logs:
        async with clarion(settings, plan) as ingest, RedisBroker(redis_url) as broker:
            placed = [
                (poison, as_text(await redis.xadd(poison.stream, {DATA_FIELD: poison.body})))
                for poison in [*undecodable(), *naming_corrupt_state(now)]
            ]
            accepted = await ingest.post(
                "/v1/alerts/alertmanager",
                json=load_fixture("alertmanager_webhook_v4_firing.json"),
            )
            assert accepted.status_code == 202, accepted.text
            incident_id = accepted.json()["incident_id"]
            await publish_good(broker, incident_id, now)
            run = await settle(redis, placed, incident_id, expected_work(plan))

    tally = Tally()
    for poison, _ in run.placed:
        for group, allowed in poison.endings.items():
            ending = run.endings[(poison.name, group)]
            if ending in allowed:
                tally.ok()
            else:
                tally.bad(f"{poison.name} ({group}): {ending}")
    for what in sorted(expected_work(plan) - run.work):
        tally.bad(f"good work not done: {what}")
    reasons = Counter(letter["reason"] for letter in run.dead)
    outcome = report(
        tally.outcome(
            "poison: every consumed stream",
            f"{len(run.placed)} poison entries on {len(CONSUMER_GROUPS)} streams; "
            f"dead letters {dict(reasons)}; good work {len(run.work)} items",
        )
    )
    gave_up = [letter for letter in run.dead if letter["reason"] == "max_deliveries_exceeded"]
    assert {letter["delivery_count"] for letter in gave_up} == {MAX_DELIVERIES + 1}
    assert sum(1 for entry in logs if entry["event"] == "message.dead_lettered") == len(run.dead)
    assert {key: n for key, n in run.backlog.items() if n} == {}
    assert outcome.lost == 0, outcome.notes


async def test_an_update_due_of_a_corrupt_incident_ends_in_the_dead_letters(
    redis: Redis, make_settings: Callable[..., Settings]
) -> None:
    # The consumer's last turn, taken directly: the entry has been delivered one time
    # more than CLARION_MAX_DELIVERIES allows.
    now = datetime.now(UTC)
    settings = make_settings(max_deliveries=MAX_DELIVERIES)
    await corrupt_state(redis)
    pipeline = build_pipeline(redis, settings, every_channel_plan(), ManualClock(now))
    try:
        _events, updates_due, _approvals = build_consumers(redis, settings, pipeline.dispatcher)
        due = UpdateDue(
            event_id="due-corrupt",
            incident_id=CORRUPT,
            sequence=1,
            due_at=now,
            emitted_at=now,
            next_update_at=None,
        )
        last_turn = StreamEntry(UPDATES_DUE, DISPATCHER_GROUP, "1-0", MAX_DELIVERIES + 1)
        try:
            await updates_due.process(body(due), last_turn)
            escaped = None
        except Exception as exc:  # what the consumer would leave pending, to retry
            escaped = exc
        dead = await stream_json(redis, DEAD_LETTERS)
    finally:
        await pipeline.aclose()

    line = report(
        Tally(sent=1, mishandled=0 if dead and escaped is None else 1).outcome(
            "poison: an update due of a corrupt incident",
            f"{len(dead)} dead letters; {type(escaped).__name__ if escaped else 'nothing'} escaped",
        )
    )
    assert [letter["entry_id"] for letter in dead] == ["1-0"]
    assert escaped is None
    assert line.lost == 0


NESTED_DEEP: Final = b"[" * 5000 + b"]" * 5000


async def test_an_entry_nested_too_deep_ends_in_the_dead_letters(
    redis: Redis, redis_url: str, make_settings: Callable[..., Settings]
) -> None:
    stream, group = "clarion:test-poison", "test-group"
    settings = make_settings(max_deliveries=2, reclaim_idle_ms=200, polling_interval_ms=50)
    handled: list[ResolutionDue] = []

    async def handle(due: ResolutionDue, _entry: StreamEntry) -> None:
        handled.append(due)

    consumer = GuardedConsumer[ResolutionDue](
        redis=redis,
        stream=stream,
        group=group,
        decode=ResolutionDue.model_validate_json,
        handle=handle,
        max_deliveries=settings.max_deliveries,
    )
    await redis.xgroup_create(stream, group, id="0", mkstream=True)
    entry_id = as_text(await redis.xadd(stream, {DATA_FIELD: NESTED_DEEP}))

    async def ended_or_overdue() -> bool:
        """Dead-lettered, or delivered well past the cap without being dead-lettered."""
        if any(d["entry_id"] == entry_id for d in await stream_json(redis, DEAD_LETTERS)):
            return True
        pending = await redis.xpending_range(stream, group, min=entry_id, max=entry_id, count=1)
        delivered = int(pending[0]["times_delivered"]) if pending else 0
        return delivered > settings.max_deliveries + 2

    with structlog.testing.capture_logs():
        broker = RedisBroker(redis_url)
        consumer.subscribe(broker, settings)
        async with broker:
            await broker.start()
            await eventually(ended_or_overdue, within=60.0, what="the entry's end")
            dead = await stream_json(redis, DEAD_LETTERS)

    line = report(
        Tally(sent=1, mishandled=0 if dead else 1).outcome(
            "poison: an entry nested 5000 deep", f"{len(dead)} dead letters"
        )
    )
    assert [(d["entry_id"], d["reason"]) for d in dead] == [(entry_id, "undecodable")]
    assert line.lost == 0
