"""Prometheus Alertmanager, webhook payload version 4.

``parse`` turns one webhook body into normalized :class:`shared.contracts.Alert`
values. It is pure: no I/O, no clock, the same body always gives the same alerts.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from typing import Final, Literal

from pydantic import BaseModel, ConfigDict, Field

from services.ingest.severity import SeverityMap
from services.ingest.sources import labelled
from services.ingest.sources.labelled import LabelledAlert
from shared.contracts import Alert, AlertStatus, Severity

SOURCE: Final = "alertmanager"

# Rule sets put these words in the ``severity`` (or ``priority``) label.
SEVERITIES: Final = SeverityMap()


class AlertmanagerAlert(LabelledAlert):
    """One entry of ``alerts[]``. Unknown newer fields are accepted and ignored."""


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
    return labelled.severity_of(labels, severities)


def group_key_of(payload: AlertmanagerWebhook) -> str:
    """A stable, Redis-key-safe key for the Alertmanager group: one group, one incident."""
    digest = hashlib.sha256(f"{payload.receiver}\x00{payload.group_key}".encode()).hexdigest()
    return f"{SOURCE}:{digest}"


def parse(payload: AlertmanagerWebhook, severities: SeverityMap = SEVERITIES) -> list[Alert]:
    """Every alert of the webhook, normalized, in payload order."""
    group_key = group_key_of(payload)
    return [
        labelled.to_alert(alert, source=SOURCE, group_key=group_key, severities=severities)
        for alert in payload.alerts
    ]
