"""PagerDuty Events API v2: a drop-in for ``POST https://events.pagerduty.com/v2/enqueue``.

Tools that already page through PagerDuty can point their Events v2 integration
at Clarion. The request model checks what PagerDuty checks (required fields,
lengths, severity words) and :func:`error_messages` words failures as PagerDuty
does, so senders log errors they recognise. The ``routing_key`` is a credential:
PagerDuty wants 32 characters, Clarion accepts any key the operator configured
(:func:`routing_key_errors`), and it never lands in an alert.

``trigger`` fires an alert and ``resolve`` recovers it; ``acknowledge`` carries
no alert (:func:`is_acknowledge`): the route records it on the incident.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from collections.abc import Collection, Mapping
from datetime import datetime
from typing import Annotated, Any, Final, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    model_validator,
)
from pydantic_core import PydanticCustomError

from services.ingest.severity import SeverityMap
from shared.contracts import Alert, AlertStatus

SOURCE: Final = "pagerduty"

# PagerDuty's own four words map one to one; operators may remap them.
SEVERITIES: Final = SeverityMap()

ROUTING_KEY_LENGTH: Final = 32
MAX_DEDUP_KEY_LENGTH: Final = 255
MAX_SUMMARY_LENGTH: Final = 1024
# Longer dedup keys are hashed into the fingerprint, which ends up in logs and events.
MAX_FINGERPRINT_LENGTH: Final = 64
RESOLVED_SUMMARY: Final = "Alert resolved"

EventAction = Literal["trigger", "acknowledge", "resolve"]
PagerDutySeverity = Literal["critical", "error", "warning", "info"]

_CHOICES: Final[Mapping[str, str]] = {
    "event_action": "trigger, acknowledge, resolve",
    "payload.severity": "critical, error, warning, info",
}


def _not_blank(value: str) -> str:
    if not value.strip():
        raise PydanticCustomError("blank", "is missing or blank")
    return value


NonBlank = Annotated[str, AfterValidator(_not_blank)]


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="ignore", populate_by_name=True)


class PagerDutyImage(_Frozen):
    src: NonBlank
    href: str | None = None
    alt: str | None = None


class PagerDutyLink(_Frozen):
    href: NonBlank
    text: str | None = None


class PagerDutyPayload(_Frozen):
    """``payload``: what the alert is about. Required for ``trigger``."""

    summary: Annotated[str, Field(max_length=MAX_SUMMARY_LENGTH), AfterValidator(_not_blank)]
    source: NonBlank
    severity: PagerDutySeverity
    timestamp: str | None = None  # kept as sent; read leniently by :func:`parse`
    component: str | None = None
    group: str | None = None
    event_class: str | None = Field(default=None, alias="class")
    custom_details: Any = None  # documented as an object; senders also send strings


class PagerDutyEvent(_Frozen):
    """One Events API v2 alert event. Unknown (newer) fields are ignored."""

    routing_key: NonBlank
    event_action: EventAction
    dedup_key: Annotated[str | None, Field(max_length=MAX_DEDUP_KEY_LENGTH)] = None
    payload: PagerDutyPayload | None = None
    images: list[PagerDutyImage] = Field(default_factory=list)
    links: list[PagerDutyLink] = Field(default_factory=list)
    client: str | None = None
    client_url: str | None = None

    @model_validator(mode="after")
    def _required_for_action(self) -> PagerDutyEvent:
        if self.event_action == "trigger" and self.payload is None:
            raise PydanticCustomError("blank", "is missing or blank", {"field": "payload"})
        if self.event_action != "trigger" and not (self.dedup_key or "").strip():
            raise PydanticCustomError("blank", "is missing or blank", {"field": "dedup_key"})
        return self


# Responses, in PagerDuty's words.


def accepted_body(dedup_key: str) -> dict[str, str]:
    """The 202 body: the sender stores ``dedup_key`` to acknowledge or resolve later."""
    return {"status": "success", "message": "Event processed", "dedup_key": dedup_key}


def invalid_event_body(errors: list[str]) -> dict[str, Any]:
    """The 400 body for a well-formed JSON event that breaks the rules."""
    return {"status": "invalid event", "message": "Event object is invalid", "errors": errors}


def unrecognized_body() -> dict[str, Any]:
    """The 400 body for a request that is not JSON at all."""
    return {
        "status": "Unrecognized object",
        "message": "Event object format is unrecognized",
        "errors": ["JSON parse error"],
    }


def error_messages(exc: ValidationError) -> list[str]:
    """pydantic's errors as PagerDuty words them (``"'payload.summary' is missing or blank"``)."""
    return [_message(error) for error in exc.errors()]


def _message(error: Mapping[str, Any]) -> str:
    ctx: Mapping[str, Any] = error.get("ctx") or {}
    path = _path(tuple(error.get("loc", ()))) or ctx.get("field", "")
    kind = error.get("type", "")
    if not path:
        return "Event object must be a JSON object"
    if kind in ("missing", "blank") or (kind == "string_type" and error.get("input") is None):
        return f"'{path}' is missing or blank"
    if kind == "string_too_long":
        return (
            f"Length of '{path}' is incorrect "
            f"(should be at most {ctx.get('max_length')} characters)"
        )
    if kind == "literal_error" and path in _CHOICES:
        return f"'{path}' is invalid (must be one of {_CHOICES[path]})"
    return f"'{path}' is invalid ({error.get('msg', 'unexpected value')})"


