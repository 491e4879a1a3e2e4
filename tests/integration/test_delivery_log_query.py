"""Querying the delivery log on a real Valkey: filters, time ranges, cursors, following,
and ``GET /v1/deliveries`` / ``GET /metrics`` over HTTP."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import httpx
import pytest
import structlog
from fastapi import FastAPI
from redis.asyncio import Redis

from services.dispatcher import delivery_query
from services.dispatcher.delivery_log import DeliveryLog
from services.dispatcher.delivery_query import (
    DeliveryPage,
    DeliveryQuery,
    QueryError,
    StreamId,
    decode_cursor,
    incident_index_key,
    parse_id,
)
from services.dispatcher.delivery_routes import deliveries_router, metrics_router
from services.dispatcher.metrics import DispatcherMetrics
from shared.contracts import DeliveryRecorded, DeliveryStatus
from shared.http_errors import install_error_handlers
from shared.logs import redact_processor
from shared.settings import Settings
from shared.streams import DELIVERY_LOG

pytestmark = pytest.mark.integration

T0 = datetime(2026, 11, 23, 14, 30, tzinfo=UTC)
TOKEN = "ops-token"


def record(
    n: int,
    incident_id: str = "inc-1",
    *,
    channel: str = "email",
    status: DeliveryStatus = DeliveryStatus.SENT,
    audience: str = "customers",
    at: datetime | None = None,
    **extra: Any,
) -> DeliveryRecorded:
    """Delivery ``d-n``, recorded at T0 + n seconds unless ``at`` says otherwise."""
    recorded = at or T0 + timedelta(seconds=n)
    values: dict[str, Any] = {
        "delivery_id": f"d-{n}",
        "incident_id": incident_id,
        "event_id": f"ev-{n}",
        "channel": channel,
        "recipient": "alice@example.com",
        "status": status,
        "attempt": 1,
        "audience": audience,
        "started_at": recorded - timedelta(milliseconds=40),
        "recorded_at": recorded,
    }
    return DeliveryRecorded.model_validate(values | extra)


def ids(page: DeliveryPage | list[DeliveryRecorded]) -> list[str]:
    records = page.deliveries if isinstance(page, DeliveryPage) else page
    return [r.delivery_id for r in records]


async def stream_ids(redis: Redis, key: str) -> list[StreamId]:
    return [parse_id(entry_id) for entry_id, _ in await redis.xrange(key) or ()]


async def write(log: DeliveryLog, *records: DeliveryRecorded) -> None:
    for one in records:
        await log.record(one)


# --- the query model --------------------------------------------------------------------


async def test_pages_walk_the_whole_log_newest_first_exactly_once(redis: Redis) -> None:
    log = DeliveryLog(redis)
    await write(log, *(record(n) for n in range(7)))

    seen: list[str] = []
    pages = 0
    query = DeliveryQuery(limit=3)
    while True:
        page = await log.query(query)
        pages += 1
        seen += ids(page)
        if page.next_cursor is None:
            break
        query = DeliveryQuery(limit=3, before=decode_cursor(page.next_cursor))

    assert seen == [f"d-{n}" for n in reversed(range(7))]
    assert pages == 3


async def test_a_full_last_page_says_nothing_older_is_left(redis: Redis) -> None:
    log = DeliveryLog(redis)
    await write(log, *(record(n) for n in range(4)))

    first = await log.query(DeliveryQuery(limit=2))
    assert first.next_cursor is not None
    second = await log.query(DeliveryQuery(limit=2, before=decode_cursor(first.next_cursor)))

    assert ids(second) == ["d-1", "d-0"]
    assert second.next_cursor is None


async def test_filters_combine_and_repeated_values_match_any(redis: Redis) -> None:
    log = DeliveryLog(redis)
    await write(
        log,
        record(0, channel="email", status=DeliveryStatus.SENT),
        record(1, channel="sms", status=DeliveryStatus.FAILED),
        record(2, channel="email", status=DeliveryStatus.RETRYING, audience="engineering"),
        record(3, channel="slack", status=DeliveryStatus.DEAD, audience="engineering"),
        record(4, "inc-2", channel="email", status=DeliveryStatus.FAILED),
        record(5, channel="email", status=DeliveryStatus.FAILED),
    )

    failing = await log.query(
        DeliveryQuery(
            statuses=frozenset({DeliveryStatus.FAILED, DeliveryStatus.DEAD}),
            channels=frozenset({"email", "slack"}),
        )
    )
    engineering = await log.query(DeliveryQuery(audiences=frozenset({"engineering"})))
    inc1_email_failed = await log.query(
        DeliveryQuery(
            incident_id="inc-1",
            channels=frozenset({"email"}),
            statuses=frozenset({DeliveryStatus.FAILED}),
        )
    )

    assert ids(failing) == ["d-5", "d-4", "d-3"]
    assert ids(engineering) == ["d-3", "d-2"]
    assert ids(inc1_email_failed) == ["d-5"]
    assert failing.next_cursor is None


async def test_time_range_is_since_inclusive_until_exclusive(redis: Redis) -> None:
    log = DeliveryLog(redis)
    await write(log, *(record(n) for n in range(8)))

    page = await log.query(
        DeliveryQuery(since=T0 + timedelta(seconds=2), until=T0 + timedelta(seconds=5))
    )
    with_incident = await log.query(
        DeliveryQuery(incident_id="inc-1", since=T0 + timedelta(seconds=6))
    )
    # Any time zone: 15:30:03 CET is 14:30:03 UTC.
    cet = timezone(timedelta(hours=1))
    zoned = await log.query(DeliveryQuery(until=datetime(2026, 11, 23, 15, 30, 2, tzinfo=cet)))

    assert ids(page) == ["d-4", "d-3", "d-2"]
    assert ids(with_incident) == ["d-7", "d-6"]
    assert ids(zoned) == ["d-1", "d-0"]


async def test_the_incident_filter_reads_the_incident_index_not_the_whole_log(
    redis: Redis,
) -> None:
    log = DeliveryLog(redis)
    await write(log, record(0, "inc-a"), record(1, "inc-a"))
    await write(log, *(record(n, "inc-b") for n in range(2, 300)))
    await write(log, record(300, "inc-a"))

    only_a = await log.query(DeliveryQuery(incident_id="inc-a", limit=10))
    index = await stream_ids(redis, incident_index_key("inc-a"))
    await redis.delete(incident_index_key("inc-a"))
    without_index = await log.query(DeliveryQuery(incident_id="inc-a", limit=10))

    assert ids(only_a) == ["d-300", "d-1", "d-0"]
    assert only_a.next_cursor is None
    log_ids = await stream_ids(redis, DELIVERY_LOG)
    assert index == [log_ids[0], log_ids[1], log_ids[-1]]  # the ids of the incident's records
    assert without_index.deliveries == []  # it was the index, not a scan, that found them


async def test_entry_ids_are_the_recording_time_and_keep_increasing_when_a_clock_lags(
    redis: Redis,
) -> None:
    log = DeliveryLog(redis)
    await write(log, record(0), record(10), record(5))  # the third clock is 5 s behind

    entry_ids = await stream_ids(redis, DELIVERY_LOG)
    t0_ms = int(T0.timestamp() * 1000)

    assert [ms for ms, _ in entry_ids[:2]] == [t0_ms, t0_ms + 10_000]
    assert entry_ids[2] == (t0_ms + 10_000, 1)  # right after the newest, not refused
    newest = await log.query(DeliveryQuery(limit=1))
    assert ids(newest) == ["d-5"]


async def test_a_page_reads_a_bounded_number_of_entries_and_says_where_to_go_on(
    redis: Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(delivery_query, "SCAN_BUDGET", 40)
    monkeypatch.setattr(delivery_query, "SCAN_BATCH", 15)
    log = DeliveryLog(redis)
    await write(log, record(0, status=DeliveryStatus.DEAD))
    await write(log, *(record(n) for n in range(1, 100)))
    dead = DeliveryQuery(statuses=frozenset({DeliveryStatus.DEAD}), limit=5)

    pages = []
    query = dead
    while True:
        page = await log.query(query)
        pages.append(page)
        if page.next_cursor is None:
            break
        query = DeliveryQuery(
            statuses=dead.statuses, limit=5, before=decode_cursor(page.next_cursor)
        )

    assert [ids(p) for p in pages] == [[], [], ["d-0"]]  # 40 + 40 + 20 entries read


async def test_following_with_after_misses_nothing_and_repeats_nothing(redis: Redis) -> None:
    log = DeliveryLog(redis)
    await write(log, record(0), record(1, channel="sms"))
    history = await log.query(DeliveryQuery(channels=frozenset({"email"})))
    email = frozenset({"email"})

    await write(log, record(2), record(3, channel="sms"), record(4))
    first = await log.query(
        DeliveryQuery(channels=email, after=decode_cursor(history.follow_cursor))
    )
    assert first.next_cursor is not None
    idle = await log.query(DeliveryQuery(channels=email, after=decode_cursor(first.next_cursor)))
    assert idle.next_cursor is not None
    await write(log, record(5, channel="sms"), record(6), record(7))
    second = await log.query(
        DeliveryQuery(channels=email, after=decode_cursor(idle.next_cursor), limit=1)
    )
    assert second.next_cursor is not None
    third = await log.query(DeliveryQuery(channels=email, after=decode_cursor(second.next_cursor)))

    assert ids(history) == ["d-0"]
    assert ids(first) == ["d-2", "d-4"]  # oldest first
    assert idle.deliveries == []
    assert idle.next_cursor == first.next_cursor  # nothing new: the same place
    assert ids(second) == ["d-6"]
    assert ids(third) == ["d-7"]
    assert first.follow_cursor == first.next_cursor


async def test_following_an_empty_log_starts_at_its_beginning(redis: Redis) -> None:
    log = DeliveryLog(redis)
    empty = await log.query(DeliveryQuery())
    await write(log, record(0), record(1))

    followed = await log.query(DeliveryQuery(after=decode_cursor(empty.follow_cursor)))

    assert empty.deliveries == []
    assert empty.next_cursor is None
    assert ids(followed) == ["d-0", "d-1"]


@pytest.mark.parametrize(
    ("values", "field"),
    [
        ({"limit": 0}, "limit"),
        ({"limit": 1001}, "limit"),
        ({"since": T0, "until": T0}, "until"),
        ({"since": datetime(2026, 11, 23, 14, 30)}, "since"),
        ({"before": (1, 0), "after": (1, 0)}, "after"),
    ],
)
def test_invalid_queries_name_the_parameter(values: dict[str, Any], field: str) -> None:
    with pytest.raises(QueryError) as caught:
        DeliveryQuery(**values)

    assert caught.value.field == field


# --- recording: redaction, the canonical log line, metrics -------------------------------


async def test_each_attempt_is_one_redacted_canonical_log_line_and_counted(
    redis: Redis,
) -> None:
    metrics = DispatcherMetrics()
    log = DeliveryLog(redis, metrics)
    with structlog.testing.capture_logs(processors=[redact_processor]) as logs:
        await log.record(
            record(
                1,
                channel="sms",
                recipient="+14155550100",
                status=DeliveryStatus.RETRYING,
                error="Twilio 20429 for +14155550100",
                latency_ms=123.456,
                note="an earlier attempt was interrupted mid-send; alice@example.com may have it",
                possible_duplicate=True,
                next_attempt_at=T0 + timedelta(minutes=1),
            )
        )
        await log.record(record(2, note="no credentials: sent to the local outbox"))

    lines = [line for line in logs if line["event"] == "delivery.attempt"]
    assert len(lines) == 2
    first = lines[0]
    assert first["log_level"] == "warning"
    assert (first["channel"], first["status"], first["attempt"]) == ("sms", "retrying", 1)
    assert first["recipient"] == "+*******0100"
    assert first["error"] == "Twilio 20429 for +*******0100"
    assert first["latency_ms"] == 123.5
    assert first["possible_duplicate"] is True
    assert "alice@example.com" not in first["note"]
    assert first["next_attempt_at"] == "2026-11-23T14:31:00+00:00"
    assert lines[1]["note"] == "no credentials: sent to the local outbox"
    assert lines[1]["latency_ms"] is None
    assert "4155550100" not in str(await redis.xrange(DELIVERY_LOG))
    assert "alice@example.com" not in str(await redis.xrange(DELIVERY_LOG))
    registry = metrics.registry
    assert (
        registry.get_sample_value(
            "clarion_delivery_attempts_total", {"channel": "sms", "status": "retrying"}
        )
        == 1
    )
    assert (
        registry.get_sample_value("clarion_delivery_latency_seconds_count", {"channel": "sms"}) == 1
    )
    assert (
        registry.get_sample_value("clarion_delivery_possible_duplicates_total", {"channel": "sms"})
        == 1
    )


# --- over HTTP ---------------------------------------------------------------------------


@dataclass(frozen=True)
class ApiState:
    """What the delivery routes read from the dispatcher's state."""

    settings: Settings
    delivery_log: DeliveryLog


