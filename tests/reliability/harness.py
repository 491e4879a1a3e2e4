"""What the reliability scenarios share: the system under test, an alert load that retries
like Alertmanager, faults to inject into it, and the ledger that counts what came out.

* :func:`service_env` and :func:`write_fanout_plan` configure the three real processes
  (``tests.support.processes.System``) for fast recovery: short reclaim and lease times,
  no rate limit in play, loopback webhooks allowed.
* :class:`AlertSender` posts Alertmanager webhooks, one incident each, and, like
  Alertmanager, sends again whatever got no 2xx (no answer, a 5xx, a 429) once ingest
  is ready again. :func:`post_alerts` runs a load of them and starts a fault (a
  ``kill -9``, a Redis outage) when the load reaches a chosen alert.
* :class:`Ledger` is the oracle: from Redis (the incident events, the scheduler's
  updates, the delivery log) and from the sinks (the SMTP mailbox, the webhook
  receiver) it says which planned deliveries were lost and which arrived twice.
  Deliveries are planned here by hand from the plan the test wrote (event id, channel,
  recipient), not by the dispatcher's fan-out, so a fan-out that drops one is caught.
"""

from __future__ import annotations

import asyncio
import copy
import os
import random
import time
from collections import Counter
from collections.abc import Callable, Coroutine, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import timedelta
from email.message import EmailMessage
from pathlib import Path
from typing import Any, Final

import httpx
from redis.asyncio import Redis

from services.dispatcher.delivery_state import DEAD, DONE
from services.dispatcher.fanout import delivery_id_for, idempotency_key
from shared.contracts import (
    DeliveryJob,
    DeliveryRecorded,
    DeliveryStatus,
    IncidentOpened,
    Severity,
)
from shared.plan.model import STATUS_PAGE_ADDRESS
from shared.redis_values import as_text, data_entries
from shared.streams import (
    DELIVERY_LOG,
    DISPATCHER_GROUP,
    delivery_state_key,
    delivery_stream,
)
from tests.conftest import load_fixture
from tests.support.fake_provider import FakeProvider
from tests.support.plans import write_plan
from tests.support.processes import ServiceProcess, System
from tests.support.smtp import SmtpServer
from tests.support.streams import incident_events, updates_due
from tests.support.waiting import eventually

SEED: Final = int(os.environ.get("CLARION_RELIABILITY_SEED", "9"))
"""Where kills land is drawn from this seed (printed in each Outcome line)."""

EMAIL: Final = "oncall@example.com"
HOOK_NAME: Final = "ops-hook"
HOOK_PATH: Final = "/hooks/clarion"
UPDATE_EVERY: Final = timedelta(seconds=3)
"""Critical incidents are updated this often, so the scheduler has work to lose."""

FINAL: Final = frozenset(
    {DeliveryStatus.SENT, DeliveryStatus.FAILED, DeliveryStatus.DEAD, DeliveryStatus.SUPPRESSED}
)

SINK_CHANNELS: Final = frozenset({"email", "webhook"})
"""Channels whose every arrival the tests count (the SMTP mailbox, the webhook sink)."""

SERVICE_ENV: Final = {
    "CLARION_RECLAIM_IDLE_MS": "1500",
    "CLARION_IDEMPOTENCY_LEASE_MS": "1500",
    "CLARION_POLLING_INTERVAL_MS": "100",
    "CLARION_SCHEDULER_TICK_MS": "100",
    "CLARION_SCHEDULER_LEASE_MS": "2000",
    "CLARION_INGEST_RATE_LIMIT": "100000/second",
    "CLARION_RATE_LIMITS": "x=100/day",  # only a channel not in play: nothing waits on a limit
    "CLARION_WEBHOOK_ALLOW_PRIVATE": "true",  # the webhook sink is on loopback
}


def service_env(redis_url: str, plan: Path, **overrides: str) -> dict[str, str]:
    """The environment of the three services: ``SERVICE_ENV``, the Redis, the plan."""
    return {**SERVICE_ENV, "CLARION_REDIS_URL": redis_url, "CLARION_PLAN": str(plan), **overrides}


