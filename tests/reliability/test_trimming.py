"""Stream retention with a consumer down never trims what a consumer group still needs.

The three services run as processes. The dispatcher is SIGKILLed while an email is
parked in the SMTP sink (so delivery jobs are read but not acknowledged: pending),
and more alerts come in while it is down (so incident events are not yet delivered
to its group). Then the dispatcher's own retention policy runs with every age cut at
*now* (``CLARION_STREAM_RETENTION=0``: by age alone, every entry would go). It must:

* remove what every group has acknowledged (or the scenario proves nothing);
* keep every entry some group has pending or has not been delivered yet.

The dispatcher then starts again while the same trimmer keeps running every 200 ms,
and every event, from before the kill and from while it was down, is delivered:
each planned delivery ends ``sent``, and every email and webhook arrives (the email
parked at the kill at most once more, flagged ``possible_duplicate``).
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from datetime import timedelta
from typing import Any, Final

import httpx
import pytest
import redis as sync_redis
from redis.asyncio import Redis

from services.dispatcher.app import retention_policies
from shared.clock import SystemClock
from shared.redis_values import as_text
from shared.retention import RetentionTask
from shared.settings import Settings
from shared.streams import CONSUMER_GROUPS, DISPATCHER_GROUP, INCIDENT_EVENTS, delivery_stream
from tests.reliability.harness import (
    AlertSender,
    Arrivals,
    Ledger,
    Target,
    WebhookSink,
    fanout_system,
    opened_events,
    plan_for,
    post_alerts,
)
from tests.reliability.scale import Outcome, report, sized
from tests.support.processes import System
from tests.support.smtp import SmtpServer

BEFORE = sized(4, 50)  # alerts handled before the kill
AT_KILL = sized(4, 50)  # alerts in flight when the dispatcher dies
WHILE_DOWN = sized(6, 200)  # alerts while the dispatcher is down
SETTLE_WITHIN = sized(90, 600)
EMAIL_JOBS: Final = delivery_stream("email")

Unread = dict[tuple[str, str], set[str]]
"""(stream, group) -> ids the group has pending or has not been delivered yet."""


@pytest.fixture(scope="module")
def targets_and_system(
    redis_url: str,
    smtp: SmtpServer,
    hooks: WebhookSink,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[tuple[Target, ...], System]]:
    sync_redis.Redis.from_url(redis_url).flushdb()
    directory = tmp_path_factory.mktemp("trimming")
    with fanout_system(redis_url, directory, smtp, hooks) as running:
        yield running


def trim_everything_read(redis: Redis, interval: timedelta = timedelta(seconds=1)) -> RetentionTask:
    """The dispatcher's retention policy with ``CLARION_STREAM_RETENTION=0``."""
    settings = Settings(_env_file=None, stream_retention=timedelta(0))
    return RetentionTask(
        redis, retention_policies(settings), clock=SystemClock(), interval=interval
    )


async def unread(redis: Redis) -> Unread:
    """What each consumer group still needs of each stream."""
    needed: Unread = {}
    for stream in CONSUMER_GROUPS:
        if not await redis.exists(stream):
            continue
        groups: list[dict[str, Any]] = await redis.xinfo_groups(stream)
        for info in groups:
            group = as_text(info["name"])
            last = as_text(info["last-delivered-id"])
            after = await redis.xrange(stream, min=f"({last}", max="+")
            pending = await redis.xpending_range(stream, group, min="-", max="+", count=100_000)
            needed[(stream, group)] = {as_text(i) for i, _ in after or []} | {
                as_text(p["message_id"]) for p in pending
            }
    return needed


async def present(redis: Redis, stream: str) -> set[str]:
    return {as_text(i) for i, _ in await redis.xrange(stream) or []}


async def test_trimming_with_the_dispatcher_down_keeps_every_unread_entry(
    store: Redis,
    smtp: SmtpServer,
    hooks: WebhookSink,
    targets_and_system: tuple[tuple[Target, ...], System],
) -> None:
    targets, system = targets_and_system
    dispatcher = system["dispatcher"]
    async with httpx.AsyncClient(timeout=30) as client:
        sender = AlertSender(client, system.ingest_url)
        before = await post_alerts(sender, "trim-before", BEFORE)
        opened = await opened_events(store, before.values())
        await Ledger.settle(
            store, plan_for(((e, i) for i, e in opened.items()), targets), within=SETTLE_WITHIN
        )

        held, release = smtp.hold_next()
        at_kill = await post_alerts(sender, "trim-at-kill", AT_KILL)
        assert await asyncio.to_thread(held.wait, 60), "no email reached the SMTP sink"
        await asyncio.to_thread(dispatcher.kill)
        while_down = await post_alerts(sender, "trim-while-down", WHILE_DOWN)

    incidents = {*before.values(), *at_kill.values(), *while_down.values()}
    opened = await opened_events(store, incidents)  # read before any of it is trimmed
    needed = await unread(store)
    assert needed[(EMAIL_JOBS, DISPATCHER_GROUP)], "no delivery job pending at the kill"
    assert needed[(INCIDENT_EVENTS, DISPATCHER_GROUP)], "no event waiting for the dispatcher"
    trimmed = await trim_everything_read(store).run_once()
    kept = {stream: await present(store, stream) for stream, _ in needed}
    release.set()

    gone = {key: ids - kept[key[0]] for key, ids in needed.items() if ids - kept[key[0]]}
    removed = sum(t.removed for t in trimmed)

    trimmer = trim_everything_read(store, interval=timedelta(milliseconds=200))
    trimmer.start()
    try:
        await asyncio.to_thread(dispatcher.start)
        await asyncio.to_thread(dispatcher.wait_ready, 90.0)
        planned = plan_for(((e, i) for i, e in opened.items()), targets)
        ledger = await Ledger.settle(store, planned, within=SETTLE_WITHIN)
    finally:
        await trimmer.stop()
    arrivals = Arrivals.of(ledger, smtp.mailbox.messages, hooks)

    pending_jobs = len(needed[(EMAIL_JOBS, DISPATCHER_GROUP)])
    undelivered = len(needed[(INCIDENT_EVENTS, DISPATCHER_GROUP)])
    outcome = report(
        Outcome(
            scenario=f"trim at age 0 with the dispatcher down ({len(incidents)} alerts)",
            sent=len(planned),
            delivered=len(planned) - len(arrivals.lost),
            lost=sum(len(ids) for ids in gone.values())
            + len(incidents - opened.keys())
            + len(arrivals.lost),
            duplicated=arrivals.emails.extras,
            notes=[
                f"trimmed {removed} acknowledged entries",
                f"kept {pending_jobs} pending email jobs, {undelivered} undelivered events",
                *arrivals.notes(ledger),
            ],
        )
    )
    assert removed > 0, "the trimmer removed nothing: the scenario proves nothing"
    assert not gone, f"trimmed entries a group still needed: {gone}"
    assert incidents <= opened.keys()
    assert outcome.lost == 0, ledger.explain_not_sent()
    for copies in (arrivals.emails, arrivals.webhooks):
        assert all(n <= 1 for n in copies.extra.values()), copies.extra
    assert set(arrivals.emails.extra) <= ledger.flagged_duplicates()
