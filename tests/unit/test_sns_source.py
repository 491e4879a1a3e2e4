from __future__ import annotations

import json
import re
from datetime import UTC, datetime
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import ValidationError

from services.ingest.severity import configured
from services.ingest.sources.sns import (
    SEVERITIES,
    SNS_MESSAGE,
    SnsNotification,
    SnsSubscriptionConfirmation,
    alarm_of,
    message_from,
    parse,
)
from shared.contracts import AlertStatus, Severity
from shared.errors import InvalidPayload
from tests.conftest import load_fixture
from tests.support.strategies import json_values, mutated

NOTIFICATION = "aws_sns_http_notification.json"
SUBSCRIPTION = "aws_sns_http_subscription_confirmation.json"
ALARM_ARN = "arn:aws:cloudwatch:us-west-2:123456789012:alarm:checkout-5xx-high"
TOPIC = "arn:aws:sns:us-west-2:123456789012:clarion-alarms"


def cloudwatch_alarm(state: str = "ALARM", **changes: Any) -> dict[str, Any]:
    """A CloudWatch metric alarm's state change, in the shape it publishes to SNS."""
    alarm: dict[str, Any] = {
        "AlarmName": "checkout-5xx-high",
        "AlarmDescription": "severity: SEV2 Checkout answers 5xx to more than 5% of requests.",
        "AWSAccountId": "123456789012",
        "AlarmConfigurationUpdatedTimestamp": "2026-11-01T09:12:44.118+0000",
        "NewStateValue": state,
        "NewStateReason": "Threshold Crossed: 1 out of the last 1 datapoints [12.3 "
        "(23/11/26 14:29:00)] was greater than the threshold (5.0) "
        "(minimum 1 datapoint for OK -> ALARM transition).",
        "StateChangeTime": "2026-11-23T14:30:24.519+0000",
        "Region": "US West (Oregon)",
        "AlarmArn": ALARM_ARN,
        "OldStateValue": "OK" if state == "ALARM" else "ALARM",
        "OKActions": [TOPIC],
        "AlarmActions": [TOPIC],
        "InsufficientDataActions": [],
        "Trigger": {
            "MetricName": "HTTPCode_Target_5XX_Count",
            "Namespace": "AWS/ApplicationELB",
            "StatisticType": "Statistic",
            "Statistic": "SUM",
            "Unit": None,
            "Dimensions": [
                {"value": "app/checkout-alb/50dc6c495c0c9188", "name": "LoadBalancer"},
                {"value": "checkout-api", "name": "ServiceName"},
            ],
            "Period": 60,
            "EvaluationPeriods": 1,
            "DatapointsToAlarm": 1,
            "ComparisonOperator": "GreaterThanThreshold",
            "Threshold": 5.0,
            "TreatMissingData": "missing",
            "EvaluateLowSampleCountPercentile": "",
        },
    }
    alarm.update(changes)
    return alarm


def alarm_notification(alarm: dict[str, Any], **changes: Any) -> SnsNotification:
    body = load_fixture(NOTIFICATION)
    body.update(
        TopicArn=TOPIC,
        Subject=f'{alarm["NewStateValue"]}: "{alarm["AlarmName"]}" in US West (Oregon)',
        Message=json.dumps(alarm),
    )
    body.update(changes)
    return SnsNotification.model_validate(body)


def test_the_documented_notification_parses() -> None:
    message = message_from(load_fixture(NOTIFICATION), "Notification")

    assert isinstance(message, SnsNotification)
    assert message.subject == "My First Message"
    assert message.published_at == datetime(2012, 5, 2, 0, 54, 6, 655000, tzinfo=UTC)
    assert message.timestamp == "2012-05-02T00:54:06.655Z"  # kept as signed


def test_the_documented_subscription_confirmation_parses() -> None:
    message = message_from(load_fixture(SUBSCRIPTION), "SubscriptionConfirmation")

    assert isinstance(message, SnsSubscriptionConfirmation)
    assert message.subscribe_url.startswith("https://sns.us-west-2.amazonaws.com/?Action=")
    assert message.token.startswith("2336412f37fb")
    # Secrets stay out of logs that print the model.
    assert message.token not in repr(message)
    assert message.signature not in repr(message)


