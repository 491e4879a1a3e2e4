"""Hypothesis state machine over the incident lifecycle, as the store drives it.

Any interleaving of firing, resolved and duplicate alerts over a few groups,
acknowledgements, and ends of "monitoring" holds keeps these true:

* at most one open incident per group key;
* an incident never resolves before it has opened, and resolves at most once;
* an open incident with firing alerts has the highest severity among them;
* a repeated batch changes nothing.
"""

from __future__ import annotations

import itertools
from datetime import UTC, datetime, timedelta

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from services.ingest.correlation import correlate
from services.ingest.incident_actions import acknowledge, end_hold
from services.ingest.incident_change import Correlation
from shared.contracts import (
    Alert,
    AlertStatus,
    Incident,
    IncidentOpened,
    IncidentResolved,
    Severity,
    most_severe,
)

T0 = datetime(2026, 11, 23, 14, 0, tzinfo=UTC)
HOLD = timedelta(minutes=5)
GROUPS = ("g1", "g2")


def make_alert(group: str, fingerprint: str, status: AlertStatus, severity: Severity) -> Alert:
    return Alert(
        source="test",
        group_key=group,
        fingerprint=fingerprint,
        status=status,
        severity=severity,
        summary=f"{severity.value} on {fingerprint}",
    )


alerts_of = st.builds(
    make_alert,
    st.sampled_from(GROUPS),
    st.sampled_from(["a", "b", "c"]),
    st.sampled_from(list(AlertStatus)),
    st.sampled_from(list(Severity)),
)


class IncidentLifecycle(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.now = T0
        self.ids = itertools.count(1)
        self.pointers: dict[str, str] = {}  # group -> open incident id, as the store keeps it
        self.incidents: dict[str, Incident] = {}
        self.opened: set[str] = set()
        self.resolved: set[str] = set()
        self.last_batch: list[Alert] = []

    def _store(self, outcome: Correlation) -> None:
        incident = outcome.incident
        if incident is None:
            return
        for event in outcome.events:
            if isinstance(event, IncidentOpened):
                assert event.incident_id not in self.opened
                self.opened.add(event.incident_id)
            if isinstance(event, IncidentResolved):
                assert event.incident_id in self.opened, "resolved before it opened"
                assert event.incident_id not in self.resolved, "resolved twice"
                assert incident.resolved_at is not None
                assert incident.resolved_at >= incident.began_at
                self.resolved.add(event.incident_id)
        self.incidents[incident.id] = incident
        if incident.is_open:
            self.pointers[incident.key] = incident.id
        elif self.pointers.get(incident.key) == incident.id:
            del self.pointers[incident.key]

    def _open_incident(self, group: str) -> Incident | None:
        incident_id = self.pointers.get(group)
        return self.incidents[incident_id] if incident_id else None

    def _apply(self, batch: list[Alert]) -> Correlation:
        outcome = Correlation(None)
        for group in GROUPS:
            of_group = [a for a in batch if a.group_key == group]
            if of_group:
                outcome = correlate(
                    self._open_incident(group),
                    of_group,
                    self.now,
                    lambda: f"inc-{next(self.ids)}",
                    hold=HOLD,
                )
                self._store(outcome)
        return outcome

    @rule(batch=st.lists(alerts_of, min_size=1, max_size=4), minutes=st.integers(0, 10))
    def alerts_arrive(self, batch: list[Alert], minutes: int) -> None:
        self.now += timedelta(minutes=minutes)
        self._apply(batch)
        self.last_batch = batch

    @rule()
    def the_same_batch_is_sent_again(self) -> None:
        if not self.last_batch or len({a.group_key for a in self.last_batch}) > 1:
            return
        before = dict(self.incidents)
        outcome = self._apply(self.last_batch)
        assert outcome.events == []
        assert all(self.incidents[i] == before[i] for i in before)

    @rule(group=st.sampled_from(GROUPS))
    def someone_acknowledges(self, group: str) -> None:
        current = self._open_incident(group)
        if current is not None:
            self._store(acknowledge(current, self.now, "alice"))

    @rule(group=st.sampled_from(GROUPS), minutes=st.integers(0, 10))
    def a_hold_timer_fires(self, group: str, minutes: int) -> None:
        self.now += timedelta(minutes=minutes)
        current = self._open_incident(group)
        if current is not None and current.monitoring_since is not None:
            self._store(end_hold(current, current.monitoring_since, self.now))

    @invariant()
    def at_most_one_open_incident_per_group(self) -> None:
        for group in GROUPS:
            open_ids = [i.id for i in self.incidents.values() if i.is_open and i.key == group]
            assert len(open_ids) <= 1

    @invariant()
    def severity_is_the_highest_firing_one(self) -> None:
        for incident in self.incidents.values():
            firing = incident.firing_alerts
            if incident.is_open and firing:
                assert incident.severity is most_severe([a.severity for a in firing])

    @invariant()
    def open_incidents_are_the_ones_the_groups_point_at(self) -> None:
        open_ids = {i.id for i in self.incidents.values() if i.is_open}
        assert open_ids == set(self.pointers.values())


IncidentLifecycle.TestCase.settings = settings(max_examples=150, stateful_step_count=25)
TestIncidentLifecycle = IncidentLifecycle.TestCase
