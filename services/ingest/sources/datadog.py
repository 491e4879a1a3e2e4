"""Datadog monitor notifications, through the Webhooks integration.

Datadog POSTs a payload *template* with its ``$VARIABLES`` filled in, as strings
(or numbers, where a hand-written template leaves one unquoted). The default
template sends ``id``, ``title``, ``body``, ``date``, ``last_updated``,
``event_type`` and ``org``; Clarion reads more when the template adds them, each
named after its variable in lower case (``"alert_transition": "$ALERT_TRANSITION"``,
``"tags": "$TAGS"``, ...). Every field but ``title`` (or ``alert_title`` in its
place) is optional, and a variable Datadog left unsubstituted counts as absent.
One body is one alert.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from types import MappingProxyType
from typing import Annotated, Final

from pydantic import (
    AwareDatetime,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    model_validator,
)
from pydantic.config import JsonDict

from services.ingest.severity import COMMON_WORDS, SeverityMap
from shared.contracts import Alert, AlertStatus, Severity

SOURCE: Final = "datadog"

# ``$ALERT_PRIORITY`` (P1..P5), ``$ALERT_TYPE`` (error, warning, info, success) or a
# ``severity:`` tag. "success" is the type of a recovery notification.
SEVERITIES: Final = SeverityMap(MappingProxyType({**COMMON_WORDS, "success": Severity.INFO}))

# ``$ALERT_TRANSITION`` values. Any other ("Null", new words) falls back to ``alert_type``.
FIRING_TRANSITIONS: Final = frozenset(
    {"triggered", "re-triggered", "warn", "re-warn", "no data", "re-no data", "renotify"}
)
RESOLVED_TRANSITIONS: Final = frozenset({"recovered"})
# Resends of a firing alert: their ``$DATE`` is the resend's, not when the trouble began.
REPEAT_TRANSITIONS: Final = frozenset({"re-triggered", "re-warn", "re-no data", "renotify"})

# The last epoch millisecond of 9999, the last year a date can have.
MAX_MILLIS: Final = 253_402_300_799_999

# A template variable Datadog did not fill in: "$ALERT_ID", "$TAGS[team]".
_PLACEHOLDER: Final = re.compile(r"\$[A-Z][A-Z0-9_]*(?:\[[^\]]*\])?")
# Leading "[P1] [Triggered on {host:a}]" blocks of a Datadog title.
_TITLE_BLOCK: Final = re.compile(r"\s*\[([^\]]*)\]\s*")
_PRIORITY: Final = re.compile(r"[Pp][1-5]")
# "Triggered on {host:a,env:prod}": the group of a multi-alert monitor, in a title block.
_TITLE_SCOPE: Final = re.compile(r" on \{([^}]*)\}$")
# Notification routing ("@webhook-clarion", "@slack-ops", "@jane@example.org"): not details.
_MENTION: Final = re.compile(r"(?:^|[ \t]+)@[\w.@+-]*\w")


def _without_placeholders(value: object) -> object:
    if isinstance(value, dict):
        return {
            key: item
            for key, item in value.items()
            if not (isinstance(item, str) and _PLACEHOLDER.fullmatch(item.strip()))
        }
    return value


def _number_as_text(value: object) -> object:
    # A hand-written template may leave ids unquoted: "alert_id": $ALERT_ID.
    if isinstance(value, int | float) and not isinstance(value, bool):
        return str(value)
    return value


def _epoch_millis(value: object) -> object:
    """``$DATE`` and ``$LAST_UPDATED`` are epoch milliseconds, as text (or a number)."""
    if isinstance(value, str) and value.strip().isascii() and value.strip().isdigit():
        value = int(value.strip())
    if not isinstance(value, int | float) or isinstance(value, bool):
        return value  # an RFC 3339 date-time, or not a date at all
    if not 0 <= value <= MAX_MILLIS:
        raise ValueError(f"{value} is not a date in epoch milliseconds")
    return datetime.fromtimestamp(value / 1000, UTC)


# What the JSON Schema says may be sent: numbers too (a template may leave a variable
# unquoted); for dates, RFC 3339 or epoch milliseconds. As text, the schema shows 14
# digits at most: always a date (the model takes more, up to MAX_MILLIS).
_NOT_EMPTY: Final[tuple[JsonDict, ...]] = ({"type": "string", "minLength": 1}, {"type": "number"})
_MILLIS_IN: Final = (
    AwareDatetime
    | Annotated[str, Field(pattern=r"^[0-9]{1,14}$")]
    | Annotated[float, Field(ge=0, le=MAX_MILLIS)]
)


def _given(value: object) -> bool:
    """Whether a title was given: null and "" are not (and placeholders are removed)."""
    return value is not None and value != ""


def _title_or_alert_title(schema: JsonDict) -> None:
    """In the JSON Schema: ``title`` is required only when ``alert_title`` isn't given."""
    required = schema.get("required")
    if isinstance(required, list) and "title" in required:
        required.remove("title")
        if not required:
            del schema["required"]
    schema["anyOf"] = [
        {"required": [name], "properties": {name: {"anyOf": [dict(o) for o in _NOT_EMPTY]}}}
        for name in ("title", "alert_title")
    ]