def test_a_header_that_contradicts_the_body_is_refused() -> None:
    with pytest.raises(InvalidPayload, match="x-amz-sns-message-type"):
        message_from(load_fixture(NOTIFICATION), "SubscriptionConfirmation")


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"Type": "Telegram"}, ()),
        ({"SignatureVersion": "3"}, ("Notification", "SignatureVersion")),
        ({"Timestamp": "last tuesday"}, ("Notification", "Timestamp")),
        ({"Timestamp": "2012-05-02T00:54:06"}, ("Notification", "Timestamp")),  # no zone
        ({"MessageId": ""}, ("Notification", "MessageId")),
    ],
)
def test_malformed_messages_name_the_field(changes: dict[str, Any], field: tuple[str, ...]) -> None:
    body = {**load_fixture(NOTIFICATION), **changes}

    with pytest.raises(ValidationError) as info:
        message_from(body)

    assert info.value.errors()[0]["loc"][: len(field)] == field


def test_a_plain_message_is_one_firing_alert_named_by_its_subject() -> None:
    notification = message_from(load_fixture(NOTIFICATION))
    assert isinstance(notification, SnsNotification)

    (alert,) = parse(notification)

    assert alert.source == "sns"
    assert alert.status is AlertStatus.FIRING
    assert alert.severity is Severity.WARNING
    assert alert.summary == "My First Message"
    assert alert.description == "Hello world!"
    assert alert.fingerprint == "22b80b92-fdea-4c2c-8f9d-bdfb0c7bf324"
    assert re.fullmatch(r"sns:[0-9a-f]{64}", alert.group_key)
    assert alert.starts_at == datetime(2012, 5, 2, 0, 54, 6, 655000, tzinfo=UTC)


def test_repeats_of_a_plain_message_join_one_incident() -> None:
    body = load_fixture(NOTIFICATION)
    first = SnsNotification.model_validate(body)
    again = SnsNotification.model_validate({**body, "MessageId": "another-message"})
    other = SnsNotification.model_validate({**body, "Subject": "Something else"})

    (a,), (b,), (c,) = parse(first), parse(again), parse(other)

    assert a.group_key == b.group_key != c.group_key
    assert a.fingerprint != b.fingerprint


def test_without_subject_the_first_line_of_the_message_summarises() -> None:
    body = {**load_fixture(NOTIFICATION), "Message": "\n  Disk full on db-1  \nmore detail"}
    del body["Subject"]

    (alert,) = parse(SnsNotification.model_validate(body))

    assert alert.summary == "Disk full on db-1"


def test_a_long_summary_is_shortened() -> None:
    body = {**load_fixture(NOTIFICATION), "Message": "x" * 500}
    del body["Subject"]

    (alert,) = parse(SnsNotification.model_validate(body))

    assert len(alert.summary) == 200
    assert alert.summary.endswith("…")


def test_a_json_message_that_is_not_an_alarm_is_a_plain_message() -> None:
    notification = alarm_notification(cloudwatch_alarm(), Message='{"detail-type": "EC2"}')

    assert alarm_of(notification) is None
    (alert,) = parse(notification)
    assert alert.fingerprint == notification.message_id


def test_an_alarm_firing_is_one_alert() -> None:
    (alert,) = parse(alarm_notification(cloudwatch_alarm("ALARM")))

    assert alert.status is AlertStatus.FIRING
    assert alert.severity is Severity.ERROR
    assert alert.summary == "checkout-5xx-high"
    assert alert.description == "Checkout answers 5xx to more than 5% of requests."
    assert alert.service == "checkout-api"
    assert alert.starts_at == datetime(2026, 11, 23, 14, 30, 24, 519000, tzinfo=UTC)
    assert alert.ends_at is None
    assert alert.annotations["state_reason"].startswith("Threshold Crossed")
    assert alert.labels["alarm_arn"] == ALARM_ARN
    assert alert.labels["namespace"] == "AWS/ApplicationELB"
    assert alert.labels["metric_name"] == "HTTPCode_Target_5XX_Count"
    assert alert.labels["dimension_LoadBalancer"] == "app/checkout-alb/50dc6c495c0c9188"
    assert re.fullmatch(r"sns:[0-9a-f]{64}", alert.group_key)


def test_an_alarm_back_to_ok_resolves_the_same_alert() -> None:
    (fired,) = parse(alarm_notification(cloudwatch_alarm("ALARM")))
    (recovered,) = parse(alarm_notification(cloudwatch_alarm("OK"), MessageId="later"))

    assert recovered.status is AlertStatus.RESOLVED
    assert recovered.ends_at == datetime(2026, 11, 23, 14, 30, 24, 519000, tzinfo=UTC)
    assert (recovered.group_key, recovered.fingerprint) == (fired.group_key, fired.fingerprint)


def test_insufficient_data_gives_no_alert() -> None:
    assert parse(alarm_notification(cloudwatch_alarm("INSUFFICIENT_DATA"))) == []