# The plan, and the deliveries it implies


Target = tuple[str, str]
"""(channel, recipient) as the delivery log and idempotency keys name them."""


def write_fanout_plan(directory: Path, hook_url: str) -> tuple[Path, tuple[Target, ...]]:
    """Customers hear of every event by email, on the status page and on a signed webhook;
    critical incidents every ``UPDATE_EVERY``. Returns the plan and each event's targets."""
    cadence = {s: UPDATE_EVERY if s is Severity.CRITICAL else None for s in Severity}
    customers = {
        "public": True,
        "status_page": True,
        "email": [EMAIL],
        "webhook": [{"name": HOOK_NAME, "url": hook_url}],
    }
    plan = write_plan(directory, (EMAIL,), cadence=cadence, audiences={"customers": customers})
    targets = (("email", EMAIL), ("status_page", STATUS_PAGE_ADDRESS), ("webhook", HOOK_NAME))
    return plan, targets


@dataclass(frozen=True)
class Planned:
    """One delivery the plan promises: an event to a recipient on a channel."""

    event_id: str
    incident_id: str
    channel: str
    recipient: str

    @property
    def delivery_id(self) -> str:
        return delivery_id_for(idempotency_key(self.event_id, self.channel, self.recipient))


def plan_for(events: Iterable[tuple[str, str]], targets: Sequence[Target]) -> dict[str, Planned]:
    """Every delivery of ``events`` ((event id, incident id) pairs), by delivery id."""
    planned = (
        Planned(event_id, incident_id, channel, recipient)
        for event_id, incident_id in events
        for channel, recipient in targets
    )
    return {p.delivery_id: p for p in planned}


# The load


def alert_body(run: str, number: int, severity: str = "warning") -> dict[str, Any]:
    """Alertmanager's sample, made a group of its own: one alert, one incident."""
    body = copy.deepcopy(load_fixture("alertmanager_webhook_v4_firing_single.json"))
    body["groupKey"] = f'{{}}:{{run="{run}", alert="{number}"}}'
    alert = body["alerts"][0]
    alert["fingerprint"] = f"{run}-{number:05d}"
    alert["labels"] = {**alert["labels"], "instance": f"{run}-{number}", "severity": severity}
    body["commonLabels"] = dict(alert["labels"])
    return body


@dataclass
class AlertSender:
    """Posts webhooks until ingest answers 2xx, waiting for ingest to be ready between tries."""

    client: httpx.AsyncClient
    ingest_url: str
    unanswered: int = 0  # tries that got no answer (ingest dead or killed mid-request)
    refused: Counter[int] = field(default_factory=Counter)  # 5xx/429 answers, by status
    refused_event: asyncio.Event = field(default_factory=asyncio.Event)  # set at the first
    accepted_at: dict[str, float] = field(default_factory=dict)  # incident id -> monotonic
    ready_within: float = 120.0

    async def deliver(self, body: Mapping[str, Any]) -> str:
        """Post ``body`` until it is accepted; returns the incident id."""
        for _ in range(50):
            try:
                answer = await self.client.post(
                    f"{self.ingest_url}/v1/alerts/alertmanager", json=body
                )
            except httpx.TransportError:
                self.unanswered += 1
            else:
                if answer.is_success:
                    incident_id = str(answer.json()["incident_id"])
                    self.accepted_at[incident_id] = time.monotonic()
                    return incident_id
                assert answer.status_code >= 500 or answer.status_code == 429, answer.text
                self.refused[answer.status_code] += 1
                self.refused_event.set()
            await eventually(self._ready, within=self.ready_within, what="ingest ready again")
        raise AssertionError(f"alert {body['groupKey']} never accepted")

    async def _ready(self) -> bool:
        try:
            return (await self.client.get(f"{self.ingest_url}/readyz")).status_code == 200
        except httpx.TransportError:
            return False

    @property
    def retried(self) -> str:
        refused = ", ".join(f"{n}x {status}" for status, n in sorted(self.refused.items()))
        return f"posts retried: {self.unanswered} unanswered" + (f", {refused}" if refused else "")


