"""What ``clarion send-test-alert`` sends, and who hears of it.

A test alert is the sample with fresh times, a test key as its group, fingerprint or
dedup key (so each key is a new incident), and the severity asked for, written in the
source's own words: the ``severity`` label (Alertmanager, Grafana), PagerDuty's
``payload.severity``, Datadog's ``alert_priority``, the generic format's ``severity``.
The word is one the running ingest maps back to that severity: :func:`severity_word`
reads the source's words with the plan's ``source_severities`` applied, as ingest does.

:func:`reach` says who hears of the test incident: the dispatcher's fan-out
(:func:`services.dispatcher.fanout.plan_deliveries`) for the incident ingest's own
correlation opens for the test alert, so the answer is the services' own.

Everything here is pure: a sample, a key, a time and a severity in, a body out; a
plan and a test alert in, audiences and channels out.
"""

from __future__ import annotations

import copy
import json
import secrets
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any, Final

from pydantic import BaseModel

from services.dispatcher.fanout import EmailSubscribers, plan_deliveries
from services.ingest.correlation import correlate
from services.ingest.severity import COMMON_WORDS, SeverityMap, configured
from services.ingest.sources import alertmanager, datadog, generic, grafana, pagerduty
from services.local_run import SAMPLES_DIR
from shared.contracts import Alert, IncidentChange, IncidentResolved, IncidentStatus, Severity
from shared.plan import ChannelName, Plan

KEY_LABEL: Final = "clarion_test_key"
"""The label (Datadog: tag) every test alert carries, with its key."""
TITLE_PREFIX: Final = "Test alert: "
GO_ZERO_TIME: Final = "0001-01-01T00:00:00Z"
SAMPLE_ROUTING_KEY: Final = "samplekeyhere"
DEFAULT_SEVERITY: Final = Severity.INFO
"""SEV4: the shipped plan keeps it internal, so a test alert tells no customer."""
PREVIEW_INCIDENT: Final = "test-alert-preview"
PREVIEW_SUBSCRIBER: Final = "subscriber@example.invalid"
"""Stands for the status page's email subscribers, whom the CLI cannot list."""


class Source(StrEnum):
    ALERTMANAGER = "alertmanager"
    GRAFANA = "grafana"
    PAGERDUTY = "pagerduty"
    DATADOG = "datadog"
    GENERIC = "generic"


SAMPLES: Final[Mapping[Source, str]] = {
    Source.ALERTMANAGER: "alertmanager_firing.json",
    Source.GRAFANA: "grafana_firing.json",
    Source.PAGERDUTY: "pagerduty_trigger.json",
    Source.DATADOG: "datadog_triggered.json",
    Source.GENERIC: "generic_firing.json",
}

PATHS: Final[Mapping[Source, str]] = {
    Source.ALERTMANAGER: "/v1/alerts/alertmanager",
    Source.GRAFANA: "/v1/alerts/grafana",
    Source.PAGERDUTY: "/v2/enqueue",
    Source.DATADOG: "/v1/alerts/datadog",
    Source.GENERIC: "/v1/alerts/generic",
}
"""Where ingest takes each source's webhook."""


@dataclass(frozen=True)
class Adapter:
    """How ingest reads a source: its body model, its parser and its own severity words."""

    model: type[BaseModel]
    parse: Callable[[Any, SeverityMap], list[Alert]]
    severities: SeverityMap


ADAPTERS: Final[Mapping[Source, Adapter]] = {
    Source.ALERTMANAGER: Adapter(
        alertmanager.AlertmanagerWebhook, alertmanager.parse, alertmanager.SEVERITIES
    ),
    Source.GRAFANA: Adapter(grafana.GrafanaWebhook, grafana.parse, grafana.SEVERITIES),
    Source.PAGERDUTY: Adapter(pagerduty.PagerDutyEvent, pagerduty.parse, pagerduty.SEVERITIES),
    Source.DATADOG: Adapter(datadog.DatadogWebhook, datadog.parse, datadog.SEVERITIES),
    Source.GENERIC: Adapter(generic.GenericWebhook, generic.parse, generic.SEVERITIES),
}

