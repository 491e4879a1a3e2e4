"""``kill -9`` each service under a load of alerts, start it again, and lose nothing.

One system (ingest, dispatcher, scheduler as real processes, an SMTP sink and a
webhook sink) serves the module. Each scenario posts a load of alerts, one incident
each (every fourth critical, every twentieth at the full size, so the scheduler owes
updates), and SIGKILLs one service at seeded random points of the load, starting it
again at once. Then:

* every alert that got a 2xx has its ``IncidentOpened`` on the incident-events stream;
* every delivery planned for those events, and for every update the scheduler fired,
  ended ``sent`` in the delivery log;
* the webhook receiver got every webhook id and the mailbox every email; a delivery
  arrives more than once only on a dispatcher crash, at most once more per crash,
  and then its record says ``possible_duplicate`` (email takes no idempotency key;
  a Standard Webhooks receiver drops a repeated ``webhook-id``, so a webhook repeat
  is no duplicate in effect: it is counted in the notes);
* a killed scheduler skips no update: each critical incident's sequence is 1, 2, 3...
  and updates keep coming after the restart.

At the full size, one more test holds a webhook answer while the job is reclaimed
more often than CLARION_MAX_DELIVERIES allows: it is sent, never dead-lettered.
"""

from __future__ import annotations

import random
import threading
from collections.abc import Iterator

import httpx
import pytest
import redis as sync_redis
from redis.asyncio import Redis

from shared.contracts import DeliveryRecorded, DeliveryStatus
from shared.redis_values import as_text, data_entries
from shared.settings import Settings
from shared.streams import DEAD_LETTERS, delivery_stream
from tests.reliability.harness import (
    HOOK_PATH,
    SEED,
    AlertSender,
    Arrivals,
    Ledger,
    Target,
    WebhookSink,
    crash,
    delivery_records,
    fanout_system,
    fault_points,
    opened_events,
    plan_for,
    post_alerts,
    update_events,
    update_sequences,
)
from tests.reliability.scale import FULL, Outcome, report, sized
from tests.support.fake_provider import Answer, Received
from tests.support.processes import System
from tests.support.smtp import SmtpServer
from tests.support.waiting import eventually

MAX_DELIVERIES: int = Settings.model_fields["max_deliveries"].default

ALERTS = sized(20, 300)
KILLS = sized(1, 3)
SETTLE_WITHIN = sized(90, 600)
CRITICAL_EVERY = sized(4, 20)  # updates every 3 s: bounded load at the full size


@pytest.fixture(scope="module")
def targets_and_system(
    redis_url: str,
    smtp: SmtpServer,
    hooks: WebhookSink,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[tuple[Target, ...], System]]:
    sync_redis.Redis.from_url(redis_url).flushdb()
    directory = tmp_path_factory.mktemp("kill-services")
    held_webhook_outlasts_the_reclaims = {"CLARION_HTTP_TIMEOUT_SECONDS": "60"}
    with fanout_system(
        redis_url, directory, smtp, hooks, **held_webhook_outlasts_the_reclaims
    ) as running:
        yield running


def severity_of(number: int) -> str:
    return "critical" if number % CRITICAL_EVERY == 0 else "warning"


