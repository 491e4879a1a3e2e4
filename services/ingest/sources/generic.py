"""Clarion's generic alert format, version 1: for any tool or script.

The format is documented in ``docs/sources/generic.md``; its JSON Schema,
``docs/schemas/generic-alert-v1.schema.json``, is generated from the models here
(``python -m services.ingest.sources.generic > docs/schemas/generic-alert-v1.schema.json``)
and a test keeps the two in step.

Unlike the other sources, one body may carry alerts of several groups (each
alert's ``group``, by default its fingerprint); ingest's
:func:`services.ingest.grouping.group_alerts` splits them into one batch per group.
"""

from __future__ import annotations

import hashlib
import json
import re
import sys
from collections.abc import Mapping
from typing import Annotated, Any, Final, Literal

from pydantic import (
    AfterValidator,
    AwareDatetime,
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    model_validator,
)
from pydantic.config import JsonDict
from pydantic.json_schema import GenerateJsonSchema, JsonSchemaValue
from pydantic_core import PydanticCustomError, core_schema

from services.ingest.severity import SeverityMap
from shared.contracts import Alert, AlertStatus, Severity

SOURCE: Final = "generic"

# SEV1..SEV4, critical/error/warning/info, P1..P5 and the other common words.
SEVERITIES: Final = SeverityMap()

SCHEMA_ID: Final = "urn:clarion:schema:generic-alert:v1"
MAX_ALERTS: Final = 100
MAX_ENTRIES: Final = 64
# Longer fingerprints are hashed: they end up in logs and events.
MAX_FINGERPRINT_LENGTH: Final = 64


VISIBLE: Final = r"[^\s\x1c-\x1f\x85\ufeff]"
"""One character that is not white space, to Python and to JSON Schema (ECMA-262) alike:
their ``\\s`` differ on the separators U+001C..U+001F, U+0085 and U+FEFF."""


def _not_blank(text: str) -> str:
    if not re.search(VISIBLE, text):
        raise PydanticCustomError("blank", "must not be blank")
    return text


# Not blank: in JSON Schema, the same pattern (found anywhere) says the same.
_NOT_BLANK = (AfterValidator(_not_blank), Field(json_schema_extra={"pattern": VISIBLE}))
Headline = Annotated[str, StringConstraints(min_length=1, max_length=500), *_NOT_BLANK]
Key = Annotated[str, StringConstraints(min_length=1, max_length=255), *_NOT_BLANK]
EntryName = Annotated[str, StringConstraints(min_length=1, max_length=128)]
LabelValue = Annotated[str, StringConstraints(max_length=1024)]
AnnotationValue = Annotated[str, StringConstraints(max_length=4096)]

EXAMPLES: Final[tuple[dict[str, Any], ...]] = (
    {
        "version": "1",
        "source": "synthetic-checks",
        "alerts": [
            {
                "status": "firing",
                "title": "Checkout page returns errors",
                "description": "3 of 5 probes in eu-west-1 got HTTP 500 in the last 5 minutes.",
                "severity": "SEV2",
                "fingerprint": "checkout-page-eu-west-1",
                "group": "checkout",
                "service": "checkout",
                "impact": "Some customers cannot complete a purchase.",
                "labels": {"probe": "checkout-page", "region": "eu-west-1"},
                "annotations": {"runbook_url": "https://runbooks.example.org/checkout"},
                "starts_at": "2026-11-23T14:30:00Z",
                "url": "https://probes.example.org/checks/checkout-page",
            }
        ],
    },
    {
        "version": "1",
        "source": "synthetic-checks",
        "alerts": [
            {
                "status": "resolved",
                "title": "Checkout page returns errors",
                "fingerprint": "checkout-page-eu-west-1",
                "group": "checkout",
                "ends_at": "2026-11-23T14:42:00Z",
            }
        ],
    },
    {"version": "1", "alerts": [{"summary": "Disk almost full on web-3", "severity": "warning"}]},
)


def _needs_a_headline(schema: JsonDict) -> None:
    """In the JSON Schema of an alert: a title or a summary is given, and not as null.

    Null means "not given". The published schema shows optional fields as what to
    send (:class:`_OmitNulls`), so there "given" is enough; where they may be null
    (ingest's OpenAPI), "given" must also say "not null".
    """
    properties = schema.get("properties")
    schema["anyOf"] = [
        _given(name, properties.get(name) if isinstance(properties, dict) else None)
        for name in ("title", "summary")
    ]


def _given(name: str, field_schema: object) -> JsonDict:
    options = field_schema.get("anyOf") if isinstance(field_schema, dict) else None
    nullable = isinstance(options, list) and {"type": "null"} in options
    if nullable:
        return {"required": [name], "properties": {name: {"not": {"type": "null"}}}}
    return {"required": [name]}