_LEVELS: Final = (Severity.CRITICAL, Severity.ERROR, Severity.WARNING, Severity.INFO)
_PLAIN: Final = dict(zip(_LEVELS, ("critical", "error", "warning", "info"), strict=True))
PREFERRED_WORDS: Final[Mapping[Source, Mapping[Severity, str]]] = {
    Source.ALERTMANAGER: _PLAIN,
    Source.GRAFANA: _PLAIN,
    Source.PAGERDUTY: _PLAIN,
    Source.DATADOG: dict(zip(_LEVELS, ("P1", "P2", "P3", "P4"), strict=True)),
    Source.GENERIC: {level: level.sev for level in _LEVELS},
}
"""The word each source is sent for each severity, unless the plan maps it elsewhere."""

_ANY_WORD: Final = tuple(COMMON_WORDS)
SOURCE_WORDS: Final[Mapping[Source, tuple[str, ...]]] = {
    Source.ALERTMANAGER: _ANY_WORD,
    Source.GRAFANA: _ANY_WORD,
    Source.PAGERDUTY: tuple(_PLAIN.values()),  # the only four PagerDuty accepts
    Source.DATADOG: ("P1", "P2", "P3", "P4", "P5"),  # $ALERT_PRIORITY
    Source.GENERIC: _ANY_WORD,
}
"""Every word the source's severity field may carry: where to look when the plan remaps."""

# Datadog's $ALERT_TYPE of a firing notification, by severity.
_DATADOG_TYPES: Final = dict(zip(_LEVELS, ("error", "error", "warning", "info"), strict=True))


def severities_for(source: Source, plan: Plan) -> SeverityMap:
    """The source's severity words as ingest reads them with ``plan``: its own words, with
    the plan's ``source_severities`` applied."""
    return configured(source.value, ADAPTERS[source].severities, plan.source_severities)


def severity_word(source: Source, severity: Severity, severities: SeverityMap) -> str:
    """The word ``source`` sends for ``severity``: its usual one, unless ``severities`` maps
    that elsewhere, then the first of its other words that means ``severity``.

    Raises ValueError when none of the source's words means ``severity`` there.
    """
    preferred = PREFERRED_WORDS[source][severity]
    for word in (preferred, *SOURCE_WORDS[source]):
        if severities.of(word) is severity:
            return word
    raise ValueError(
        f"the plan's source_severities leave no {source} severity word meaning {severity.sev}"
    )


def load_sample(source: Source) -> dict[str, Any]:
    sample: dict[str, Any] = json.loads((SAMPLES_DIR / SAMPLES[source]).read_text("utf-8"))
    return sample


@dataclass(frozen=True)
class Shape:
    """What a test alert is, whatever its source's format."""

    key: str
    now: datetime
    severity: Severity
    severity_word: str
    """``severity`` in the source's words, as the running ingest reads them."""
    resolve: bool = False
    routing_key: str = SAMPLE_ROUTING_KEY


def build_body(
    source: Source,
    sample: Mapping[str, Any],
    key: str,
    now: datetime,
    *,
    severity: Severity = DEFAULT_SEVERITY,
    severities: SeverityMap | None = None,
    resolve: bool = False,
    routing_key: str = SAMPLE_ROUTING_KEY,
) -> bytes:
    """The bytes to post (and sign): ``sample`` as a test alert with ``key``, sent at ``now``,
    of ``severity`` as ``severities`` (default: the source's own words) read it."""
    word = severity_word(source, severity, severities or ADAPTERS[source].severities)
    shape = Shape(key, now, severity, word, resolve, routing_key)
    return json.dumps(_BUILDERS[source](sample, shape), separators=(",", ":")).encode()


def parse_body(source: Source, body: bytes, severities: SeverityMap) -> list[Alert]:
    """The alerts ingest makes of ``body``, with the source's real model and parser."""
    adapter = ADAPTERS[source]
    return adapter.parse(adapter.model.model_validate(json.loads(body)), severities)


