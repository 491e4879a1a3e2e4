"""How long an incident lasted, as customers are told: from the first alert to the last."""

from __future__ import annotations

from datetime import UTC, datetime

from services.ingest.correlation import correlate
from services.ingest.sources import alertmanager
from shared.contracts import Alert
from tests.conftest import load_fixture


def _alerts(fixture: str) -> list[Alert]:
    payload = alertmanager.AlertmanagerWebhook.model_validate(load_fixture(fixture))
    return alertmanager.parse(payload)


def test_an_incident_heard_of_late_still_reports_when_the_trouble_began_and_ended() -> None:
    heard_at = datetime(2026, 11, 23, 15, 15, tzinfo=UTC)  # 45 minutes after the alert started
    opened = correlate(None, _alerts("alertmanager_webhook_v4_firing.json"), heard_at, lambda: "i")
    assert opened.incident is not None
    assert opened.incident.began_at == datetime(2026, 11, 23, 14, 30, 24, tzinfo=UTC)

    later = datetime(2026, 11, 23, 15, 20, tzinfo=UTC)
    resolved = correlate(
        opened.incident, _alerts("alertmanager_webhook_v4_resolved.json"), later, lambda: "x"
    )
    assert resolved.incident is not None
    assert resolved.incident.resolved_at == datetime(2026, 11, 23, 14, 32, 39, tzinfo=UTC)


def test_an_end_time_from_the_future_is_not_believed() -> None:
    start = datetime(2026, 11, 23, 14, 31, tzinfo=UTC)
    opened = correlate(None, _alerts("alertmanager_webhook_v4_firing.json"), start, lambda: "i")
    assert opened.incident is not None
    now = datetime(2026, 11, 23, 14, 32, tzinfo=UTC)  # before the alerts' endsAt (14:32:39)
    resolved = correlate(
        opened.incident, _alerts("alertmanager_webhook_v4_resolved.json"), now, lambda: "x"
    )
    assert resolved.incident is not None
    assert resolved.incident.resolved_at == now