def test_without_an_arn_the_alarm_is_known_by_topic_and_name() -> None:
    alarm = cloudwatch_alarm()
    del alarm["AlarmArn"]

    (here,) = parse(alarm_notification(alarm))
    (elsewhere,) = parse(alarm_notification(alarm, TopicArn=TOPIC + "-eu"))
    (with_arn,) = parse(alarm_notification(cloudwatch_alarm()))

    assert here.group_key != elsewhere.group_key
    assert here.group_key != with_arn.group_key


def test_an_alarm_with_a_null_description_and_no_trigger_parses() -> None:
    alarm = cloudwatch_alarm(AlarmDescription=None)
    del alarm["Trigger"]  # composite alarms have none

    (alert,) = parse(alarm_notification(alarm))

    assert alert.severity is Severity.WARNING
    assert alert.description.startswith("Threshold Crossed")
    assert alert.service is None


@pytest.mark.parametrize(
    ("description", "name", "expected"),
    [
        ("severity: SEV1 - checkout down", "checkout", Severity.CRITICAL),
        ("Severity=critical", "checkout", Severity.CRITICAL),
        ("[error] Checkout slow", "checkout", Severity.ERROR),
        ("[prod] Checkout slow [p3]", "checkout", Severity.WARNING),
        ("[prod] Checkout slow", "checkout", Severity.WARNING),  # no marker: the default
        ("Checkout slow", "[info] checkout-latency", Severity.INFO),
        ("severity: banana", "checkout", Severity.WARNING),
        (None, "checkout", Severity.WARNING),
    ],
)
def test_severity_comes_from_a_marker(
    description: str | None, name: str, expected: Severity
) -> None:
    alarm = cloudwatch_alarm(AlarmDescription=description, AlarmName=name)

    (alert,) = parse(alarm_notification(alarm))

    assert alert.severity is expected


def test_markers_are_taken_out_of_the_description() -> None:
    alarm = cloudwatch_alarm(AlarmDescription="[critical] Checkout  [prod] down")

    (alert,) = parse(alarm_notification(alarm))

    assert alert.description == "Checkout [prod] down"


def test_operators_can_change_the_default_and_words() -> None:
    severities = configured("sns", SEVERITIES, {"sns": {"sev2": Severity.CRITICAL}})

    (alert,) = parse(alarm_notification(cloudwatch_alarm()), severities)

    assert alert.severity is Severity.CRITICAL


# Arbitrary JSON: rejected with a ValidationError, or parsed without any other exception.

_alarms = mutated(
    st.fixed_dictionaries(
        {
            "AlarmName": st.text(max_size=10),
            "NewStateValue": st.sampled_from(["ALARM", "OK", "INSUFFICIENT_DATA"]),
        },
        optional={
            "AlarmDescription": st.none() | st.text(max_size=30),
            "AlarmArn": st.text(max_size=10),
            "StateChangeTime": st.text(max_size=30),
            "Trigger": st.fixed_dictionaries(
                {},
                optional={
                    "Namespace": json_values,
                    "Dimensions": st.lists(
                        st.fixed_dictionaries({"name": st.text(), "value": st.text()})
                    ),
                },
            ),
        },
    ),
    ("AlarmName", "NewStateValue", "AlarmDescription", "AlarmArn", "StateChangeTime", "Trigger"),
)
_messages = mutated(
    st.fixed_dictionaries(
        {
            "Type": st.sampled_from(
                ["Notification", "SubscriptionConfirmation", "UnsubscribeConfirmation"]
            ),
            "MessageId": st.text(min_size=1, max_size=10),
            "TopicArn": st.text(min_size=1, max_size=10),
            "Message": st.text(max_size=40) | _alarms.map(json.dumps),
            "Timestamp": st.datetimes(timezones=st.just(UTC)).map(datetime.isoformat),
            "SignatureVersion": st.sampled_from(["1", "2"]),
            "Signature": st.text(min_size=1, max_size=10),
            "SigningCertURL": st.text(min_size=1, max_size=10),
            "Token": st.text(min_size=1, max_size=10),
            "SubscribeURL": st.text(min_size=1, max_size=10),
        },
        optional={"Subject": st.none() | st.text(max_size=20)},
    ),
    ("Type", "MessageId", "Message", "Timestamp", "SignatureVersion", "Subject", "Token"),
)


@given(st.one_of(json_values, _messages))
def test_any_json_is_rejected_cleanly_or_parsed(data: Any) -> None:
    try:
        message = SNS_MESSAGE.validate_python(data)
    except ValidationError:
        return
    if isinstance(message, SnsNotification):
        assert len(parse(message)) <= 1
    assert message.published_at.tzinfo is not None