def labelled_body(sample: Mapping[str, Any], shape: Shape) -> dict[str, Any]:
    """Alertmanager's (and Grafana's) webhook: the group and every fingerprint from the key,
    the severity in every alert's ``severity`` label."""
    body = copy.deepcopy(dict(sample))
    key, status = shape.key, "resolved" if shape.resolve else "firing"
    body["status"] = status
    body["groupKey"] = f'{{}}:{{{KEY_LABEL}="{key}"}}'
    body["groupLabels"] = {**(body.get("groupLabels") or {}), KEY_LABEL: key}
    body["commonLabels"] = {
        **(body.get("commonLabels") or {}),
        KEY_LABEL: key,
        "severity": shape.severity_word,
    }
    for index, alert in enumerate(body["alerts"]):
        labels = alert.get("labels") or {}
        annotations = alert.get("annotations") or {}
        summary = annotations.get("summary") or labels.get("alertname") or "Alert"
        alert.update(
            status=status,
            fingerprint=f"{key}-{index}",
            labels={**labels, KEY_LABEL: key, "severity": shape.severity_word},
            annotations={**annotations, "summary": TITLE_PREFIX + summary},
        )
        if shape.resolve:
            alert.pop("startsAt", None)  # ingest keeps the start it knows
            alert["endsAt"] = _rfc3339(shape.now)
        else:
            alert.update(startsAt=_rfc3339(shape.now), endsAt=GO_ZERO_TIME)
    return body


def grafana_body(sample: Mapping[str, Any], shape: Shape) -> dict[str, Any]:
    body = labelled_body(sample, shape)
    body["state"] = "ok" if shape.resolve else "alerting"
    return body


def datadog_body(sample: Mapping[str, Any], shape: Shape) -> dict[str, Any]:
    """One monitor notification; the key is its aggregation key (its group), the severity
    its ``alert_priority``."""
    body = copy.deepcopy(dict(sample))
    title = TITLE_PREFIX + str(body.get("alert_title") or "Datadog monitor")
    scope = body.get("alert_scope") or ""
    transition = "Recovered" if shape.resolve else "Triggered"
    millis = str(int(shape.now.timestamp() * 1000))
    body.update(
        id=str(secrets.randbelow(10**18) + 10**18),
        aggreg_key=shape.key,
        alert_title=title,
        title=f"[{transition} on {{{scope}}}] {title}" if scope else f"[{transition}] {title}",
        alert_transition=transition,
        alert_priority=shape.severity_word,
        date=millis,
        last_updated=millis,
        tags=",".join(filter(None, [body.get("tags"), f"{KEY_LABEL}:{shape.key}"])),
    )
    if shape.resolve:
        body.update(alert_type="success", alert_status="Recovered")
    else:
        body.update(alert_type=_DATADOG_TYPES[shape.severity], alert_status="Alert")
    return body


def generic_body(sample: Mapping[str, Any], shape: Shape) -> dict[str, Any]:
    """Clarion's generic format: the key is the group, and the fingerprints derive from it."""
    body = copy.deepcopy(dict(sample))
    for index, alert in enumerate(body["alerts"]):
        title = alert.get("title") or alert.get("summary") or "Alert"
        alert.update(
            status="resolved" if shape.resolve else "firing",
            title=TITLE_PREFIX + title,
            severity=shape.severity_word,
            fingerprint=f"{shape.key}-{index}",
            group=shape.key,
            labels={**(alert.get("labels") or {}), KEY_LABEL: shape.key},
        )
        alert.pop("summary", None)
        if shape.resolve:
            alert.pop("starts_at", None)
            alert["ends_at"] = _rfc3339(shape.now)
        else:
            alert.pop("ends_at", None)
            alert["starts_at"] = _rfc3339(shape.now)
    return body