class GenericAlert(BaseModel):
    """One alert. It needs a title (or summary); every other field is optional."""

    model_config = ConfigDict(
        frozen=True, extra="ignore", populate_by_name=True, json_schema_extra=_needs_a_headline
    )

    status: AlertStatus = Field(
        default=AlertStatus.FIRING, description="firing (the default) or resolved."
    )
    title: Headline | None = Field(default=None, description="What is wrong, in plain words.")
    summary: Headline | None = Field(
        default=None, description="Another name for title; title wins when both are given."
    )
    description: str = Field(default="", max_length=10_000, description="Details.")
    severity: str | None = Field(
        default=None,
        min_length=1,
        max_length=64,
        description="SEV1..SEV4, critical/error/warning/info, P1..P5, high, low, ...; "
        "unknown words and no severity mean warning (SEV3).",
    )
    fingerprint: Key | None = Field(
        default=None,
        description="Names this alert across sends (resolve it with the same one). "
        "Default: derived from labels and title.",
    )
    group: Key | None = Field(
        default=None,
        description="Alerts with the same group are one incident. Default: the fingerprint.",
    )
    service: str | None = Field(default=None, max_length=200, description="Affected service.")
    impact: str | None = Field(
        default=None, max_length=1000, description="What customers notice, in one sentence."
    )
    labels: dict[EntryName, LabelValue] = Field(
        default_factory=dict, max_length=MAX_ENTRIES, description="Identifying key/values."
    )
    annotations: dict[EntryName, AnnotationValue] = Field(
        default_factory=dict, max_length=MAX_ENTRIES, description="Descriptive key/values."
    )
    starts_at: AwareDatetime | None = Field(default=None, description="RFC 3339, with offset.")
    ends_at: AwareDatetime | None = Field(default=None, description="RFC 3339, with offset.")
    url: str | None = Field(
        default=None,
        max_length=2048,
        pattern=r"^https?://",
        description="Where to see the alert (http or https).",
    )

    @model_validator(mode="before")
    @classmethod
    def _null_means_not_given(cls, data: object) -> object:
        if isinstance(data, dict):
            return {key: value for key, value in data.items() if value is not None}
        return data

    @model_validator(mode="after")
    def _has_a_headline(self) -> GenericAlert:
        if self.title is None and self.summary is None:
            raise PydanticCustomError("missing_title", "an alert needs a title (or summary)")
        return self

    @property
    def headline(self) -> str:
        """The title (else summary), with runs of whitespace made single spaces."""
        return " ".join((self.title or self.summary or "").split())


class GenericWebhook(BaseModel):
    """A batch of alerts from any tool or script, in Clarion's generic format."""

    model_config = ConfigDict(
        frozen=True,
        extra="ignore",
        populate_by_name=True,
        title="Clarion generic alert format, version 1",
        json_schema_extra={
            "$schema": "https://json-schema.org/draft/2020-12/schema",
            "$id": SCHEMA_ID,
            "description": "Alerts any tool or script can POST to Clarion's ingest service. "
            "Unknown fields are ignored.",
            "examples": list(EXAMPLES),
        },
    )

    version: Literal["1"] = Field(description='The format version: "1".')
    source: str | None = Field(
        default=None, max_length=100, description="Free text naming the sender."
    )
    alerts: list[GenericAlert] = Field(min_length=1, max_length=MAX_ALERTS)


class _OmitNulls(GenerateJsonSchema):
    """Optional fields shown as what to send (a string), not "string or null".

    The models still accept ``null`` for an optional field, as "not given".
    """

    def nullable_schema(self, schema: core_schema.NullableSchema) -> JsonSchemaValue:
        return self.generate_inner(schema["schema"])

    def default_schema(self, schema: core_schema.WithDefaultSchema) -> JsonSchemaValue:
        if schema.get("default", ...) is None:
            return self.generate_inner(schema["schema"])
        return super().default_schema(schema)


def json_schema() -> dict[str, Any]:
    """The JSON Schema of :class:`GenericWebhook`, as committed under ``docs/schemas``."""
    return GenericWebhook.model_json_schema(schema_generator=_OmitNulls)


def severity_of(alert: GenericAlert, severities: SeverityMap = SEVERITIES) -> Severity:
    """The ``severity`` field, else the ``severity`` (or ``priority``) label."""
    labels = alert.labels
    return severities.of(alert.severity or labels.get("severity") or labels.get("priority"))


def fingerprint_of(alert: GenericAlert) -> str:
    """The sender's fingerprint (hashed when long), else one from the labels and headline."""
    if alert.fingerprint and len(alert.fingerprint) <= MAX_FINGERPRINT_LENGTH:
        return alert.fingerprint
    if alert.fingerprint:
        return hashlib.sha256(alert.fingerprint.encode()).hexdigest()
    canonical = json.dumps(
        {"labels": alert.labels, "title": alert.headline}, sort_keys=True, separators=(",", ":")
    )
    return hashlib.sha256(canonical.encode()).hexdigest()[:16]


def group_key_of(alert: GenericAlert) -> str:
    """A stable, Redis-key-safe key for the alert's group (its fingerprint by default)."""
    group = alert.group or fingerprint_of(alert)
    return f"{SOURCE}:{hashlib.sha256(group.encode()).hexdigest()}"


def _impact(alert: GenericAlert) -> str | None:
    for text in (
        alert.impact,
        alert.annotations.get("impact"),
        alert.annotations.get("customer_impact"),
    ):
        if text and text.strip():
            return text.strip()
    return None


def _to_alert(alert: GenericAlert, sender: str | None, severities: SeverityMap) -> Alert:
    annotations = dict(alert.annotations)
    if sender and sender.strip():
        annotations.setdefault("sender", sender.strip())
    return Alert(
        source=SOURCE,
        group_key=group_key_of(alert),
        fingerprint=fingerprint_of(alert),
        status=alert.status,
        severity=severity_of(alert, severities),
        summary=alert.headline,
        description=alert.description.strip(),
        service=(alert.service or "").strip() or alert.labels.get("service") or None,
        impact=_impact(alert),
        labels=dict(alert.labels),
        annotations=annotations,
        starts_at=alert.starts_at,
        ends_at=alert.ends_at,
        generator_url=alert.url,
    )


def parse(payload: GenericWebhook, severities: SeverityMap = SEVERITIES) -> list[Alert]:
    """Every alert of the body, normalized, in payload order."""
    return [_to_alert(alert, payload.source, severities) for alert in payload.alerts]


def _write_schema(out: Mapping[str, Any]) -> None:
    sys.stdout.write(json.dumps(out, indent=2, ensure_ascii=False) + "\n")


if __name__ == "__main__":
    _write_schema(json_schema())
