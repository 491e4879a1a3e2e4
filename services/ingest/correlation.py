"""Correlation: how a batch of alerts changes an incident, as a pure function.

One alert group (one Alertmanager group, one PagerDuty dedup key, ...) is one
incident. Given the group's open incident (or None) and a batch of alerts,
:func:`correlate` returns the incident's next state and the events that
announce the change. It does no I/O: the store decides how the result lands.

Rules:

* no open incident and at least one firing alert: a new incident opens
  ("investigating");
* no open incident and only resolved alerts: nothing happens;
* an open incident merges the batch by fingerprint. Alerts joining or
  recovering while others still fire give an ``IncidentUpdated`` in plain
  words; a change of the highest firing severity gives an
  ``IncidentSeverityChanged``;
* when no alert fires any more the incident enters "monitoring" and holds for
  ``hold`` (the scheduler ends the hold, see :mod:`services.ingest.incident_actions`).
  With no hold it resolves at once. An alert firing again during the hold keeps
  the same incident: flapping is one incident, not many;
* a pure repeat (same statuses, same severity) gives no event and leaves
  ``updated_at`` alone, so a resent webhook changes nothing. Changed details
  (descriptions, labels) are kept quietly, without an event.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Final

from services.ingest.incident_change import NOTHING, Announcement, Correlation, commit, opening
from shared.contracts import (
    Alert,
    AlertState,
    AlertStatus,
    Incident,
    IncidentStatus,
    Severity,
)

__all__ = ["Correlation", "correlate", "derived_impact"]

MONITORING_STARTED = (
    "Every affected instance has recovered. We are monitoring to make sure it stays that way."
)


CUSTOMER_SUMMARY = "customer_summary"


def derived_impact(service: str | None) -> str:
    """A customer-facing sentence for alerts that don't describe their impact."""
    if service:
        return f"Some customers of {service} may see errors or slow responses."
    return "Some customers may see errors or slow responses."


def correlate(
    current: Incident | None,
    alerts: list[Alert],
    now: datetime,
    new_incident_id: Callable[[], str],
    *,
    truncated: int = 0,
    external_url: str | None = None,
    hold: timedelta = timedelta(0),
) -> Correlation:
    """Apply one batch of alerts (all of one group) to the group's open incident.

    ``truncated`` is how many alerts the source left out of the batch, and
    ``external_url`` where the source shows the group; both are kept on the
    incident. ``hold`` is how long the incident stays "monitoring" once every
    alert has recovered.
    """
    if not alerts:
        return NOTHING
    keys = {alert.group_key for alert in alerts}
    if len(keys) != 1:
        raise ValueError(f"one batch must hold one alert group, got {sorted(keys)}")
    batch = _Batch(
        incoming={alert.fingerprint: alert for alert in alerts},  # the last word per alert wins
        now=now,
        truncated=truncated,
        external_url=external_url,
        hold=hold,
    )
    if current is None or not current.is_open:
        return _open(batch, new_incident_id)
    return _evolve(current, batch)


@dataclass(frozen=True)
class _Batch:
    incoming: Mapping[str, Alert]
    now: datetime
    truncated: int
    external_url: str | None
    hold: timedelta


def _open(batch: _Batch, new_incident_id: Callable[[], str]) -> Correlation:
    incoming, now = batch.incoming, batch.now
    firing = [a for a in incoming.values() if a.status is AlertStatus.FIRING]
    if not firing:
        return NOTHING
    lead = _most_severe_first(firing)[0]
    return opening(
        Incident(
            id=new_incident_id(),
            key=lead.group_key,
            source=lead.source,
            title=lead.summary,
            customer_title=lead.annotations.get(CUSTOMER_SUMMARY) or None,
            service=lead.service,
            impact=_impact(lead, firing),
            severity=lead.severity,
            status=IncidentStatus.INVESTIGATING,
            opened_at=now,
            updated_at=now,
            alerts=tuple(_state(a) for a in incoming.values()),
            truncated_alerts=batch.truncated,
            external_url=batch.external_url,
        )
    )


def _evolve(current: Incident, batch: _Batch) -> Correlation:
    incoming, now = batch.incoming, batch.now
    merged = {state.fingerprint: state for state in current.alerts}
    merged.update((fp, _state(alert, merged.get(fp))) for fp, alert in incoming.items())
    before = {s.fingerprint for s in current.firing_alerts}
    after = {fp for fp, s in merged.items() if s.status is AlertStatus.FIRING}
    details: dict[str, object] = {
        "alerts": tuple(merged.values()),
        "truncated_alerts": batch.truncated,
        "external_url": batch.external_url or current.external_url,
    }
    if not after:
        return _all_recovered(current, batch, details, merged.values())

    severity = min((merged[fp].severity for fp in after), key=lambda s: s.rank)
    if current.resolves_at is not None:
        # Back during the hold: the same incident goes back to work.
        changes = [f"The problem is back: {_count(len(after), 'affected instance')}."]
        details.update(
            status=IncidentStatus.IDENTIFIED
            if current.acknowledged_at
            else IncidentStatus.INVESTIGATING,
            monitoring_since=None,
            resolves_at=None,
        )
    else:
        changes = _membership_changes(
            joined=after - before, recovered=before - after, now_firing=after
        )
    if not current.headline_by_operator:
        firing_states = [merged[fp] for fp in merged if fp in after]
        details.update(_headline(current, firing_states, incoming, severity))
    if not changes and severity is current.severity:
        quiet = current.model_copy(update=details)
        return NOTHING if quiet == current else Correlation(quiet)
    return commit(
        current,
        now,
        {**details, "severity": severity},
        announce=Announcement(tuple(changes)) if changes else None,
        previous_severity=current.severity,
    )