def pagerduty_body(sample: Mapping[str, Any], shape: Shape) -> dict[str, Any]:
    """An Events API v2 event: the key is the dedup key, and so the alert's fingerprint."""
    body = copy.deepcopy(dict(sample))
    details = body.get("payload") or {}
    details.update(
        summary=TITLE_PREFIX + str(details.get("summary") or "PagerDuty event"),
        severity=shape.severity_word,
        timestamp=_rfc3339(shape.now),
    )
    body.update(
        routing_key=shape.routing_key,
        dedup_key=shape.key,
        event_action="resolve" if shape.resolve else "trigger",
        payload=details,
    )
    return body


_BUILDERS: Final[Mapping[Source, Callable[[Mapping[str, Any], Shape], dict[str, Any]]]] = {
    Source.ALERTMANAGER: labelled_body,
    Source.GRAFANA: grafana_body,
    Source.PAGERDUTY: pagerduty_body,
    Source.DATADOG: datadog_body,
    Source.GENERIC: generic_body,
}


def _rfc3339(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


# --- Who hears of it ---------------------------------------------------------------


@dataclass(frozen=True)
class Heard:
    """An audience the plan routes the test incident to, and on which channels."""

    audience: str
    public: bool
    channels: tuple[ChannelName, ...]

    def document(self) -> dict[str, Any]:
        return {
            "audience": self.audience,
            "public": self.public,
            "channels": [c.value for c in self.channels],
        }

    def __str__(self) -> str:
        return f"{self.audience} ({', '.join(c.value for c in self.channels)})"


def reach(
    plan: Plan, source: Source, key: str, severity: Severity, now: datetime, *, resolve: bool
) -> tuple[Heard, ...]:
    """Who hears of the test incident (or of its resolution) by ``plan``: the dispatcher's
    fan-out for the incident ingest opens for the test alert, as if anyone had subscribed
    to the status page by email. Raises ValueError as :func:`severity_word` does."""
    severities = severities_for(source, plan)
    body = build_body(
        source, load_sample(source), key, now, severity=severity, severities=severities
    )
    alerts = parse_body(source, body, severities)
    opened = correlate(None, alerts, now, lambda: PREVIEW_INCIDENT)
    if opened.incident is None or not opened.events:
        return ()
    event: IncidentChange = opened.events[0]
    if resolve:
        closed = opened.incident.model_copy(
            update={"status": IncidentStatus.RESOLVED, "resolved_at": now}
        )
        event = IncidentResolved(
            event_id=f"{PREVIEW_INCIDENT}:resolved", occurred_at=now, incident=closed
        )
    subscribers = EmailSubscribers(addresses=(PREVIEW_SUBSCRIBER,))
    channels: dict[str, dict[ChannelName, None]] = {}
    public: dict[str, bool] = {}
    for delivery in plan_deliveries(event, event.incident, plan, subscribers):
        channels.setdefault(delivery.audience, {})[delivery.channel] = None
        public[delivery.audience] = delivery.public
    return tuple(Heard(name, public[name], tuple(chosen)) for name, chosen in channels.items())


def reach_line(
    plan: Plan, severity: Severity | None, heard: Sequence[Heard] | None, *, resolve: bool
) -> str:
    """One sentence: whether customers will hear of the test, and who will."""
    if severity is None or heard is None:
        return "Resolving the test incident: whoever heard of it will hear it is resolved."
    public = ", ".join(str(h) for h in heard if h.public)
    internal = ", ".join(str(h) for h in heard if not h.public)
    if public:
        hear = "will hear it is resolved" if resolve else "will hear of this test"
        also = f"; so will {internal}" if internal else ""
        return f"{severity.sev} reaches public audiences: {public} {hear}{also}."
    if plan.policy(severity).internal_only:
        lead = f"{severity.sev} is internal only in your plan"
    else:
        lead = f"{severity.sev} reaches no public audience in your plan"
    hear = "will hear it is resolved" if resolve else "will hear it"
    if not internal:
        return f"{lead}: nobody {hear}."
    return f"{lead}: {internal} {hear}; no customer will."
