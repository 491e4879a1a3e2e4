"""The scheduler's Prometheus metrics: names, labels, buckets, and a registry per instance."""

from __future__ import annotations

from datetime import timedelta

import pytest
from prometheus_client import CollectorRegistry

from services.scheduler.metrics import LATENESS_BUCKETS, SchedulerMetrics


def value(metrics: SchedulerMetrics, name: str, **labels: str) -> float | None:
    return metrics.registry.get_sample_value(name, labels)


def test_a_fire_counts_by_kind_and_lands_in_its_lateness_bucket() -> None:
    metrics = SchedulerMetrics()

    metrics.observe_fired("update", timedelta(milliseconds=300))
    metrics.observe_fired("update", timedelta(seconds=45))
    metrics.observe_fired("retry", timedelta(0))

    assert value(metrics, "clarion_scheduler_fired_total", kind="update") == 2
    assert value(metrics, "clarion_scheduler_fired_total", kind="retry") == 1
    bucket = "clarion_scheduler_lateness_seconds_bucket"
    assert value(metrics, bucket, kind="update", le="0.25") == 0
    assert value(metrics, bucket, kind="update", le="0.5") == 1
    assert value(metrics, bucket, kind="update", le="30.0") == 1
    assert value(metrics, bucket, kind="update", le="60.0") == 2
    assert value(metrics, "clarion_scheduler_lateness_seconds_sum", kind="update") == pytest.approx(
        45.3
    )
    assert value(metrics, "clarion_scheduler_lateness_seconds_count", kind="retry") == 1


def test_lateness_is_never_negative() -> None:
    metrics = SchedulerMetrics()

    metrics.observe_fired("approval", timedelta(milliseconds=-2))

    assert value(metrics, "clarion_scheduler_lateness_seconds_sum", kind="approval") == 0
    bucket = "clarion_scheduler_lateness_seconds_bucket"
    assert value(metrics, bucket, kind="approval", le="0.01") == 1


def test_lateness_buckets_cover_a_tick_a_lease_and_a_minute() -> None:
    assert list(LATENESS_BUCKETS) == sorted(LATENESS_BUCKETS)
    assert LATENESS_BUCKETS[0] <= 0.01
    assert {1.0, 30.0} <= set(LATENESS_BUCKETS)
    assert LATENESS_BUCKETS[-1] == 60.0


def test_scheduled_items_and_tick_failures() -> None:
    metrics = SchedulerMetrics()

    metrics.set_scheduled({"update": 3, "resolution": 0})
    metrics.set_scheduled({"update": 2})
    metrics.tick_failed()
    metrics.tick_failed()

    assert value(metrics, "clarion_scheduler_scheduled_items", kind="update") == 2
    assert value(metrics, "clarion_scheduler_scheduled_items", kind="resolution") == 0
    assert value(metrics, "clarion_scheduler_tick_failures_total") == 2


def test_each_instance_has_its_own_registry() -> None:
    first, second = SchedulerMetrics(), SchedulerMetrics()

    first.observe_fired("update", timedelta(seconds=1))

    assert first.registry is not second.registry
    assert value(second, "clarion_scheduler_fired_total", kind="update") is None


def test_exposition_is_prometheus_text_with_every_metric() -> None:
    registry = CollectorRegistry()
    metrics = SchedulerMetrics(registry)
    metrics.observe_fired("resolution", timedelta(seconds=2))
    metrics.set_scheduled({"resolution": 1})

    body, content_type = metrics.exposition()

    assert metrics.registry is registry
    assert content_type.startswith("text/plain")
    text = body.decode()
    for line in (
        'clarion_scheduler_scheduled_items{kind="resolution"} 1.0',
        'clarion_scheduler_fired_total{kind="resolution"} 1.0',
        'clarion_scheduler_lateness_seconds_bucket{kind="resolution",le="2.0"} 1.0',
        "clarion_scheduler_tick_failures_total 0.0",
    ):
        assert line in text.splitlines(), line