def _all_recovered(
    current: Incident, batch: _Batch, details: dict[str, object], states: Iterable[AlertState]
) -> Correlation:
    now = batch.now
    if current.resolves_at is not None:  # already holding: nothing new to say
        quiet = current.model_copy(update=details)
        return NOTHING if quiet == current else Correlation(quiet)
    if batch.hold <= timedelta(0):
        recovered = {**details, "status": IncidentStatus.RESOLVED}
        recovered["resolved_at"] = _resolved_at(current, states, now)
        return commit(current, now, recovered, resolved=True)
    holding = {
        **details,
        "status": IncidentStatus.MONITORING,
        "monitoring_since": now,
        "resolves_at": now + batch.hold,
    }
    return commit(current, now, holding, announce=Announcement((MONITORING_STARTED,)))


def _headline(
    current: Incident,
    firing: list[AlertState],
    incoming: Mapping[str, Alert],
    severity: Severity,
) -> dict[str, object]:
    """Title, service and impact: kept while the alert they came from still leads."""
    leaders = [s for s in firing if s.severity is severity]
    if any(s.summary == current.title for s in leaders):
        return {}
    fresh = [incoming[s.fingerprint] for s in leaders if s.fingerprint in incoming]
    if not fresh:
        return {"title": leaders[0].summary}
    lead = fresh[0]
    firing_incoming = [incoming[s.fingerprint] for s in firing if s.fingerprint in incoming]
    service = lead.service or current.service
    return {
        "title": lead.summary,
        "service": service,
        "impact": _impact(lead, firing_incoming, service),
    }


def _membership_changes(joined: set[str], recovered: set[str], now_firing: set[str]) -> list[str]:
    changes = []
    if joined:
        changes.append(
            f"{_count(len(joined), 'more affected instance')} reported; "
            f"{len(now_firing)} affected in total."
        )
    if recovered:
        was_affected = len(now_firing - joined) + len(recovered)
        changes.append(
            f"{len(recovered)} of {_count(was_affected, 'affected instance')} recovered; "
            f"{len(now_firing)} still affected."
        )
    return changes


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"


def _impact(lead: Alert, firing: Iterable[Alert], service: str | None = None) -> str:
    if lead.impact:
        return lead.impact
    for alert in _most_severe_first(list(firing)):
        if alert.impact:
            return alert.impact
    return derived_impact(service or lead.service)


def _most_severe_first(alerts: list[Alert]) -> list[Alert]:
    return sorted(alerts, key=lambda a: a.severity.rank)  # stable: payload order breaks ties


def _resolved_at(current: Incident, states: Iterable[AlertState], now: datetime) -> datetime:
    """When the last alert ended, if the source says so and it is plausible; else now."""
    just_recovered = [
        s for s in states if s.fingerprint in {f.fingerprint for f in current.firing_alerts}
    ]
    ends = [s.ends_at for s in just_recovered]
    if not ends or any(end is None for end in ends):
        return now
    last = max(end for end in ends if end is not None)
    return last if current.began_at <= last <= now else now


def _state(alert: Alert, known: AlertState | None = None) -> AlertState:
    """What the incident keeps of ``alert``; a resend without a start keeps the known one."""
    starts_at = alert.starts_at or (known.starts_at if known else None)
    return AlertState(
        fingerprint=alert.fingerprint,
        status=alert.status,
        severity=alert.severity,
        summary=alert.summary,
        description=alert.description,
        labels=alert.labels,
        starts_at=starts_at,
        ends_at=alert.ends_at,
        links=links_of(alert),
    )


LINK_ANNOTATIONS: Final = ("runbook_url", "dashboard_url", "panel_url", "silence_url")


def links_of(alert: Alert) -> dict[str, str]:
    """The URLs an internal reader follows: the generator and the linking annotations."""
    links = {"generator": alert.generator_url} if alert.generator_url else {}
    for name in LINK_ANNOTATIONS:
        url = alert.annotations.get(name)
        if url and url.startswith(("https://", "http://")):
            links[name.removesuffix("_url")] = url
    return links
