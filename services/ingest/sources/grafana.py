"""Grafana unified alerting, webhook contact point payload version 1.

``parse`` turns one webhook body into normalized :class:`shared.contracts.Alert`
values. It is pure: no I/O, no clock, the same body always gives the same alerts.

Grafana's links and query values have no field of their own on
:class:`~shared.contracts.Alert`, so they travel in its ``annotations`` under
:data:`EXTRA_ANNOTATIONS` keys (an annotation of the rule's own with the same
name wins).
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from typing import Final, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from services.ingest.severity import SeverityMap
from services.ingest.sources import labelled
from services.ingest.sources.labelled import LabelledAlert, canonical, null_as_empty
from shared.contracts import Alert, AlertStatus, Severity

SOURCE: Final = "grafana"

# Rule labels carry these words in ``severity`` (or ``priority``), as with Alertmanager.
SEVERITIES: Final = SeverityMap()

# Annotation keys Grafana's extra per-alert fields are copied to.
EXTRA_ANNOTATIONS: Final = (
    "dashboard_url",
    "panel_url",
    "silence_url",
    "image_url",
    "values",
    "value_string",
)


class GrafanaAlert(LabelledAlert):
    """One entry of ``alerts[]``: Alertmanager's shape, plus Grafana's links and values."""

    silence_url: str | None = Field(default=None, alias="silenceURL")
    dashboard_url: str | None = Field(default=None, alias="dashboardURL")
    panel_url: str | None = Field(default=None, alias="panelURL")
    image_url: str | None = Field(default=None, alias="imageURL")
    values: dict[str, float | None] = Field(default_factory=dict)
    value_string: str | None = Field(default=None, alias="valueString")

    _null_values = field_validator("values", mode="before")(null_as_empty)


class GrafanaWebhook(BaseModel):
    """The body Grafana's webhook contact point POSTs (``version: "1"``).

    ``state`` is Grafana's word for the whole group: ``"alerting"`` or ``"ok"``
    (some versions also say ``"no_data"`` or ``"pending"``); any text is accepted,
    and ``status`` (firing/resolved) is what counts.
    """

    model_config = ConfigDict(frozen=True, extra="ignore", populate_by_name=True)

    version: Literal["1"]
    receiver: str
    status: AlertStatus
    org_id: int | None = Field(default=None, alias="orgId")
    group_key: str | None = Field(default=None, alias="groupKey")
    truncated_alerts: int = Field(default=0, ge=0, alias="truncatedAlerts")
    group_labels: dict[str, str] = Field(default_factory=dict, alias="groupLabels")
    common_labels: dict[str, str] = Field(default_factory=dict, alias="commonLabels")
    common_annotations: dict[str, str] = Field(default_factory=dict, alias="commonAnnotations")
    external_url: str | None = Field(default=None, alias="externalURL")
    title: str | None = None
    state: str | None = None
    message: str | None = None
    alerts: list[GrafanaAlert] = Field(min_length=1)

    _null_maps = field_validator(
        "group_labels", "common_labels", "common_annotations", mode="before"
    )(null_as_empty)


def severity_of(labels: Mapping[str, str], severities: SeverityMap = SEVERITIES) -> Severity:
    """The severity named by the ``severity`` (else ``priority``) label."""
    return labelled.severity_of(labels, severities)


def group_key_of(payload: GrafanaWebhook) -> str:
    """A stable, Redis-key-safe key for the Grafana group: one group, one incident.

    Built from the organization, the receiver and Grafana's ``groupKey`` (its
    ``groupLabels`` when a sender leaves ``groupKey`` out).
    """
    grouping = payload.group_key or canonical(payload.group_labels)
    org = "" if payload.org_id is None else str(payload.org_id)
    digest = hashlib.sha256(f"{org}\x00{payload.receiver}\x00{grouping}".encode()).hexdigest()
    return f"{SOURCE}:{digest}"


def _number(value: float | None) -> str:
    if value is None:
        return "null"
    return str(int(value)) if value.is_integer() else repr(value)


def _extras(alert: GrafanaAlert) -> dict[str, str]:
    values = ", ".join(f"{name}={_number(v)}" for name, v in sorted(alert.values.items()))
    extras = {
        "dashboard_url": alert.dashboard_url,
        "panel_url": alert.panel_url,
        "silence_url": alert.silence_url,
        "image_url": alert.image_url,
        "values": values,
        "value_string": alert.value_string,
    }
    return {key: text.strip() for key, text in extras.items() if text and text.strip()}


def parse(payload: GrafanaWebhook, severities: SeverityMap = SEVERITIES) -> list[Alert]:
    """Every alert of the webhook, normalized, in payload order."""
    group_key = group_key_of(payload)
    return [
        labelled.to_alert(
            alert,
            source=SOURCE,
            group_key=group_key,
            severities=severities,
            extra_annotations=_extras(alert),
        )
        for alert in payload.alerts
    ]