Text = Annotated[str, BeforeValidator(_number_as_text, json_schema_input_type=str | float)]
# Null or "" where alert_title is given: see _title_or_alert_title.
Title = Annotated[str, BeforeValidator(_number_as_text, json_schema_input_type=str | float | None)]
Millis = Annotated[AwareDatetime, BeforeValidator(_epoch_millis, json_schema_input_type=_MILLIS_IN)]


class DatadogOrg(BaseModel):
    """``org``: ``$ORG_ID`` and ``$ORG_NAME``."""

    model_config = ConfigDict(frozen=True, extra="ignore", populate_by_name=True)

    id: Text | None = None
    name: Text | None = None

    _substituted_only = model_validator(mode="before")(_without_placeholders)


class DatadogWebhook(BaseModel):
    """One Datadog webhook body: the default payload plus the documented variables."""

    model_config = ConfigDict(
        frozen=True, extra="ignore", populate_by_name=True, json_schema_extra=_title_or_alert_title
    )

    title: Title = Field(min_length=1)  # $EVENT_TITLE, else alert_title
    id: Text | None = None  # $ID: this notification's event
    body: Text | None = None  # $EVENT_MSG
    text_only_msg: Text | None = None  # $TEXT_ONLY_MSG
    date: Millis | None = None  # $DATE
    last_updated: Millis | None = None  # $LAST_UPDATED
    event_type: Text | None = None  # $EVENT_TYPE
    org: DatadogOrg | None = None
    alert_id: Text | None = None  # $ALERT_ID: the monitor
    alert_title: Text | None = None
    alert_transition: Text | None = None
    alert_type: Text | None = None
    alert_priority: Text | None = None
    alert_status: Text | None = None
    alert_scope: Text | None = None
    alert_metric: Text | None = None
    alert_query: Text | None = None
    alert_cycle_key: Text | None = None
    aggreg_key: Text | None = None
    tags: Text | None = None  # $TAGS: "env:prod,service:api"
    hostname: Text | None = None
    link: Text | None = None
    snapshot: Text | None = None
    impact: Text | None = None  # the operator's own fields, when the template adds them
    customer_impact: Text | None = None

    @model_validator(mode="before")
    @classmethod
    def _substituted_only(cls, data: object) -> object:
        data = _without_placeholders(data)
        if (
            isinstance(data, dict)
            and not _given(data.get("title"))
            and _given(data.get("alert_title"))
        ):
            return {**data, "title": data["alert_title"]}
        return data


def _tag_pairs(text: str | None) -> Iterable[tuple[str, str]]:
    for tag in (text or "").split(","):
        name, _, value = tag.strip().partition(":")
        if name.strip():
            yield name.strip(), value.strip()


def labels_of(payload: DatadogWebhook) -> dict[str, str]:
    """``$TAGS`` then ``$ALERT_SCOPE`` as labels; a repeated tag joins its values."""
    labels: dict[str, str] = {}
    for name, value in _tag_pairs(f"{payload.tags or ''},{payload.alert_scope or ''}"):
        known = labels.get(name)
        if known is None:
            labels[name] = value
        elif value and value not in known.split(","):
            labels[name] = f"{known},{value}" if known else value
    if payload.hostname:
        labels.setdefault("host", payload.hostname)
    return labels


def _title_blocks(title: str) -> tuple[list[str], str]:
    """The bracketed blocks leading a Datadog title, and the words after them."""
    blocks, rest = [], title
    while match := _TITLE_BLOCK.match(rest):
        blocks.append(match.group(1).strip())
        rest = rest[match.end() :]
    return blocks, " ".join(rest.split())


def status_of(payload: DatadogWebhook) -> AlertStatus:
    """Resolved for "Recovered" (or a "success" alert type), firing otherwise."""
    words = [payload.alert_transition or "", payload.alert_type or ""]
    words += [block.split(" on ")[0] for block in _title_blocks(payload.title)[0]]
    for word in (w.strip().lower() for w in words):
        if word in RESOLVED_TRANSITIONS or word == "success":
            return AlertStatus.RESOLVED
        if word in FIRING_TRANSITIONS or word in ("error", "warning", "info"):
            return AlertStatus.FIRING
    return AlertStatus.FIRING


