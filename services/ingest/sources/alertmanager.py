"""Prometheus Alertmanager, webhook payload version 4.

``parse`` turns one webhook body into normalized :class:`shared.contracts.Alert`
values. It is pure: no I/O, no clock, the same body always gives the same alerts.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from typing import Final, Literal

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, field_validator

from services.ingest.severity import SeverityMap
from shared.contracts import Alert, AlertStatus, Severity

SOURCE: Final = "alertmanager"

# Rule sets put these words in the ``severity`` (or ``priority``) label.
SEVERITIES: Final = SeverityMap()

# Go's zero time: Alertmanager's way of saying "not set" (endsAt of a firing alert).
_GO_ZERO_TIME_PREFIX: Final = "0001-01-01"


def _unset_zero_time(value: object) -> object:
    if isinstance(value, str) and (not value or value.startswith(_GO_ZERO_TIME_PREFIX)):
        return None
    return value


class AlertmanagerAlert(BaseModel):
    """One entry of ``alerts[]``. Unknown newer fields are accepted and ignored."""

    model_config = ConfigDict(frozen=True, extra="ignore", populate_by_name=True)

    status: AlertStatus
    labels: dict[str, str] = Field(default_factory=dict)
    annotations: dict[str, str] = Field(default_factory=dict)
    starts_at: AwareDatetime | None = Field(default=None, alias="startsAt")
    ends_at: AwareDatetime | None = Field(default=None, alias="endsAt")
    generator_url: str | None = Field(default=None, alias="generatorURL")
    fingerprint: str | None = None

    _zero_times = field_validator("starts_at", "ends_at", mode="before")(_unset_zero_time)


class AlertmanagerWebhook(BaseModel):
    """The body Alertmanager POSTs to a webhook receiver (``version: "4"``)."""

    model_config = ConfigDict(frozen=True, extra="ignore", populate_by_name=True)

    version: Literal["4"]
    group_key: str = Field(alias="groupKey", min_length=1)
    truncated_alerts: int = Field(default=0, ge=0, alias="truncatedAlerts")
    status: AlertStatus
    receiver: str
    group_labels: dict[str, str] = Field(default_factory=dict, alias="groupLabels")
    common_labels: dict[str, str] = Field(default_factory=dict, alias="commonLabels")
    common_annotations: dict[str, str] = Field(default_factory=dict, alias="commonAnnotations")
    external_url: str | None = Field(default=None, alias="externalURL")
    alerts: list[AlertmanagerAlert] = Field(min_length=1)


def severity_of(labels: Mapping[str, str], severities: SeverityMap = SEVERITIES) -> Severity:
    """The severity named by the ``severity`` (else ``priority``) label."""
    return severities.of(labels.get("severity") or labels.get("priority"))


def group_key_of(payload: AlertmanagerWebhook) -> str:
    """A stable, Redis-key-safe key for the Alertmanager group: one group, one incident."""
    digest = hashlib.sha256(f"{payload.receiver}\x00{payload.group_key}".encode()).hexdigest()
    return f"{SOURCE}:{digest}"


def _fingerprint(alert: AlertmanagerAlert) -> str:
    if alert.fingerprint:
        return alert.fingerprint
    # Older senders omit it: derive one from the label set, as Alertmanager does.
    canonical = json.dumps(alert.labels, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()[:16]


def _impact(annotations: Mapping[str, str]) -> str | None:
    for name in ("impact", "customer_impact"):
        text = annotations.get(name, "").strip()
        if text:
            return text
    return None


def _to_alert(alert: AlertmanagerAlert, group_key: str, severities: SeverityMap) -> Alert:
    labels, annotations = alert.labels, alert.annotations
    summary = (
        annotations.get("summary", "").strip()
        or labels.get("alertname", "").strip()
        or "Unnamed alert"
    )
    return Alert(
        source=SOURCE,
        group_key=group_key,
        fingerprint=_fingerprint(alert),
        status=alert.status,
        severity=severity_of(labels, severities),
        summary=summary,
        description=annotations.get("description", "").strip(),
        service=labels.get("service") or labels.get("job") or None,
        impact=_impact(annotations),
        labels=dict(labels),
        annotations=dict(annotations),
        starts_at=alert.starts_at,
        ends_at=alert.ends_at,
        generator_url=alert.generator_url or None,
    )


def parse(payload: AlertmanagerWebhook, severities: SeverityMap = SEVERITIES) -> list[Alert]:
    """Every alert of the webhook, normalized, in payload order."""
    group_key = group_key_of(payload)
    return [_to_alert(alert, group_key, severities) for alert in payload.alerts]
