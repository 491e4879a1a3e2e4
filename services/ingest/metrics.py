"""Prometheus metrics of the ingest service, in a registry of their own.

One :class:`IngestMetrics` per app: two apps in one process (tests) never
register the same metric twice. With several worker processes
(``CLARION_INGEST_WORKERS``), ``/metrics`` shows the sum over the workers
(:mod:`shared.worker_metrics`).
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Histogram

from shared.worker_metrics import exposed_registry, exposition


class IngestMetrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        self.rejected = Counter(
            "clarion_ingest_rejected",
            "Webhook requests answered with a 4xx, by source and reason.",
            ["source", "reason"],
            registry=self.registry,
        )
        self.alerts_accepted = Counter(
            "clarion_ingest_alerts_accepted",
            "Alerts accepted (stored durably), by source.",
            ["source"],
            registry=self.registry,
        )
        self.request_seconds = Histogram(
            "clarion_ingest_request_duration_seconds",
            "Time to answer a webhook request, by source and HTTP status.",
            ["source", "status"],
            registry=self.registry,
        )

        # Each request's labelled series, found once (labels() locks and checks every time);
        # sources and statuses are few.
        self._accepted: dict[str, Counter] = {}
        self._requests: dict[tuple[str, int], Histogram] = {}
        self._exposed = exposed_registry(self.registry)

    def count_rejected(self, source: str, reason: str) -> None:
        self.rejected.labels(source=source, reason=reason).inc()

    def count_accepted(self, source: str, alerts: int) -> None:
        series = self._accepted.get(source)
        if series is None:
            series = self._accepted[source] = self.alerts_accepted.labels(source=source)
        series.inc(alerts)

    def observe_request(self, source: str, status: int, seconds: float) -> None:
        series = self._requests.get((source, status))
        if series is None:
            series = self.request_seconds.labels(source=source, status=str(status))
            self._requests[(source, status)] = series
        series.observe(seconds)

    def exposition(self) -> tuple[bytes, str]:
        """The text a ``/metrics`` endpoint answers, and its content type."""
        return exposition(self._exposed)
