"""Events are written with their incident's stored JSON inside, and read back the same."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

from services.ingest.correlation import correlate
from services.ingest.incident_change import promised
from services.ingest.incident_store import event_json
from services.ingest.sources.alertmanager import AlertmanagerWebhook, parse
from shared.contracts import INCIDENT_EVENT, Alert
from tests.conftest import load_fixture
from tests.support.plans import make_plan

T0 = datetime(2026, 11, 23, 14, 31, tzinfo=UTC)


def alerts(name: str) -> list[Alert]:
    return parse(AlertmanagerWebhook.model_validate(load_fixture(name)))


def test_an_event_written_around_its_stored_incident_reads_as_the_event() -> None:
    opened = correlate(None, alerts("alertmanager_webhook_v4_firing.json"), T0, lambda: "inc-1")
    holding = correlate(
        opened.incident,
        alerts("alertmanager_webhook_v4_resolved.json"),
        T0 + timedelta(minutes=3),
        lambda: "unused",
        hold=timedelta(minutes=5),
    )
    for outcome in (opened, holding):
        assert outcome.incident is not None
        stored = outcome.incident.model_dump_json().encode()
        for event in outcome.events:
            promising = promised(event, make_plan())
            written = event_json(promising, outcome.incident, stored)

            assert INCIDENT_EVENT.validate_json(written) == promising
            assert json.loads(written) == json.loads(promising.model_dump_json())


def test_an_event_about_another_incident_is_written_whole() -> None:
    first = correlate(None, alerts("alertmanager_webhook_v4_firing.json"), T0, lambda: "inc-1")
    other = correlate(None, alerts("alertmanager_webhook_v4_firing.json"), T0, lambda: "inc-2")
    assert first.incident is not None
    assert other.incident is not None
    event = first.events[0]

    written = event_json(event, other.incident, other.incident.model_dump_json().encode())

    assert INCIDENT_EVENT.validate_json(written) == event
