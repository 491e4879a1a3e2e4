"""The dispatcher's Prometheus metrics, each app in a registry of its own."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from services.dispatcher.metrics import DispatcherMetrics
from shared.contracts import DeliveryRecorded, DeliveryStatus

T0 = datetime(2026, 11, 23, 14, 30, tzinfo=UTC)


def attempt(channel: str, status: DeliveryStatus, **extra: Any) -> DeliveryRecorded:
    values: dict[str, Any] = {
        "delivery_id": "d-1",
        "incident_id": "inc-1",
        "event_id": "ev-1",
        "channel": channel,
        "recipient": "a***@example.com",
        "status": status,
        "attempt": 1,
        "started_at": T0,
        "recorded_at": T0,
    }
    return DeliveryRecorded.model_validate(values | extra)


def test_attempts_are_counted_by_channel_and_status() -> None:
    metrics = DispatcherMetrics(CollectorRegistry())

    metrics.observe(attempt("email", DeliveryStatus.SENT, latency_ms=40.0))
    metrics.observe(attempt("email", DeliveryStatus.SENT, latency_ms=60.0))
    metrics.observe(attempt("email", DeliveryStatus.DEAD))
    metrics.observe(attempt("sms", DeliveryStatus.RETRYING, latency_ms=2_000.0))

    value = metrics.registry.get_sample_value
    assert value("clarion_delivery_attempts_total", {"channel": "email", "status": "sent"}) == 2
    assert value("clarion_delivery_attempts_total", {"channel": "email", "status": "dead"}) == 1
    assert value("clarion_delivery_attempts_total", {"channel": "sms", "status": "retrying"}) == 1
    assert value("clarion_delivery_attempts_total", {"channel": "sms", "status": "sent"}) is None


def test_latency_is_observed_in_seconds_only_when_a_provider_was_called() -> None:
    metrics = DispatcherMetrics()

    metrics.observe(attempt("email", DeliveryStatus.SENT, latency_ms=40.0))
    metrics.observe(attempt("email", DeliveryStatus.SENT, latency_ms=300.0))
    metrics.observe(attempt("email", DeliveryStatus.HELD))  # no provider call: no latency
    metrics.observe(attempt("email", DeliveryStatus.QUEUED))

    value = metrics.registry.get_sample_value
    assert value("clarion_delivery_latency_seconds_count", {"channel": "email"}) == 2
    assert value("clarion_delivery_latency_seconds_sum", {"channel": "email"}) == pytest.approx(
        0.34
    )
    assert value("clarion_delivery_latency_seconds_bucket", {"channel": "email", "le": "0.05"}) == 1
    assert value("clarion_delivery_latency_seconds_bucket", {"channel": "email", "le": "0.5"}) == 2


def test_possible_duplicates_are_counted() -> None:
    metrics = DispatcherMetrics()

    metrics.observe(attempt("sms", DeliveryStatus.SENT, possible_duplicate=True))
    metrics.observe(attempt("sms", DeliveryStatus.SENT))

    value = metrics.registry.get_sample_value
    assert value("clarion_delivery_possible_duplicates_total", {"channel": "sms"}) == 1


def test_two_dispatchers_in_one_process_count_apart() -> None:
    first, second = DispatcherMetrics(), DispatcherMetrics()

    first.observe(attempt("slack", DeliveryStatus.FAILED))

    labels = {"channel": "slack", "status": "failed"}
    assert first.registry.get_sample_value("clarion_delivery_attempts_total", labels) == 1
    assert second.registry.get_sample_value("clarion_delivery_attempts_total", labels) is None


def test_the_exposition_is_prometheus_text() -> None:
    metrics = DispatcherMetrics()
    metrics.observe(attempt("mastodon", DeliveryStatus.SENT, latency_ms=120.0))

    body, content_type = metrics.exposition()

    text = body.decode()
    assert content_type.startswith("text/plain;")
    assert "# TYPE clarion_delivery_attempts_total counter" in text
    assert "# TYPE clarion_delivery_latency_seconds histogram" in text
    assert 'clarion_delivery_attempts_total{channel="mastodon",status="sent"} 1.0' in text
    assert 'clarion_delivery_latency_seconds_bucket{channel="mastodon",le="0.25"} 1.0' in text
