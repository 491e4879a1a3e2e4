"""Alerts described by labels and annotations, the way Prometheus defines them.

Alertmanager's webhook and Grafana's (built on Alertmanager) share this alert
shape, and these rules: the ``severity`` (else ``priority``) label names the
severity, the ``summary`` annotation (else ``alertname``) the headline, an
``impact`` (or ``customer_impact``) annotation the customer impact, and Go's
zero time means "not set".
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from typing import Final

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, field_validator

from services.ingest.severity import SeverityMap
from shared.contracts import Alert, AlertStatus, Severity

_GO_ZERO_TIME_PREFIX: Final = "0001-01-01"
IMPACT_ANNOTATIONS: Final = ("impact", "customer_impact")


def unset_zero_time(value: object) -> object:
    """Go's zero time (``0001-01-01T00:00:00Z``) and "" as None: the endsAt of a firing alert."""
    if isinstance(value, str) and (not value or value.startswith(_GO_ZERO_TIME_PREFIX)):
        return None
    return value


def null_as_empty(value: object) -> object:
    """Go marshals a nil map as ``null``."""
    return {} if value is None else value


class LabelledAlert(BaseModel):
    """One entry of ``alerts[]``. Unknown newer fields are accepted and ignored."""

    model_config = ConfigDict(frozen=True, extra="ignore", populate_by_name=True)

    status: AlertStatus
    labels: dict[str, str] = Field(default_factory=dict)
    annotations: dict[str, str] = Field(default_factory=dict)
    starts_at: AwareDatetime | None = Field(default=None, alias="startsAt")
    ends_at: AwareDatetime | None = Field(default=None, alias="endsAt")
    generator_url: str | None = Field(default=None, alias="generatorURL")
    fingerprint: str | None = None

    _zero_times = field_validator("starts_at", "ends_at", mode="before")(unset_zero_time)
    _null_maps = field_validator("labels", "annotations", mode="before")(null_as_empty)


def canonical(labels: Mapping[str, str]) -> str:
    return json.dumps(labels, sort_keys=True, separators=(",", ":"))


def severity_of(labels: Mapping[str, str], severities: SeverityMap) -> Severity:
    """The severity named by the ``severity`` (else ``priority``) label."""
    return severities.of(labels.get("severity") or labels.get("priority"))


def fingerprint_of(alert: LabelledAlert) -> str:
    """The sender's fingerprint; older senders omit it, so derive one from the labels."""
    if alert.fingerprint:
        return alert.fingerprint
    return hashlib.sha256(canonical(alert.labels).encode()).hexdigest()[:16]


def impact_of(annotations: Mapping[str, str | None]) -> str | None:
    """The customer impact an annotation states, if any."""
    for name in IMPACT_ANNOTATIONS:
        text = (annotations.get(name) or "").strip()
        if text:
            return text
    return None


def to_alert(
    alert: LabelledAlert,
    *,
    source: str,
    group_key: str,
    severities: SeverityMap,
    extra_annotations: Mapping[str, str] | None = None,
) -> Alert:
    """``alert`` normalized; ``extra_annotations`` yield to the rule's own annotations."""
    labels, annotations = alert.labels, alert.annotations
    summary = (
        " ".join(annotations.get("summary", "").split())
        or " ".join(labels.get("alertname", "").split())
        or "Unnamed alert"
    )
    return Alert(
        source=source,
        group_key=group_key,
        fingerprint=fingerprint_of(alert),
        status=alert.status,
        severity=severity_of(labels, severities),
        summary=summary,
        description=annotations.get("description", "").strip(),
        service=labels.get("service") or labels.get("job") or None,
        impact=impact_of(annotations),
        labels=dict(labels),
        annotations={**(extra_annotations or {}), **annotations},
        starts_at=alert.starts_at,
        ends_at=alert.ends_at,
        generator_url=alert.generator_url or None,
    )
