"""Prometheus metrics of the scheduler, in a registry of their own.

One :class:`SchedulerMetrics` per scheduler: several in one process (tests) never
register the same metric twice, and nothing goes to the global default registry.
``kind`` is the kind of due item: ``update``, ``resolution``, ``approval``,
``retry``, and any kind a :class:`~services.scheduler.timers.TimerFirer` is named.

- ``clarion_scheduler_scheduled_items{kind}``: items in each schedule (its sorted
  set's size, leased ones included), refreshed on every tick.
- ``clarion_scheduler_fired_total{kind}``: due events published.
- ``clarion_scheduler_lateness_seconds{kind}``: how long after its due time each
  item fired (after a restart: how long it waited for a scheduler).
- ``clarion_scheduler_tick_failures_total``: ticks that failed and were retried.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import timedelta
from typing import Final

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)

LATENESS_BUCKETS: Final = (
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    0.75,
    1.0,
    2.0,
    5.0,
    10.0,
    30.0,
    60.0,
)
"""Seconds: on time is a tick or less (1 s by default, the p99 target); a crashed
instance's items wait out a lease (30 s by default); beyond a minute is an outage."""


class SchedulerMetrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        self.scheduled = Gauge(
            "clarion_scheduler_scheduled_items",
            "Items in each schedule, leased ones included, by kind.",
            ["kind"],
            registry=self.registry,
        )
        self.fired = Counter(
            "clarion_scheduler_fired",
            "Due events published, by kind.",
            ["kind"],
            registry=self.registry,
        )
        self.lateness = Histogram(
            "clarion_scheduler_lateness_seconds",
            "How long after its due time an item fired, by kind.",
            ["kind"],
            buckets=LATENESS_BUCKETS,
            registry=self.registry,
        )
        self.tick_failures = Counter(
            "clarion_scheduler_tick_failures",
            "Ticks that failed (and were tried again on the next one).",
            registry=self.registry,
        )

    def observe_fired(self, kind: str, late: timedelta) -> None:
        """One due event of ``kind`` published ``late`` after its due time."""
        self.fired.labels(kind=kind).inc()
        self.lateness.labels(kind=kind).observe(max(late.total_seconds(), 0.0))

    def set_scheduled(self, counts: Mapping[str, int]) -> None:
        """The size of each kind's schedule now."""
        for kind, count in counts.items():
            self.scheduled.labels(kind=kind).set(count)

    def tick_failed(self) -> None:
        self.tick_failures.inc()

    def exposition(self) -> tuple[bytes, str]:
        """The text a ``/metrics`` endpoint answers, and its content type."""
        return generate_latest(self.registry), CONTENT_TYPE_LATEST
