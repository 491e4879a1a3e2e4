"""The whole system as three processes: an Alertmanager webhook in, emails out."""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta
from email.message import EmailMessage
from typing import Any, cast

import httpx
import pytest
from redis.asyncio import Redis

from shared.contracts import Severity, UpdateDue
from shared.streams import (
    DELIVERY_LOG,
    DISPATCHER_GROUP,
    INCIDENT_EVENTS,
    SCHEDULE_ITEMS,
    SCHEDULER_HEARTBEAT,
    UPDATES_DUE,
    delivery_stream,
)
from tests.conftest import FIXTURES
from tests.e2e.conftest import AUTH
from tests.support.processes import System
from tests.support.smtp import SmtpServer
from tests.support.streams import stream_bodies, stream_json
from tests.support.waiting import eventually

pytestmark = pytest.mark.e2e

FIRING = (FIXTURES / "alertmanager_webhook_v4_firing.json").read_bytes()
RESOLVED = (FIXTURES / "alertmanager_webhook_v4_resolved.json").read_bytes()


def _text(message: EmailMessage) -> str:
    part = message.get_body(preferencelist=("plain",))
    assert part is not None, "email has no text/plain part"
    return cast(str, part.get_content())


async def _post(client: httpx.AsyncClient, system: System, body: bytes) -> dict[str, Any]:
    response = await client.post(
        f"{system.ingest_url}/v1/alerts/alertmanager",
        content=body,
        headers={**AUTH, "Content-Type": "application/json"},
    )
    assert response.status_code == 202, response.text
    return cast(dict[str, Any], response.json())


async def _updates_due(redis: Redis, incident_id: str) -> list[UpdateDue]:
    dues = [UpdateDue.model_validate_json(b) for b in await stream_bodies(redis, UPDATES_DUE)]
    return [d for d in dues if d.incident_id == incident_id]


async def _ticks(redis: Redis) -> int:
    return int(await redis.hget(SCHEDULER_HEARTBEAT, "ticks") or 0)


async def test_an_alert_flows_from_webhook_to_email_status_page_and_delivery_log(
    redis: Redis, smtp_server: SmtpServer, make_system: Callable[..., System]
) -> None:
    system = make_system()
    system.start()
    mailbox = smtp_server.mailbox
    async with httpx.AsyncClient(timeout=10) as client:
        accepted = await _post(client, system, FIRING)
        incident_id = accepted["incident_id"]
        assert "incident.opened" in accepted["events"]

        # One opening email per recipient, saying what a customer needs to know.
        opened = mailbox.wait_for(lambda ms: len(ms) >= 2, timeout=30.0)[:2]
        assert sorted(m["X-Envelope-To"] for m in opened) == [
            "alice@example.com",
            "bob@example.org",
        ]
        text = _text(opened[0])
        assert "sorry" in text.lower() or "apolog" in text.lower()
        assert "UTC" in text
        assert system.dispatcher_url + "/status" in text
        assert opened[0]["Message-ID"]

        # The status page shows the incident; the delivery log records the sends.
        status = await client.get(f"{system.dispatcher_url}/status")
        assert status.status_code == 200
        assert "High 5xx error rate" in status.text or "checkout" in status.text.lower()

        async def email_deliveries() -> list[dict[str, Any]]:
            r = await client.get(
                f"{system.dispatcher_url}/v1/deliveries", params={"incident_id": incident_id}
            )
            return [
                d
                for d in r.json()["deliveries"]
                if d["channel"] == "email" and d["status"] == "sent"
            ]

        sent = await eventually(email_deliveries, what="email deliveries in the log")
        assert {d["recipient"] for d in sent} == {"a***@example.com", "b***@example.org"}
        assert all(d["incident_id"] == incident_id and d["attempt"] >= 1 for d in sent)

        # While the incident is open, the scheduler keeps updates coming.
        await eventually(lambda: _updates_due(redis, incident_id), what="an update due")
        mailbox.wait_for(lambda ms: len(ms) >= 4, timeout=30.0)

        # Recovery: "monitoring" at once; resolved once the hold (2 s here) is over, through
        # the scheduler and back to ingest. Then a closing email, and the updates stop.
        resolved = await _post(client, system, RESOLVED)
        assert resolved["incident_id"] == incident_id
        assert resolved["events"] == ["incident.updated"]
        before_resolution = len(mailbox.messages)
        messages = mailbox.wait_for(
            lambda ms: any("resolved" in (m["Subject"] or "").lower() for m in ms), timeout=30.0
        )
        closing = next(m for m in messages if "resolved" in (m["Subject"] or "").lower())
        assert "sorry" in _text(closing).lower() or "apolog" in _text(closing).lower()

        async def unscheduled() -> bool:
            return not await redis.hexists(SCHEDULE_ITEMS, incident_id)

        await eventually(unscheduled, what="the scheduler dropping the incident")
        fired = len(await _updates_due(redis, incident_id))
        ticks = await _ticks(redis)

        # Three cadences' worth of scheduler ticks (3 s cadence, 100 ms tick) pass quietly.
        async def quiet_period_over() -> bool:
            return await _ticks(redis) >= ticks + 90

        await eventually(quiet_period_over, within=60, what="90 more scheduler ticks")
        assert len(await _updates_due(redis, incident_id)) == fired
        since_recovery = mailbox.messages[before_resolution:]
        subjects = [(m["Subject"] or "").lower() for m in since_recovery]
        first_resolved = next(i for i, s in enumerate(subjects) if "resolved" in s)
        monitoring = since_recovery[:first_resolved]
        assert monitoring, "the recovery is announced before the resolution"
        assert all("monitoring" in _text(m).lower() for m in monitoring)
        after = subjects[first_resolved:]
        assert [s for s in after if "update" in s] == [], after


