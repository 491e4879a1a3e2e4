from __future__ import annotations

import base64
import json
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import structlog
from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from services.ingest.credentials import known_secrets
from services.ingest.metrics import IngestMetrics
from services.ingest.rejections import (
    BODY_EXCERPT_BYTES,
    Rejection,
    RejectionLog,
)
from shared.clock import ManualClock
from shared.errors import (
    BodyTooLarge,
    InvalidPayload,
    MalformedBody,
    RateLimited,
    RetryableFailure,
    Unauthorized,
)
from shared.logs import redact_processor
from shared.settings import Settings
from shared.streams import REJECTIONS
from tests.support.smtp import free_port

pytestmark = pytest.mark.integration

T0 = datetime(2026, 11, 23, 14, 31, tzinfo=UTC)
INGEST_TOKEN = "ingest-t0ken-4f2a9c"
BASIC_PASSWORD = "b4sic-pa55word"
HMAC_SECRET = "gr4fana-hmac-s3cret"
ROUTING_KEY = "R0UTING0KEY0123456789"
WHSEC = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
EMAIL = "alice.smith@example.com"
PHONE = "+447700900123"
SECRETS = (INGEST_TOKEN, BASIC_PASSWORD, HMAC_SECRET, ROUTING_KEY, WHSEC)


def settings() -> Settings:
    return Settings(
        _env_file=None,
        ingest_token=INGEST_TOKEN,
        alertmanager_basic_auth=f"clarion:{BASIC_PASSWORD}",
        grafana_hmac_secret=HMAC_SECRET,
        generic_webhook_secret=WHSEC,
        pagerduty_routing_keys=ROUTING_KEY,
    )


def rejection_log(
    redis: Redis, size: int = 3, metrics: IngestMetrics | None = None, clock: Any = None
) -> RejectionLog:
    return RejectionLog(
        redis,
        size,
        metrics=metrics or IngestMetrics(),
        secrets=known_secrets(settings()),
        clock=clock or ManualClock(T0),
    )


async def record(log: RejectionLog, n: int = 0, body: bytes | None = b"{}", **kw: Any) -> Rejection:
    values: dict[str, Any] = {
        "source": "grafana",
        "status": 401,
        "reason": "unauthorized",
        "message": f"rejection {n}",
        "client": "203.0.113.7",
        "body": body,
    }
    return await log.record(**{**values, **kw})


async def test_the_sample_is_capped_and_newest_first(redis: Redis) -> None:
    clock = ManualClock(T0)
    log = rejection_log(redis, size=3, clock=clock)
    for n in range(5):
        await record(log, n)
        clock.advance(timedelta(seconds=1))

    recent = await log.recent(10)

    assert [r.message for r in recent] == ["rejection 4", "rejection 3", "rejection 2"]
    assert [r.at for r in recent] == [T0 + timedelta(seconds=s) for s in (4, 3, 2)]
    assert await redis.llen(REJECTIONS) == 3
    assert [r.message for r in await log.recent(2)] == ["rejection 4", "rejection 3"]


async def test_a_record_holds_what_an_operator_needs(redis: Redis) -> None:
    log = rejection_log(redis)
    await record(log, body=b'{"alerts": [1, 2]}', status=422, reason="invalid_payload")

    [stored] = await log.recent(1)

    assert stored == Rejection(
        at=T0,
        source="grafana",
        status=422,
        reason="invalid_payload",
        message="rejection 0",
        client="203.0.113.7",
        content_length=18,
        body_excerpt='{"alerts": [1, 2]}',
    )


async def test_no_secret_or_personal_data_is_stored_or_logged(redis: Redis) -> None:
    body = json.dumps(
        {
            "routing_key": ROUTING_KEY,
            "payload": {"summary": f"page {EMAIL} or {PHONE}", "source": "db-1"},
            "client_url": f"https://hooks.example.com/x?token={INGEST_TOKEN}",
            "note": f"pasted {HMAC_SECRET} and {WHSEC} by mistake",
            "auth": "Basic " + base64.b64encode(f"clarion:{BASIC_PASSWORD}".encode()).decode(),
            "password": BASIC_PASSWORD,
        }
    ).encode()
    log = rejection_log(redis)

    with structlog.testing.capture_logs(processors=[redact_processor]) as logs:
        await record(log, body=body, message=f"wrong token {INGEST_TOKEN} from {EMAIL}")

    raw = await redis.lrange(REJECTIONS, 0, -1)
    stored = "".join(r.decode() if isinstance(r, bytes) else r for r in raw)
    logged = json.dumps(logs)
    for leak in (*SECRETS, WHSEC.removeprefix("whsec_"), EMAIL, PHONE):
        assert leak not in stored
        assert leak not in logged
    assert "db-1" in stored  # the harmless rest stays readable
    assert "a***@example.com" in stored
    assert [e["event"] for e in logs] == ["ingest.rejected"]
    assert "body" not in logs[0]