def _path(loc: tuple[Any, ...]) -> str:
    # PagerDuty names list items by their kind: "'image src' is missing or blank".
    if len(loc) == 3 and loc[0] in ("images", "links") and isinstance(loc[1], int):
        return f"{str(loc[0])[:-1]} {loc[2]}"
    return ".".join(str(part) for part in loc)


def routing_key_errors(routing_key: str, accepted: Collection[str]) -> list[str]:
    """Why ``routing_key`` is refused (empty when it is one of ``accepted``).

    With no configured keys every key is accepted, as with an unset bearer token;
    the route decides whether that is allowed. A refused key gets PagerDuty's
    own reasons, for a 400 with :func:`invalid_event_body`.
    """
    if not accepted:
        return []
    given = routing_key.encode()
    # Compare with every key, so timing says nothing about which one nearly matched.
    matches = [hmac.compare_digest(given, key.encode()) for key in accepted]
    if any(matches):
        return []
    errors = []
    if len(routing_key) != ROUTING_KEY_LENGTH:
        errors.append(
            f"Length of 'routing_key' is incorrect (should be {ROUTING_KEY_LENGTH} characters)"
        )
    if not routing_key.isascii() or not routing_key.isalnum():
        errors.append("'routing_key' cannot contain non-alphanumeric characters.")
    return errors or ["Invalid routing key"]


# The alert.


def is_acknowledge(payload: PagerDutyEvent) -> bool:
    """True for ``acknowledge``: a human is on it; no alert changes."""
    return payload.event_action == "acknowledge"


def dedup_key_of(payload: PagerDutyEvent) -> str:
    """The event's ``dedup_key``, or one derived from the whole body when a trigger has none.

    PagerDuty makes up a random key there; Clarion derives it, so a resend of the
    same body (a sender's retry) lands on the same alert instead of a new one.
    """
    if payload.dedup_key and payload.dedup_key.strip():
        return payload.dedup_key
    canonical = json.dumps(
        payload.model_dump(mode="json", by_alias=True), sort_keys=True, separators=(",", ":")
    )
    return hashlib.sha256(canonical.encode()).hexdigest()[:32]


def group_key_of(payload: PagerDutyEvent) -> str:
    """One PagerDuty alert (routing key + dedup key) is one incident."""
    return _group_key(payload.routing_key, dedup_key_of(payload))


def _group_key(routing_key: str, dedup_key: str) -> str:
    identity = f"{routing_key}\x00{dedup_key}"
    return f"{SOURCE}:{hashlib.sha256(identity.encode()).hexdigest()}"


def _fingerprint(dedup_key: str) -> str:
    """The dedup key itself, hashed when it is too long to show."""
    if len(dedup_key) <= MAX_FINGERPRINT_LENGTH:
        return dedup_key
    return hashlib.sha256(dedup_key.encode()).hexdigest()[:32]


def parse(payload: PagerDutyEvent, severities: SeverityMap = SEVERITIES) -> list[Alert]:
    """``trigger``: one firing alert; ``resolve``: one resolved alert; ``acknowledge``: none."""
    if is_acknowledge(payload):
        return []
    firing = payload.event_action == "trigger"
    dedup_key = dedup_key_of(payload)
    details = payload.payload
    custom = details.custom_details if details and isinstance(details.custom_details, dict) else {}
    happened_at = _timestamp(details.timestamp if details else None)
    return [
        Alert(
            source=SOURCE,
            group_key=_group_key(payload.routing_key, dedup_key),
            fingerprint=_fingerprint(dedup_key),
            status=AlertStatus.FIRING if firing else AlertStatus.RESOLVED,
            severity=severities.of(details.severity if details else None),
            summary=details.summary.strip() if details else RESOLVED_SUMMARY,
            description=_text(custom.get("description")) or "",
            service=_service(details, custom),
            impact=_text(custom.get("impact")),
            labels=_labels(payload),
            annotations=_annotations(custom),
            starts_at=happened_at if firing else None,
            ends_at=None if firing else happened_at,
            generator_url=payload.client_url or (payload.links[0].href if payload.links else None),
        )
    ]


def _text(value: object) -> str | None:
    return (value.strip() or None) if isinstance(value, str) else None


def _service(details: PagerDutyPayload | None, custom: Mapping[str, Any]) -> str | None:
    """An explicit ``custom_details.service`` wins over what the component or source suggests."""
    if details is None:
        return None
    return _text(custom.get("service")) or _text(details.component) or _text(details.source)


def _labels(payload: PagerDutyEvent) -> dict[str, str]:
    details = payload.payload
    candidates = {
        "source": details.source if details else None,
        "component": details.component if details else None,
        "group": details.group if details else None,
        "class": details.event_class if details else None,
        "client": payload.client,
    }
    return {name: value for name, value in candidates.items() if value}


def _annotations(custom: Mapping[str, Any]) -> dict[str, str]:
    """The scalar custom details, as text (nested objects stay with the sender)."""
    result = {}
    for name, value in custom.items():
        if isinstance(value, str):
            result[str(name)] = value
        elif isinstance(value, bool | int | float):
            result[str(name)] = json.dumps(value)
    return result


def _timestamp(text: str | None) -> datetime | None:
    """PagerDuty's ``2015-07-17T08:42:58.315+0000``; None when absent, unreadable or naive."""
    if not text:
        return None
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        return None
    return moment if moment.tzinfo is not None else None
