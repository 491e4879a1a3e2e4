from __future__ import annotations

from datetime import UTC, datetime

import pytest
from pydantic import ValidationError

from shared.contracts import INCIDENT_EVENT, IncidentOpened, IncidentResolved, Severity, most_severe
from tests.support.builders import make_incident

NOW = datetime(2026, 11, 23, 14, 30, tzinfo=UTC)


def test_incident_events_round_trip_through_the_discriminated_union() -> None:
    event = IncidentResolved(event_id="e1", occurred_at=NOW, incident=make_incident())
    decoded = INCIDENT_EVENT.validate_json(event.model_dump_json())
    assert isinstance(decoded, IncidentResolved)
    assert decoded == event
    assert decoded.schema_version == 1


def test_contracts_are_frozen_and_strict() -> None:
    event = IncidentOpened(event_id="e1", occurred_at=NOW, incident=make_incident())
    with pytest.raises(ValidationError):
        event.event_id = "other"  # type: ignore[misc]
    with pytest.raises(ValidationError, match="extra"):
        IncidentOpened.model_validate({**event.model_dump(), "surprise": 1})


def test_naive_timestamps_are_rejected() -> None:
    with pytest.raises(ValidationError, match="timezone"):
        IncidentOpened(event_id="e1", occurred_at=datetime(2026, 1, 1), incident=make_incident())


def test_unknown_event_type_is_rejected() -> None:
    payload = IncidentOpened(event_id="e1", occurred_at=NOW, incident=make_incident()).model_dump()
    payload["type"] = "incident.exploded"
    with pytest.raises(ValidationError):
        INCIDENT_EVENT.validate_python(payload)


def test_most_severe_picks_the_highest() -> None:
    assert most_severe([Severity.INFO, Severity.CRITICAL, Severity.WARNING]) is Severity.CRITICAL
    assert most_severe([]) is Severity.INFO