def severity_of(
    payload: DatadogWebhook, labels: Mapping[str, str], severities: SeverityMap = SEVERITIES
) -> Severity:
    """``alert_priority`` (or the title's "[P1]"), a ``severity`` tag, else ``alert_type``."""
    title_priority = next(
        (b for b in _title_blocks(payload.title)[0] if _PRIORITY.fullmatch(b)), None
    )
    for word in (
        payload.alert_priority,
        title_priority,
        labels.get("severity"),
        labels.get("priority"),
        payload.alert_type,
    ):
        if word and word.strip().lower() in severities.words:
            return severities.of(word)
    return severities.default


def _grouping(payload: DatadogWebhook) -> str:
    if payload.aggreg_key:
        return f"aggreg_key:{payload.aggreg_key}"
    if payload.alert_id:
        return f"alert_id:{payload.alert_id}"
    return f"title:{_title_blocks(payload.alert_title or payload.title)[1]}"


def group_key_of(payload: DatadogWebhook) -> str:
    """A stable, Redis-key-safe key: the monitor's ``aggreg_key``, else its id, else title."""
    org = payload.org.id if payload.org and payload.org.id else ""
    digest = hashlib.sha256(f"{org}\x00{_grouping(payload)}".encode()).hexdigest()
    return f"{SOURCE}:{digest}"


def _scope(payload: DatadogWebhook) -> str | None:
    if payload.alert_scope:
        return payload.alert_scope
    for block in _title_blocks(payload.title)[0]:
        if match := _TITLE_SCOPE.search(block):
            return match.group(1)
    return None


def fingerprint_of(payload: DatadogWebhook) -> str:
    """The same for every notification of one monitor group (``$ALERT_SCOPE``, else the
    title's "on {host:a}"), resolved or not."""
    scope = ",".join(sorted({f"{k}:{v}" for k, v in _tag_pairs(_scope(payload))}))
    return hashlib.sha256(f"{_grouping(payload)}\x00{scope}".encode()).hexdigest()[:16]


def _description(payload: DatadogWebhook) -> str:
    """The monitor's message without its ``%%%`` markers and ``@`` mentions."""
    text = payload.text_only_msg or payload.body or payload.alert_status or ""
    lines = [_MENTION.sub("", line).rstrip() for line in text.splitlines()]
    kept = "\n".join(line for line in lines if line.strip() != "%%%")
    return re.sub(r"\n{3,}", "\n\n", kept).strip()


def _annotations(payload: DatadogWebhook) -> dict[str, str]:
    fields = {
        "alert_transition": payload.alert_transition,
        "alert_status": payload.alert_status,
        "alert_metric": payload.alert_metric,
        "alert_query": payload.alert_query,
        "alert_scope": payload.alert_scope,
        "alert_cycle_key": payload.alert_cycle_key,
        "event_type": payload.event_type,
        "event_id": payload.id,
        "monitor_id": payload.alert_id,
        "org_name": payload.org.name if payload.org else None,
        "snapshot_url": payload.snapshot,
        "impact": payload.impact,
        "customer_impact": payload.customer_impact,
    }
    return {key: text.strip() for key, text in fields.items() if text and text.strip()}


def parse(payload: DatadogWebhook, severities: SeverityMap = SEVERITIES) -> list[Alert]:
    """The one alert a Datadog notification carries."""
    labels = labels_of(payload)
    status = status_of(payload)
    when = payload.date or payload.last_updated
    repeat = (payload.alert_transition or "").strip().lower() in REPEAT_TRANSITIONS
    summary = _title_blocks(payload.alert_title or payload.title)[1]
    return [
        Alert(
            source=SOURCE,
            group_key=group_key_of(payload),
            fingerprint=fingerprint_of(payload),
            status=status,
            severity=severity_of(payload, labels, severities),
            summary=summary or _title_blocks(payload.title)[1] or "Datadog alert",
            description=_description(payload),
            service=labels.get("service") or None,
            impact=(payload.impact or payload.customer_impact or "").strip() or None,
            labels=labels,
            annotations=_annotations(payload),
            starts_at=when if status is AlertStatus.FIRING and not repeat else None,
            ends_at=when if status is AlertStatus.RESOLVED else None,
            generator_url=payload.link or None,
        )
    ]
