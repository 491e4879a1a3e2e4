"""AWS SNS HTTP(S) subscriptions, typically carrying CloudWatch alarms.

SNS POSTs three kinds of message, named by the ``x-amz-sns-message-type``
header and the body's ``Type``: ``SubscriptionConfirmation``, ``Notification``
and ``UnsubscribeConfirmation``. The body is JSON although it is sent as
``text/plain``. Verify every message with :mod:`services.ingest.sns_signature`
before acting on it; this module only reads it.

What :func:`parse` makes of a notification:

* a CloudWatch alarm (``Message`` is the alarm's JSON): one alert per alarm.
  ``ALARM`` fires, ``OK`` resolves. ``INSUFFICIENT_DATA`` gives no alert: it
  says the metric is silent (a new alarm, a stopped instance), neither a
  confirmed problem nor a recovery, and resolving on it would close incidents
  that are still real. Alarms that should page on silence use
  ``TreatMissingData: breaching``, which CloudWatch reports as ``ALARM``.
  Severity comes from a marker in the alarm description (or name):
  ``severity: SEV1`` / ``severity=critical``, or a bracketed word ``[critical]``;
  without one, :data:`SEVERITIES`' default (warning), as for other sources.
* any other message: one firing alert, summarised by ``Subject`` (else the first
  line of ``Message``), its severity marked the same way. Such messages never
  resolve by themselves, so repeats of the same summary on a topic join one
  incident rather than opening one each; the alert's fingerprint is the
  ``MessageId``, so SNS's own retries change nothing.
"""

from __future__ import annotations

import hashlib
import json
import re
from datetime import datetime
from typing import Annotated, Final, Literal

from pydantic import (
    AfterValidator,
    AwareDatetime,
    BaseModel,
    ConfigDict,
    Field,
    TypeAdapter,
    ValidationError,
)

from services.ingest.severity import SeverityMap
from shared.contracts import Alert, AlertStatus, Severity
from shared.errors import FieldError, InvalidPayload

SOURCE: Final = "sns"

# CloudWatch has no severity of its own: markers in the description name one.
SEVERITIES: Final = SeverityMap()

MESSAGE_TYPE_HEADER: Final = "x-amz-sns-message-type"
MAX_SUMMARY_LENGTH: Final = 200
MAX_DESCRIPTION_LENGTH: Final = 1000

_INSTANT: Final = TypeAdapter(AwareDatetime)
_SEVERITY_MARKER: Final = re.compile(r"\bseverity\s*[:=]\s*([A-Za-z0-9_-]+)", re.IGNORECASE)
_BRACKETED_WORD: Final = re.compile(r"\[\s*([A-Za-z0-9_-]+)\s*\]")
# Dimensions that name what customers would call the service, most telling first.
_SERVICE_DIMENSIONS: Final = (
    "ServiceName",
    "Service",
    "FunctionName",
    "ClusterName",
    "DBInstanceIdentifier",
    "TableName",
    "QueueName",
    "LoadBalancer",
)


def _aware_instant(text: str) -> str:
    if _instant(text) is None:
        raise ValueError("must be an ISO 8601 time with a zone")
    return text  # kept as sent: the signature covers the exact text


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="ignore", populate_by_name=True)


class _SnsMessage(_Frozen):
    """Fields every SNS message has. String fields stay exactly as sent: they are signed."""

    message_id: str = Field(alias="MessageId", min_length=1)
    topic_arn: str = Field(alias="TopicArn", min_length=1)
    message: str = Field(alias="Message")
    timestamp: Annotated[str, AfterValidator(_aware_instant)] = Field(alias="Timestamp")
    signature_version: Literal["1", "2"] = Field(alias="SignatureVersion")
    signature: str = Field(alias="Signature", min_length=1, repr=False)
    signing_cert_url: str = Field(alias="SigningCertURL", min_length=1)

    @property
    def published_at(self) -> datetime:
        """When SNS published the message (``Timestamp``); retries keep it."""
        moment = _instant(self.timestamp)
        assert moment is not None  # checked when the message was validated
        return moment


class SnsNotification(_SnsMessage):
    type: Literal["Notification"] = Field(alias="Type")
    subject: str | None = Field(default=None, alias="Subject")
    unsubscribe_url: str | None = Field(default=None, alias="UnsubscribeURL")


