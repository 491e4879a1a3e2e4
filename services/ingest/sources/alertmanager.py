"""Prometheus Alertmanager, webhook payload version 4.

``parse`` turns one webhook body into normalized :class:`shared.contracts.Alert`
values. It is pure: no I/O, no clock, the same body always gives the same alerts.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from types import MappingProxyType
from typing import Final, Literal

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, field_validator

from shared.contracts import Alert, AlertStatus, Severity

SOURCE: Final = "alertmanager"

# Values seen in the ``severity`` (or ``priority``) label of real rule sets.
SEVERITY_MAP: Final[Mapping[str, Severity]] = MappingProxyType(
    {
        "critical": Severity.CRITICAL,
        "crit": Severity.CRITICAL,
        "page": Severity.CRITICAL,
        "emergency": Severity.CRITICAL,
        "fatal": Severity.CRITICAL,
        "disaster": Severity.CRITICAL,
        "p1": Severity.CRITICAL,
        "sev1": Severity.CRITICAL,
        "high": Severity.ERROR,
        "error": Severity.ERROR,
        "err": Severity.ERROR,
        "major": Severity.ERROR,
        "severe": Severity.ERROR,
        "p2": Severity.ERROR,
        "sev2": Severity.ERROR,
        "warning": Severity.WARNING,
        "warn": Severity.WARNING,
        "minor": Severity.WARNING,
        "medium": Severity.WARNING,
        "average": Severity.WARNING,
        "p3": Severity.WARNING,
        "sev3": Severity.WARNING,
        "info": Severity.INFO,
        "informational": Severity.INFO,
        "notice": Severity.INFO,
        "low": Severity.INFO,
        "none": Severity.INFO,
        "ok": Severity.INFO,
        "debug": Severity.INFO,
        "p4": Severity.INFO,
        "p5": Severity.INFO,
        "sev4": Severity.INFO,
        "sev5": Severity.INFO,
    }
)
DEFAULT_SEVERITY: Final = Severity.WARNING

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


def severity_of(labels: Mapping[str, str]) -> Severity:
    """The severity named by the ``severity`` (else ``priority``) label; WARNING if unknown."""
    raw = labels.get("severity") or labels.get("priority") or ""
    return SEVERITY_MAP.get(raw.strip().lower(), DEFAULT_SEVERITY)


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


def _to_alert(alert: AlertmanagerAlert, group_key: str) -> Alert:
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
        severity=severity_of(labels),
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


def parse(payload: AlertmanagerWebhook) -> list[Alert]:
    """Every alert of the webhook, normalized, in payload order."""
    group_key = group_key_of(payload)
    return [_to_alert(alert, group_key) for alert in payload.alerts]