async def test_a_secret_cut_by_the_excerpt_does_not_leak_a_prefix(redis: Redis) -> None:
    log = rejection_log(redis)
    body = b"x" * (BODY_EXCERPT_BYTES - 6) + INGEST_TOKEN.encode() + b"y" * 100

    stored = await record(log, body=body)

    assert INGEST_TOKEN[:6] not in stored.body_excerpt
    assert len(stored.body_excerpt.encode()) <= BODY_EXCERPT_BYTES


async def test_big_and_binary_bodies_are_cut_and_decoded_safely(redis: Redis) -> None:
    log = rejection_log(redis)
    body = b"\xff\xfe" + b"a" * 10_000

    stored = await record(log, body=body, status=413, reason="payload_too_large")

    assert stored.content_length == len(body)
    assert stored.body_excerpt.startswith("\ufffd\ufffdaaa")
    assert len(stored.body_excerpt.encode()) <= BODY_EXCERPT_BYTES
    unread = await record(log, body=None, content_length=5_000_000)
    assert (unread.content_length, unread.body_excerpt) == (5_000_000, "")


@pytest.mark.parametrize(
    ("error", "status", "reason"),
    [
        (Unauthorized("wrong token (Bearer)"), 401, "unauthorized"),
        (RateLimited(3), 429, "rate_limited"),
        (BodyTooLarge("over 1024 bytes"), 413, "payload_too_large"),
        (MalformedBody("not JSON"), 400, "invalid_json"),
        (InvalidPayload([]), 422, "invalid_payload"),
    ],
)
async def test_record_error_maps_client_errors(
    redis: Redis, error: Exception, status: int, reason: str
) -> None:
    metrics = IngestMetrics()
    log = rejection_log(redis, metrics=metrics)

    stored = await log.record_error(error, source="datadog", client="192.0.2.1", body=b"{}")

    assert stored is not None
    assert (stored.status, stored.reason, stored.message) == (status, reason, str(error))
    labels = {"source": "datadog", "reason": reason}
    assert metrics.registry.get_sample_value("clarion_ingest_rejected_total", labels) == 1


async def test_record_error_ignores_what_is_not_the_clients_fault(redis: Redis) -> None:
    log = rejection_log(redis)
    assert await log.record_error(RetryableFailure("down"), source="sns", client=None) is None
    assert await redis.llen(REJECTIONS) == 0


async def test_the_counter_counts_even_without_a_sample(redis: Redis) -> None:
    metrics = IngestMetrics()
    log = rejection_log(redis, size=0, metrics=metrics)
    for _ in range(3):
        await record(log)
    await record(log, source="sns", reason="forbidden", status=403)

    assert await redis.llen(REJECTIONS) == 0
    sample = metrics.registry.get_sample_value
    assert sample("clarion_ingest_rejected_total", {"source": "grafana", "reason": "unauthorized"})
    assert (
        sample("clarion_ingest_rejected_total", {"source": "grafana", "reason": "unauthorized"})
        == 3
    )
    assert sample("clarion_ingest_rejected_total", {"source": "sns", "reason": "forbidden"}) == 1


async def test_metrics_of_two_apps_do_not_collide() -> None:
    first, second = IngestMetrics(), IngestMetrics()
    first.count_accepted("alertmanager", 4)
    second.observe_request("alertmanager", 202, 0.01)

    assert (
        first.registry.get_sample_value(
            "clarion_ingest_alerts_accepted_total", {"source": "alertmanager"}
        )
        == 4
    )
    assert (
        second.registry.get_sample_value(
            "clarion_ingest_alerts_accepted_total", {"source": "alertmanager"}
        )
        is None
    )
    text, content_type = second.exposition()
    assert b"clarion_ingest_request_duration_seconds_count" in text
    assert content_type.startswith("text/plain")


async def test_redis_being_down_does_not_break_a_rejection() -> None:
    down = Redis(
        host="127.0.0.1", port=free_port(), socket_connect_timeout=1, retry=Retry(NoBackoff(), 0)
    )
    metrics = IngestMetrics()
    try:
        stored = await record(rejection_log(down, metrics=metrics))
    finally:
        await down.aclose()
    assert stored.status == 401
    assert (
        metrics.registry.get_sample_value(
            "clarion_ingest_rejected_total", {"source": "grafana", "reason": "unauthorized"}
        )
        == 1
    )


def test_sizes_and_limits_are_validated() -> None:
    with pytest.raises(ValueError, match="negative"):
        RejectionLog(Redis(), -1)