class _SnsConfirmation(_SnsMessage):
    token: str = Field(alias="Token", min_length=1, repr=False)
    subscribe_url: str = Field(alias="SubscribeURL", min_length=1, repr=False)


class SnsSubscriptionConfirmation(_SnsConfirmation):
    """Sent once a subscription is made: GET ``SubscribeURL`` to start receiving."""

    type: Literal["SubscriptionConfirmation"] = Field(alias="Type")


class SnsUnsubscribeConfirmation(_SnsConfirmation):
    """Sent after an unsubscribe: ``SubscribeURL`` would subscribe again."""

    type: Literal["UnsubscribeConfirmation"] = Field(alias="Type")


SnsMessage = Annotated[
    SnsNotification | SnsSubscriptionConfirmation | SnsUnsubscribeConfirmation,
    Field(discriminator="type"),
]
SNS_MESSAGE: Final[TypeAdapter[SnsMessage]] = TypeAdapter(SnsMessage)


def message_from(data: object, message_type: str | None = None) -> SnsMessage:
    """The body as its message type.

    Raises pydantic's ``ValidationError`` naming a bad field, and
    :class:`InvalidPayload` when the ``x-amz-sns-message-type`` header (if given)
    contradicts the body's signed ``Type``.
    """
    message = SNS_MESSAGE.validate_python(data)
    if message_type is not None and message_type != message.type:
        reason = (
            f"the {MESSAGE_TYPE_HEADER} header says {message_type!r}, the body {message.type!r}"
        )
        raise InvalidPayload([FieldError("Type", reason)])
    return message


class CloudWatchDimension(_Frozen):
    name: str
    value: str


class CloudWatchTrigger(_Frozen):
    """The metric an alarm watches. Metric-math alarms carry ``Metrics`` instead; not read."""

    metric_name: str | None = Field(default=None, alias="MetricName")
    namespace: str | None = Field(default=None, alias="Namespace")
    statistic: str | None = Field(default=None, alias="Statistic")
    dimensions: list[CloudWatchDimension] | None = Field(default=None, alias="Dimensions")


class CloudWatchAlarm(_Frozen):
    """The JSON a CloudWatch alarm publishes as an SNS ``Message`` when its state changes."""

    alarm_name: str = Field(alias="AlarmName", min_length=1)
    alarm_description: str | None = Field(default=None, alias="AlarmDescription")
    new_state_value: Literal["ALARM", "OK", "INSUFFICIENT_DATA"] = Field(alias="NewStateValue")
    new_state_reason: str | None = Field(default=None, alias="NewStateReason")
    state_change_time: str | None = Field(default=None, alias="StateChangeTime")
    region: str | None = Field(default=None, alias="Region")
    alarm_arn: str | None = Field(default=None, alias="AlarmArn")
    trigger: CloudWatchTrigger | None = Field(default=None, alias="Trigger")


def alarm_of(notification: SnsNotification) -> CloudWatchAlarm | None:
    """The CloudWatch alarm the notification carries, or None for any other message."""
    if not notification.message.lstrip().startswith("{"):
        return None
    try:
        return CloudWatchAlarm.model_validate(json.loads(notification.message))
    except (ValueError, RecursionError, ValidationError):  # not JSON, or not an alarm
        return None


def severity_of(alarm: CloudWatchAlarm, severities: SeverityMap = SEVERITIES) -> Severity:
    """The severity a marker in the description (else the name) names; else the default."""
    return _marked_severity((alarm.alarm_description, alarm.alarm_name), severities)


def _marked_severity(texts: tuple[str | None, ...], severities: SeverityMap) -> Severity:
    """The first ``severity: X`` or ``[known-word]`` marker in ``texts``; else the default."""
    for text in texts:
        if not text:
            continue
        if marker := _SEVERITY_MARKER.search(text):
            return severities.of(marker.group(1))
        for word in _BRACKETED_WORD.findall(text):
            if word.lower() in severities.words:
                return severities.of(word)
    return severities.default


def parse(notification: SnsNotification, severities: SeverityMap = SEVERITIES) -> list[Alert]:
    """The notification's alert: none for ``INSUFFICIENT_DATA``, else exactly one."""
    alarm = alarm_of(notification)
    if alarm is None:
        return [_message_alert(notification, severities)]
    if alarm.new_state_value == "INSUFFICIENT_DATA":
        return []
    return [_alarm_alert(notification, alarm, severities)]