@pytest.fixture
async def api(
    redis: Redis, make_settings: Callable[..., Settings]
) -> AsyncIterator[tuple[httpx.AsyncClient, DeliveryLog]]:
    """The delivery routes as the dispatcher mounts them, with an ops token."""
    app = FastAPI()
    install_error_handlers(app)
    app.include_router(deliveries_router)
    app.include_router(metrics_router)
    log = DeliveryLog(redis, DispatcherMetrics())
    app.state.dispatcher = ApiState(make_settings(ops_token=TOKEN), log)
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(
        transport=transport,
        base_url="http://dispatcher",
        headers={"Authorization": f"Bearer {TOKEN}"},
    ) as client:
        yield client, log


async def test_get_deliveries_filters_and_pages(
    api: tuple[httpx.AsyncClient, DeliveryLog],
) -> None:
    client, log = api
    await write(
        log,
        record(0, status=DeliveryStatus.FAILED, error="SMTP 550 for alice@example.com"),
        record(1, channel="sms", status=DeliveryStatus.FAILED),
        record(2, status=DeliveryStatus.SENT, latency_ms=80.0, provider_message_id="<m2@x>"),
        record(3, status=DeliveryStatus.DEAD),
        record(4, "inc-2", status=DeliveryStatus.FAILED),
    )
    params: dict[str, Any] = {
        "incident_id": "inc-1",
        "channel": "email",
        "status": ["failed", "dead"],
        "limit": 1,
    }

    first = await client.get("/v1/deliveries", params=params)
    body = first.json()
    second = await client.get("/v1/deliveries", params=params | {"before": body["next_cursor"]})
    ranged = await client.get(
        "/v1/deliveries",
        params={"since": "2026-11-23T14:30:01Z", "until": "2026-11-23T15:30:03+01:00"},
    )

    assert first.status_code == 200
    assert set(body) == {"deliveries", "next_cursor", "follow_cursor"}
    assert [d["delivery_id"] for d in body["deliveries"]] == ["d-3"]
    assert second.json()["deliveries"][0]["delivery_id"] == "d-0"
    assert second.json()["deliveries"][0]["error"] == "SMTP 550 for a***@example.com"
    assert second.json()["next_cursor"] is None
    [sent, _sms] = ranged.json()["deliveries"]
    assert (sent["delivery_id"], sent["latency_ms"], sent["provider_message_id"]) == (
        "d-2",
        80.0,
        "<m2@x>",
    )
    assert sent["recipient"] == "a***@example.com"


