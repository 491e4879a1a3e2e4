"""Properties of correlation that must hold for any sequence of alert batches."""

from __future__ import annotations

import itertools
from datetime import UTC, datetime, timedelta

from hypothesis import given
from hypothesis import strategies as st

from services.ingest.correlation import Correlation, correlate
from shared.contracts import (
    Alert,
    AlertStatus,
    Incident,
    IncidentResolved,
    IncidentStatus,
    Severity,
    most_severe,
)

T0 = datetime(2026, 11, 23, 14, 31, tzinfo=UTC)
FIRING, CRITICAL = AlertStatus.FIRING, Severity.CRITICAL


def alert(
    fingerprint: str, status: AlertStatus, severity: Severity, *, description: str = ""
) -> Alert:
    return Alert(
        source="test",
        group_key="test:group",
        fingerprint=fingerprint,
        status=status,
        severity=severity,
        summary=f"{severity.value} problem on {fingerprint}",
        description=description,
        service="checkout-api",
    )


def next_id() -> str:
    return f"inc-{next(_ids)}"


_ids = itertools.count(1)


fingerprints = st.sampled_from(["a", "b", "c", "d"])
alerts_strategy = st.builds(
    alert,
    fingerprints,
    st.sampled_from(list(AlertStatus)),
    st.sampled_from(list(Severity)),
    description=st.sampled_from(["", "more"]),
)
batches = st.lists(alerts_strategy, max_size=6)


def apply_all(batches: list[list[Alert]]) -> tuple[Incident | None, list[Correlation]]:
    state: Incident | None = None
    results = []
    for i, batch in enumerate(batches):
        now = T0 + timedelta(minutes=i)
        result = correlate(state, batch, now, next_id)
        results.append(result)
        state = result.incident or state
    return state, results


@given(st.lists(batches, max_size=5), batches)
def test_applying_the_same_batch_twice_yields_nothing_the_second_time(
    history: list[list[Alert]], batch: list[Alert]
) -> None:
    state, _ = apply_all([*history, batch])

    again = correlate(state, batch, T0 + timedelta(days=1), next_id)

    assert again.events == []
    assert again.incident is None


@given(st.lists(batches, min_size=1, max_size=6))
def test_state_and_events_always_agree(history: list[list[Alert]]) -> None:
    _, results = apply_all(history)

    for result in results:
        incident = result.incident
        if incident is None:
            assert result.events == []
            continue
        for event in result.events:
            assert event.incident == incident
        resolved = any(isinstance(e, IncidentResolved) for e in result.events)
        assert resolved == (incident.status is IncidentStatus.RESOLVED)
        if incident.status is IncidentStatus.INVESTIGATING:
            firing = incident.firing_alerts
            assert firing, "an open incident always has a firing alert"
            assert incident.severity is most_severe([a.severity for a in firing])
            assert incident.title in {a.summary for a in firing}
        else:
            assert incident.resolved_at is not None


@given(batches)
def test_each_alert_ends_in_its_last_reported_status(batch: list[Alert]) -> None:
    state, _ = apply_all([[alert("a", FIRING, CRITICAL), alert("b", FIRING, CRITICAL)], batch])
    assert state is not None

    last = {a.fingerprint: a.status for a in batch}
    recorded = {a.fingerprint: a.status for a in state.alerts}
    for fingerprint, status in last.items():
        assert recorded[fingerprint] is status