def _digest(*parts: str) -> str:
    return hashlib.sha256("\x00".join(parts).encode()).hexdigest()


def _alarm_identity(notification: SnsNotification, alarm: CloudWatchAlarm) -> str:
    # The ARN names one alarm in one account and region; older messages lack it.
    return (
        _digest(alarm.alarm_arn)
        if alarm.alarm_arn
        else _digest(notification.topic_arn, alarm.alarm_name)
    )


def _alarm_alert(
    notification: SnsNotification, alarm: CloudWatchAlarm, severities: SeverityMap
) -> Alert:
    identity = _alarm_identity(notification, alarm)
    firing = alarm.new_state_value == "ALARM"
    changed_at = _instant(alarm.state_change_time)
    return Alert(
        source=SOURCE,
        group_key=f"{SOURCE}:{identity}",
        fingerprint=identity[:16],
        status=AlertStatus.FIRING if firing else AlertStatus.RESOLVED,
        severity=severity_of(alarm, severities),
        summary=alarm.alarm_name.strip() or "CloudWatch alarm",
        description=_without_markers(alarm.alarm_description, severities)
        or (alarm.new_state_reason or "").strip(),
        service=_service(alarm),
        labels=_alarm_labels(notification, alarm),
        annotations={
            name: text
            for name, text in (
                ("description", alarm.alarm_description),
                ("state_reason", alarm.new_state_reason),
            )
            if text
        },
        starts_at=changed_at if firing else None,
        ends_at=None if firing else changed_at,
    )


def _without_markers(text: str | None, severities: SeverityMap) -> str:
    """The description as customers may read it: severity markers taken out."""
    if not text:
        return ""
    text = _SEVERITY_MARKER.sub("", text)
    text = _BRACKETED_WORD.sub(
        lambda m: "" if m.group(1).lower() in severities.words else m.group(0), text
    )
    return " ".join(text.split())


def _dimensions(alarm: CloudWatchAlarm) -> dict[str, str]:
    if alarm.trigger is None or not alarm.trigger.dimensions:
        return {}
    return {d.name: d.value for d in alarm.trigger.dimensions}


def _service(alarm: CloudWatchAlarm) -> str | None:
    dimensions = _dimensions(alarm)
    return next((dimensions[n] for n in _SERVICE_DIMENSIONS if dimensions.get(n)), None)


def _alarm_labels(notification: SnsNotification, alarm: CloudWatchAlarm) -> dict[str, str]:
    trigger = alarm.trigger
    labels = {
        "alarm_name": alarm.alarm_name,
        "topic_arn": notification.topic_arn,
        "region": alarm.region,
        "alarm_arn": alarm.alarm_arn,
        "namespace": trigger.namespace if trigger else None,
        "metric_name": trigger.metric_name if trigger else None,
        "statistic": trigger.statistic if trigger else None,
        **{f"dimension_{name}": value for name, value in _dimensions(alarm).items()},
    }
    return {name: value for name, value in labels.items() if value}


def _message_alert(notification: SnsNotification, severities: SeverityMap) -> Alert:
    summary = _summary(notification)
    return Alert(
        source=SOURCE,
        group_key=f"{SOURCE}:{_digest(notification.topic_arn, summary)}",
        fingerprint=notification.message_id,
        status=AlertStatus.FIRING,
        severity=_marked_severity((notification.subject, summary), severities),
        summary=summary,
        description=notification.message.strip()[:MAX_DESCRIPTION_LENGTH],
        labels={"topic_arn": notification.topic_arn},
        starts_at=_instant(notification.timestamp),
    )


def _summary(notification: SnsNotification) -> str:
    subject = (notification.subject or "").strip()
    first_line = next(
        (line.strip() for line in notification.message.splitlines() if line.strip()), ""
    )
    text = subject or first_line or "SNS notification"
    return text if len(text) <= MAX_SUMMARY_LENGTH else text[: MAX_SUMMARY_LENGTH - 1] + "…"


def _instant(text: str | None) -> datetime | None:
    """CloudWatch's ``2015-06-03T17:43:27.123+0000``; None when absent or unreadable."""
    if not text:
        return None
    try:
        return _INSTANT.validate_python(text)
    except ValidationError:
        return None