async def _group_caught_up(redis: Redis, stream: str, group: str) -> bool:
    last_entry = await redis.xrevrange(stream, count=1)
    if not last_entry:
        return False
    groups: list[dict[str, Any]] = await redis.xinfo_groups(stream)
    info = next(g for g in groups if g["name"].decode() == group)
    last_id = last_entry[0][0]
    return bool(info["last-delivered-id"] == last_id and info["pending"] == 0)


async def test_a_redelivered_event_sends_exactly_one_email(
    redis: Redis, smtp_server: SmtpServer, make_system: Callable[..., System]
) -> None:
    system = make_system(emails=["alice@example.com"])
    system.start()
    async with httpx.AsyncClient(timeout=10) as client:
        await _post(client, system, FIRING)
    smtp_server.mailbox.wait_for(lambda ms: len(ms) == 1, timeout=30.0)

    # The same incident event arrives again, as after a retried publish.
    entries = cast(list[tuple[bytes, dict[bytes, bytes]]], await redis.xrange(INCIDENT_EVENTS))
    opened_fields = entries[0][1]
    await redis.xadd(INCIDENT_EVENTS, opened_fields)  # type: ignore[arg-type]

    await eventually(
        lambda: _group_caught_up(redis, INCIDENT_EVENTS, DISPATCHER_GROUP),
        what="the dispatcher handling the duplicate",
    )
    opening = [m for m in smtp_server.mailbox.messages if "update" not in m["Subject"].lower()]
    assert len(opening) == 1, [m["Subject"] for m in smtp_server.mailbox.messages]


async def test_a_dispatcher_killed_mid_send_delivers_once_after_restart(
    redis: Redis, smtp_server: SmtpServer, make_system: Callable[..., System]
) -> None:
    system = make_system(
        emails=["alice@example.com"], cadence=dict.fromkeys(Severity, timedelta(hours=1))
    )
    system.start()
    held, release = smtp_server.hold_next()
    async with httpx.AsyncClient(timeout=10) as client:
        await _post(client, system, FIRING)
    assert held.wait(timeout=30), "the dispatcher never reached the SMTP server"

    system["dispatcher"].kill()  # mid-send: the SMTP DATA is in flight
    release.set()  # the server refuses the half-sent message; nothing was delivered
    assert smtp_server.mailbox.messages == []

    system["dispatcher"].start()
    system["dispatcher"].wait_ready()
    smtp_server.mailbox.wait_for(lambda ms: len(ms) >= 1, timeout=30.0)

    async def email_sent() -> list[dict[str, Any]]:
        deliveries = await stream_json(redis, DELIVERY_LOG)
        return [d for d in deliveries if d["channel"] == "email" and d["status"] == "sent"]

    sent = await eventually(email_sent, what="the reclaimed email recorded as sent")
    await eventually(
        lambda: _group_caught_up(redis, delivery_stream("email"), DISPATCHER_GROUP),
        what="the restarted dispatcher finishing the reclaimed job",
    )
    assert len(smtp_server.mailbox.messages) == 1
    assert len(sent) == 1
    assert sent[0]["attempt"] >= 2  # the interrupted try counts
    assert sent[0]["possible_duplicate"] is True  # SMTP takes no idempotency key
    assert "interrupted" in sent[0]["note"]