@pytest.mark.parametrize("service", ["ingest", "scheduler", "dispatcher"])
async def test_kill_9_a_service_under_load_loses_nothing(
    service: str,
    store: Redis,
    smtp: SmtpServer,
    hooks: WebhookSink,
    targets_and_system: tuple[tuple[Target, ...], System],
) -> None:
    targets, system = targets_and_system
    rng = random.Random(f"{SEED}-{service}")
    points = fault_points(rng, ALERTS, KILLS)
    faults = {n: crash(system[service]) for n in points}
    restarts_before = system[service].starts

    async with httpx.AsyncClient(timeout=30) as client:
        sender = AlertSender(client, system.ingest_url)
        accepted = await post_alerts(
            sender, f"kill-{service}", ALERTS, severity_of=severity_of, faults=faults
        )
    assert system[service].starts == restarts_before + KILLS
    incidents = set(accepted.values())
    critical = {accepted[n] for n in accepted if severity_of(n) == "critical"}

    # Every accepted alert has its event: ingest wrote it before answering.
    opened = await opened_events(store, incidents)
    no_event = incidents - opened.keys()

    # None of the updates fired is skipped; a killed scheduler keeps them coming.
    fired = await update_sequences(store, critical)
    if service == "scheduler":
        before = {i: max(s) for i, s in fired.items()}

        async def updated_since() -> dict[str, list[int]] | None:
            now = await update_sequences(store, critical)
            done = all(max(now.get(i, [0])) > before.get(i, 0) for i in critical)
            return now if done else None

        fired = await eventually(updated_since, within=SETTLE_WITHIN, what="an update each")
    skipped = {i: s for i, s in fired.items() if sorted(set(s)) != list(range(1, max(s) + 1))}
    repeated_updates = sum(len(s) - len(set(s)) for s in fired.values())

    events = {(e, i) for i, e in opened.items()} | await update_events(store, incidents)
    planned = plan_for(events, targets)
    ledger = await Ledger.settle(store, planned, within=SETTLE_WITHIN)
    arrivals = Arrivals.of(ledger, smtp.mailbox.messages, hooks)
    dispatcher_crashes = KILLS if service == "dispatcher" else 0

    outcome = report(
        Outcome(
            scenario=f"kill -9 {service} x{KILLS} under {ALERTS} alerts",
            sent=len(planned),
            delivered=len(planned) - len(arrivals.lost),
            lost=len(no_event) + len(arrivals.lost),
            duplicated=arrivals.emails.extras,
            notes=[
                f"seed {SEED}, killed at alerts {points}",
                sender.retried,
                f"{len(events)} events ({len(events) - len(opened)} scheduled updates)",
                *arrivals.notes(ledger),
                f"updates fired twice (same event id, deduplicated): {repeated_updates}",
            ],
        )
    )
    assert not no_event, f"accepted alerts without an incident event: {sorted(no_event)}"
    assert not skipped, f"updates skipped: {skipped}"
    assert outcome.lost == 0, ledger.explain_not_sent()
    # A delivery arrives twice only when the dispatcher died mid-send, once more per
    # crash at most, and its record then says so.
    for copies in (arrivals.emails, arrivals.webhooks):
        assert all(n <= dispatcher_crashes for n in copies.extra.values()), copies.extra
    assert set(arrivals.emails.extra) <= ledger.flagged_duplicates()


@pytest.mark.skipif(
    not FULL, reason="holds a webhook for six reclaim cycles (make test-reliability)"
)
async def test_a_send_slower_than_the_reclaims_is_not_dead_lettered(
    store: Redis,
    hooks: WebhookSink,
    targets_and_system: tuple[tuple[Target, ...], System],
) -> None:
    """Seen after Valkey restarts (a worker stuck on a Redis reply, its lease renewed) and
    with slow providers: the webhook receiver holds one answer until the job has been
    reclaimed more than CLARION_MAX_DELIVERIES (5) times, then answers 200. The delivery
    was being sent all along: its log must show it sent, never dead."""
    _, system = targets_and_system
    release = threading.Event()
    held: list[str] = []

    def hold_one(request: Received) -> Answer:
        held.append(request.headers["webhook-id"])
        return Answer(200, body="ok", hold=release)

    hooks.answer_next("POST", HOOK_PATH, respond=hold_one)
    try:
        async with httpx.AsyncClient(timeout=30) as client:
            await post_alerts(AlertSender(client, system.ingest_url), "busy", 1)

        async def one_held() -> list[str]:
            return held

        await eventually(one_held, within=60, what="a held webhook")

        async def reclaimed_past_the_limit() -> bool:
            found_busy = busy_looks(system["dispatcher"].log_path.read_text(errors="replace"))
            return found_busy > MAX_DELIVERIES + 1 or await dead_lettered(store, held[0])

        await eventually(reclaimed_past_the_limit, within=120, what="six busy reclaims")
    finally:
        release.set()
    [delivery_id] = held

    async def sent_at_last() -> list[DeliveryRecorded] | None:
        records = (await delivery_records(store)).get(delivery_id, [])
        return records if records and records[-1].status is DeliveryStatus.SENT else None

    records = await eventually(sent_at_last, within=60, what="the held webhook recorded sent")
    assert [r.status for r in records] == [DeliveryStatus.SENT], records
    assert not await dead_lettered(store, delivery_id)


def busy_looks(dispatcher_log: str) -> int:
    """How often a reclaimed webhook job found its delivery still being sent."""
    return sum(
        1
        for line in dispatcher_log.splitlines()
        if '"message.in_progress_elsewhere"' in line and delivery_stream("webhook") in line
    )


async def dead_lettered(redis: Redis, delivery_id: str) -> bool:
    return any(
        delivery_id in as_text(payload)
        for _, payload in data_entries(await redis.xrange(DEAD_LETTERS))
    )