@dataclass(frozen=True)
class Fault:
    """What goes wrong when the load reaches an alert: ``strike`` runs before that alert is
    posted, while no sender takes another; ``recover`` then runs beside the load."""

    strike: Callable[[], Coroutine[Any, Any, None]]
    recover: Callable[[], Coroutine[Any, Any, None]]


async def post_alerts(
    sender: AlertSender,
    run: str,
    count: int,
    *,
    severity_of: Callable[[int], str] = lambda _: "warning",
    faults: Mapping[int, Fault] | None = None,
    senders: int = 4,
) -> dict[int, str]:
    """Post ``count`` alerts from ``senders`` concurrent senders, with ``faults[n]`` striking
    just before alert ``n`` (once the fault before it has recovered). Returns alert number
    -> incident id, once every alert is accepted and every fault has recovered."""
    numbers = iter(range(count))
    taking = asyncio.Lock()  # a fault strikes while no sender takes another alert
    accepted: dict[int, str] = {}
    recovering: list[asyncio.Task[None]] = []

    async def send() -> None:
        while True:
            async with taking:
                number = next(numbers, None)
                if number is None:
                    return
                fault = (faults or {}).get(number)
                if fault is not None:
                    await asyncio.gather(*recovering)  # faults never overlap
                    await fault.strike()
                    recovering.append(asyncio.create_task(fault.recover()))
            accepted[number] = await sender.deliver(alert_body(run, number, severity_of(number)))

    try:
        await asyncio.gather(*(send() for _ in range(senders)))
    finally:
        await asyncio.gather(*recovering)
    return accepted


