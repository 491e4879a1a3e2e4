"""Prometheus metrics of the dispatcher, in a registry of their own.

One :class:`DispatcherMetrics` per dispatcher app: several apps in one process (tests)
never register the same metric twice, and nothing goes to the global default registry.
With several worker processes (``CLARION_DISPATCHER_WORKERS``), ``/metrics`` shows the
sum over the workers (:mod:`shared.worker_metrics`).

- ``clarion_delivery_attempts_total{channel,status}``: every attempt the delivery log
  records. Dead letters are ``status="dead"``: a separate dead-letter counter would
  only repeat that series, so there is none.
- ``clarion_delivery_latency_seconds{channel}``: how long the provider took, for the
  attempts that called one.
- ``clarion_delivery_possible_duplicates_total{channel}``: attempts recorded as
  possibly received twice (an earlier try died mid-send on a channel that cannot
  drop repeats).
"""

from __future__ import annotations

from typing import Final

from prometheus_client import CollectorRegistry, Counter, Histogram

from shared.contracts import DeliveryRecorded
from shared.worker_metrics import exposed_registry, exposition

LATENCY_BUCKETS: Final = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
"""Seconds: webhook posts take tens of milliseconds, a slow SMTP server tens of seconds."""


class DispatcherMetrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        self.attempts = Counter(
            "clarion_delivery_attempts",
            "Delivery attempts recorded in the delivery log, by channel and status.",
            ["channel", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "clarion_delivery_latency_seconds",
            "Time the provider took to answer one delivery attempt, by channel.",
            ["channel"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.possible_duplicates = Counter(
            "clarion_delivery_possible_duplicates",
            "Attempts after one that died mid-send: the recipient may have it twice.",
            ["channel"],
            registry=self.registry,
        )
        self._exposed = exposed_registry(self.registry)

    def observe(self, record: DeliveryRecorded) -> None:
        """Count one recorded attempt (and its latency, when a provider was called)."""
        self.attempts.labels(channel=record.channel, status=record.status.value).inc()
        if record.latency_ms is not None:
            self.latency.labels(channel=record.channel).observe(max(record.latency_ms, 0) / 1000)
        if record.possible_duplicate:
            self.possible_duplicates.labels(channel=record.channel).inc()

    def exposition(self) -> tuple[bytes, str]:
        """The text a ``/metrics`` endpoint answers, and its content type."""
        return exposition(self._exposed)