async def test_get_deliveries_follows_with_after(
    api: tuple[httpx.AsyncClient, DeliveryLog],
) -> None:
    client, log = api
    await write(log, record(0))
    history = (await client.get("/v1/deliveries")).json()
    await write(log, record(1), record(2, status=DeliveryStatus.FAILED), record(3))

    followed = await client.get(
        "/v1/deliveries", params={"after": history["follow_cursor"], "status": "sent"}
    )

    assert [d["delivery_id"] for d in followed.json()["deliveries"]] == ["d-1", "d-3"]
    assert followed.json()["next_cursor"]


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"limit": "0"}, "query.limit"),
        ({"limit": "1001"}, "query.limit"),
        ({"limit": "many"}, "query.limit"),
        ({"status": "delivered"}, "query.status.0"),
        ({"since": "yesterday"}, "query.since"),
        ({"since": "2026-11-23T14:30:00"}, "query.since"),  # no time zone
        ({"since": "2026-11-23T15:00:00Z", "until": "2026-11-23T14:00:00Z"}, "query.until"),
        ({"before": "not-a-cursor"}, "query.before"),
        ({"after": "bm90LWEtY3Vyc29y"}, "query.after"),
        ({"before": "YzE6MS0w", "after": "YzE6MS0w"}, "query.after"),
    ],
)
async def test_bad_parameters_are_a_422_naming_the_field(
    api: tuple[httpx.AsyncClient, DeliveryLog], params: dict[str, str], field: str
) -> None:
    client, _ = api

    response = await client.get("/v1/deliveries", params=params)

    assert response.status_code == 422
    error = response.json()["error"]
    assert error["code"] == "invalid_payload"
    assert [f["field"] for f in error["fields"]] == [field]


async def test_deliveries_need_the_ops_token_and_metrics_do_not(
    api: tuple[httpx.AsyncClient, DeliveryLog],
) -> None:
    client, log = api
    await write(log, record(0, latency_ms=250.0), record(1, status=DeliveryStatus.DEAD))

    refused = await client.get("/v1/deliveries", headers={"Authorization": "Bearer wrong"})
    scraped = await client.get("/metrics", headers={"Authorization": ""})

    assert refused.status_code == 401
    assert refused.json()["error"]["code"] == "unauthorized"
    assert scraped.status_code == 200
    assert scraped.headers["content-type"].startswith("text/plain")
    text = scraped.text
    assert 'clarion_delivery_attempts_total{channel="email",status="sent"} 1.0' in text
    assert 'clarion_delivery_attempts_total{channel="email",status="dead"} 1.0' in text
    assert 'clarion_delivery_latency_seconds_bucket{channel="email",le="0.25"} 1.0' in text
    assert 'clarion_delivery_latency_seconds_bucket{channel="email",le="0.1"} 0.0' in text