def fault_points(rng: random.Random, count: int, faults: int) -> list[int]:
    """``faults`` distinct alert numbers in the middle half of the load, in order."""
    middle = range(count // 4, max(count * 3 // 4, count // 4 + faults))
    return sorted(rng.sample(middle, faults))


def crash(service: ServiceProcess) -> Fault:
    """``kill -9`` the service; then start it again and wait until it is ready."""

    async def strike() -> None:
        await asyncio.to_thread(service.kill)

    async def recover() -> None:
        await asyncio.to_thread(service.start)
        await asyncio.to_thread(service.wait_ready, 90.0)

    return Fault(strike, recover)


async def wait_ready(system: System) -> None:
    """Every service is alive and ready (fails if one exited)."""
    for service in system.services.values():
        await asyncio.to_thread(service.wait_ready, 90.0)


# The sinks


class WebhookSink(FakeProvider):
    """The receiving end of the signed webhook: answers 200 and counts ``webhook-id``s."""

    def __enter__(self) -> WebhookSink:
        super().__enter__()
        self.answer("POST", HOOK_PATH, 200, body="ok")
        return self

    @property
    def hook_url(self) -> str:
        return self.url + HOOK_PATH

    def copies(self) -> Counter[str]:
        """How many requests each webhook id (our delivery id) arrived in."""
        return Counter(r.headers.get("webhook-id", "") for r in self.requests_to("POST", HOOK_PATH))


def email_copies(messages: Iterable[EmailMessage]) -> Counter[str]:
    """How many copies of each delivery arrived: the Message-ID is ``<delivery id@domain>``."""
    return Counter(str(m["Message-ID"] or "").strip("<>").split("@")[0] for m in messages)


# The ledger


async def delivery_records(redis: Redis) -> dict[str, list[DeliveryRecorded]]:
    """Every delivery log record, by delivery id, oldest first."""
    records: dict[str, list[DeliveryRecorded]] = {}
    start = "-"
    while True:
        page = data_entries(await redis.xrange(DELIVERY_LOG, min=start, count=1000))
        for _, payload in page:
            record = DeliveryRecorded.model_validate_json(payload)
            records.setdefault(record.delivery_id, []).append(record)
        if len(page) < 1000:
            return records
        start = f"({page[-1][0]}"


def final_status(records: Sequence[DeliveryRecorded]) -> DeliveryStatus | None:
    """The delivery's final status: its last record's, when that one is final."""
    return records[-1].status if records and records[-1].status in FINAL else None


async def opened_events(redis: Redis, incident_ids: Iterable[str]) -> dict[str, str]:
    """incident id -> the event id of its ``IncidentOpened``, for the incidents that have one."""
    wanted = set(incident_ids)
    return {
        e.incident_id: e.event_id
        for e in await incident_events(redis)
        if isinstance(e, IncidentOpened) and e.incident_id in wanted
    }


async def update_sequences(redis: Redis, incident_ids: Iterable[str]) -> dict[str, list[int]]:
    """incident id -> the sequence numbers of the updates the scheduler fired, in order."""
    wanted = set(incident_ids)
    fired: dict[str, list[int]] = {}
    for due in await updates_due(redis):
        if due.incident_id in wanted:
            fired.setdefault(due.incident_id, []).append(due.sequence)
    return fired


async def update_events(redis: Redis, incident_ids: Iterable[str]) -> set[tuple[str, str]]:
    """(event id, incident id) of every update fired for ``incident_ids`` (repeats once)."""
    wanted = set(incident_ids)
    return {
        (d.event_id, d.incident_id) for d in await updates_due(redis) if d.incident_id in wanted
    }


async def delivery_states(redis: Redis, delivery_ids: Iterable[str]) -> dict[str, str]:
    """delivery id -> its state in Redis (``done``, ``dead``, ``retry:N``; "" for none)."""
    ids = list(delivery_ids)
    async with redis.pipeline(transaction=False) as pipe:
        for delivery_id in ids:
            pipe.hget(delivery_state_key(delivery_id), "state")
        states = await pipe.execute()
    return {d: as_text(s) if s is not None else "" for d, s in zip(ids, states, strict=True)}


async def pending_deliveries(redis: Redis, channels: Iterable[str]) -> set[str]:
    """The delivery ids of the jobs the dispatcher has read and not acknowledged: their
    handler may still be mid-way (between moving the state and recording it)."""
    busy: set[str] = set()
    for channel in set(channels):
        stream = delivery_stream(channel)
        pending = await redis.xpending_range(stream, DISPATCHER_GROUP, "-", "+", 100_000)
        for entry in pending:
            entry_id = as_text(entry["message_id"])
            for _, payload in data_entries(await redis.xrange(stream, entry_id, entry_id)):
                busy.add(DeliveryJob.model_validate_json(payload).delivery_id)
    return busy


@dataclass
class Ledger:
    """What became of the planned deliveries, read once they all settled (or time ran out).

    A delivery has settled when its last delivery-log record is final, or when its state in
    Redis is final (``done``, ``dead``) and no dispatcher handler ran while both were read:
    then no record is coming (see :meth:`unrecorded`).
    """

    planned: dict[str, Planned]
    records: dict[str, list[DeliveryRecorded]]
    states: dict[str, str]

    @classmethod
    async def settle(
        cls,
        redis: Redis,
        planned: dict[str, Planned],
        *,
        within: float,
        wanted: frozenset[DeliveryStatus] = FINAL,
        final_states: frozenset[str] = frozenset({DONE, DEAD}),
    ) -> Ledger:
        """Wait until every planned delivery's last record is one of ``wanted``, or its
        state one of ``final_states`` with the dispatcher idle; the ledger as it then
        stands (also when ``within`` ran out: the test then reports what is missing)."""
        channels = {p.channel for p in planned.values()}

        async def read() -> Ledger:
            states = await delivery_states(redis, planned)
            return cls(planned, await delivery_records(redis), states)

        async def settled() -> Ledger | None:
            ledger = await read()
            by_state = {d for d in planned if ledger.status(d) not in wanted}
            if any(ledger.states[d] not in final_states for d in by_state):
                return None
            if not by_state:
                return ledger
            # Final by their state alone: no record is coming once no handler holds their
            # job (a handler records before it acknowledges, so read the log after).
            if by_state & await pending_deliveries(redis, channels):
                return None
            return cls(planned, await delivery_records(redis), ledger.states)

        try:
            return await eventually(settled, within=within, interval=0.25)
        except AssertionError:
            return await read()

    def status(self, delivery_id: str) -> DeliveryStatus | None:
        return final_status(self.records.get(delivery_id, []))

    def not_sent(self) -> list[Planned]:
        """Planned deliveries whose delivery log does not end ``sent``."""
        return [p for d, p in self.planned.items() if self.status(d) is not DeliveryStatus.SENT]

    def unrecorded(self) -> list[Planned]:
        """Done in Redis (sent, failed or suppressed: only a sink can say which) without a
        final record in the delivery log, and none coming: lost (the state and its record
        are written in one step; see test_redis_restart.py)."""
        return [p for d, p in self.planned.items() if not self.status(d) and self.states[d] == DONE]

    def lost(self) -> list[Planned]:
        """Planned deliveries not recorded sent. A delivery done without a final record
        (:meth:`unrecorded`) counts as lost: its record is written with its state."""
        return self.not_sent()

    def explain_not_sent(self) -> list[str]:
        """One line per planned delivery that did not end sent, for a failure message."""
        return [
            f"{p.channel} {d} of event {p.event_id}, state {self.states[d]!r}: "
            f"{[(r.status.value, r.attempt, r.error) for r in self.records.get(d, [])]}"
            for d, p in self.planned.items()
            if self.status(d) is not DeliveryStatus.SENT
        ]

    def on(self, channel: str) -> dict[str, Planned]:
        return {d: p for d, p in self.planned.items() if p.channel == channel}

    def flagged_duplicates(self) -> set[str]:
        """Delivery ids whose sent record says an earlier attempt may have gone out too."""
        return {
            d
            for d in self.planned
            for r in self.records.get(d, [])
            if r.status is DeliveryStatus.SENT and r.possible_duplicate
        }


@dataclass(frozen=True)
class Copies:
    """How many copies of each planned delivery a sink got."""

    missing: list[str]  # planned, never arrived
    extra: dict[str, int]  # delivery id -> copies beyond the first

    @classmethod
    def count(cls, planned: Iterable[str], copies: Counter[str]) -> Copies:
        ids = list(planned)
        return cls(
            missing=[d for d in ids if copies[d] == 0],
            extra={d: copies[d] - 1 for d in ids if copies[d] > 1},
        )

    @property
    def extras(self) -> int:
        return sum(self.extra.values())


@dataclass(frozen=True)
class Arrivals:
    """What the sinks got of the planned deliveries, read beside the delivery log."""

    emails: Copies
    webhooks: Copies
    lost: frozenset[str]  # delivery ids neither recorded sent nor done and arrived

    @classmethod
    def of(cls, ledger: Ledger, mailbox: Iterable[EmailMessage], hooks: WebhookSink) -> Arrivals:
        emails = Copies.count(ledger.on("email"), email_copies(mailbox))
        webhooks = Copies.count(ledger.on("webhook"), hooks.copies())
        lost = {p.delivery_id for p in ledger.lost()} | {*emails.missing, *webhooks.missing}
        return cls(emails, webhooks, frozenset(lost))

    def notes(self, ledger: Ledger) -> list[str]:
        notes = [f"webhook repeats dropped by webhook-id: {self.webhooks.extras}"]
        unrecorded = Counter(p.channel for p in ledger.unrecorded())
        if unrecorded:
            notes.append(f"done without a final delivery-log record: {dict(unrecorded)}")
        return notes


@contextmanager
def fanout_system(
    redis_url: str,
    directory: Path,
    smtp: SmtpServer,
    hooks: WebhookSink,
    **overrides: str,
) -> Iterator[tuple[tuple[Target, ...], System]]:
    """The three services on ``redis_url`` with the fan-out plan (email to ``smtp``,
    signed webhooks to ``hooks``), running until the block ends; yields the plan's
    targets and the system."""
    plan, targets = write_fanout_plan(directory, hooks.hook_url)
    env = service_env(
        redis_url,
        plan,
        CLARION_SMTP_HOST=smtp.host,
        CLARION_SMTP_PORT=str(smtp.port),
        **overrides,
    )
    system = System(env=env, log_dir=directory)
    try:
        system.start()
        yield targets, system
    finally:
        system.stop()
