"""SNS signature checks against a real certificate server on loopback.

The server (:class:`FakeSnsHost`) stands in for ``sns.<region>.amazonaws.com``:
it serves the signing certificate and the SubscribeURL, and counts every request.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from cryptography import x509

from services.ingest.sns_signature import (
    BadSignature,
    CertificateUnavailable,
    HttpCertificateFetcher,
    SnsVerificationError,
    SnsVerifier,
    StaleMessage,
    SubscriptionNotConfirmed,
    UnknownTopic,
    UntrustedUrl,
    confirm_subscription,
    require_known_topic,
    string_to_sign,
)
from services.ingest.sources.sns import (
    SnsMessage,
    SnsNotification,
    SnsSubscriptionConfirmation,
    message_from,
)
from shared.clock import ManualClock
from shared.errors import RetryableFailure, Unauthorized
from shared.settings import Settings
from tests.support.signing_certs import (
    FakeSnsHost,
    SigningIdentity,
    serving_fake_sns_host,
    signing_identity,
)

pytestmark = pytest.mark.integration

NOW = datetime(2026, 11, 23, 14, 30, tzinfo=UTC)
TOPIC = "arn:aws:sns:us-west-2:123456789012:clarion-alarms"
_NOWHERE = FakeSnsHost(b"", base_url="http://127.0.0.1:9")  # for messages never fetched


@pytest.fixture(scope="module")
def identity() -> SigningIdentity:
    return signing_identity(NOW)


@pytest.fixture(scope="module")
def running_server(identity: SigningIdentity) -> Iterator[FakeSnsHost]:
    with serving_fake_sns_host(identity) as host:
        yield host


@pytest.fixture
def server(running_server: FakeSnsHost) -> FakeSnsHost:
    running_server.requests.clear()
    return running_server


@pytest.fixture
async def client() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient() as http:
        yield http


@pytest.fixture
def verifier(server: FakeSnsHost, client: httpx.AsyncClient) -> SnsVerifier:
    return SnsVerifier(HttpCertificateFetcher(client), server.url_pattern, clock=ManualClock(NOW))


def notification(server: FakeSnsHost, **changes: Any) -> dict[str, Any]:
    body = {
        "Type": "Notification",
        "MessageId": "22b80b92-fdea-4c2c-8f9d-bdfb0c7bf324",
        "TopicArn": TOPIC,
        "Subject": 'ALARM: "checkout-5xx" in US West (Oregon)',
        "Message": '{"AlarmName":"checkout-5xx","NewStateValue":"ALARM"}',
        "Timestamp": (NOW - timedelta(seconds=3)).isoformat(timespec="milliseconds"),
        "SigningCertURL": server.url("/cert.pem"),
        "UnsubscribeURL": server.url("/unsubscribe"),
    }
    body.update(changes)
    return body


def subscription(server: FakeSnsHost, **changes: Any) -> dict[str, Any]:
    body = {
        "Type": "SubscriptionConfirmation",
        "MessageId": "165545c9-2a5c-472c-8df2-7ff2be2b3b1b",
        "Token": "2336412f37fb687f5d51e6e241d09c805a5a57b30d712f794cc5f6a988666d92",
        "TopicArn": TOPIC,
        "Message": f"You have chosen to subscribe to the topic {TOPIC}.\n"
        "To confirm the subscription, visit the SubscribeURL included in this message.",
        "SubscribeURL": server.url("/confirm?Action=ConfirmSubscription&Token=2336412f"),
        "Timestamp": (NOW - timedelta(seconds=3)).isoformat(timespec="milliseconds"),
        "SigningCertURL": server.url("/cert.pem"),
    }
    body.update(changes)
    return body


def parsed(body: dict[str, Any]) -> SnsMessage:
    return message_from(body)


async def test_a_validly_signed_notification_passes(
    verifier: SnsVerifier, server: FakeSnsHost, identity: SigningIdentity
) -> None:
    await verifier.verify(parsed(identity.signed(notification(server))))

    assert server.requests == Counter({"/cert.pem": 1})


async def test_signature_version_2_is_sha256(
    verifier: SnsVerifier, server: FakeSnsHost, identity: SigningIdentity
) -> None:
    await verifier.verify(parsed(identity.signed(notification(server), version="2")))

    # A SHA1 signature relabelled as version 2 does not pass.
    relabelled = {**identity.signed(notification(server), version="1"), "SignatureVersion": "2"}
    with pytest.raises(BadSignature):
        await verifier.verify(parsed(relabelled))


async def test_a_notification_without_subject_signs_without_it(
    verifier: SnsVerifier, server: FakeSnsHost, identity: SigningIdentity
) -> None:
    body = notification(server)
    del body["Subject"]

    await verifier.verify(parsed(identity.signed(body)))


@pytest.mark.parametrize("field_name", ["Message", "Subject", "MessageId", "TopicArn", "Timestamp"])
async def test_a_tampered_field_fails(
    verifier: SnsVerifier, server: FakeSnsHost, identity: SigningIdentity, field_name: str
) -> None:
    body = identity.signed(notification(server))
    body[field_name] = (
        (NOW - timedelta(seconds=1)).isoformat() if field_name == "Timestamp" else "tampered"
    )

    with pytest.raises(BadSignature) as info:
        await verifier.verify(parsed(body))

    assert body["Signature"] not in str(info.value)
    assert isinstance(info.value, Unauthorized)


async def test_a_message_signed_by_another_key_fails(
    verifier: SnsVerifier, server: FakeSnsHost
) -> None:
    impostor = signing_identity(NOW)

    with pytest.raises(BadSignature):
        await verifier.verify(parsed(impostor.signed(notification(server))))


async def test_a_signature_that_is_not_base64_fails_without_fetching(
    verifier: SnsVerifier, server: FakeSnsHost, identity: SigningIdentity
) -> None:
    body = {**identity.signed(notification(server)), "Signature": "not base64 at all!"}

    with pytest.raises(BadSignature, match="base64"):
        await verifier.verify(parsed(body))

    assert server.requests == Counter()


@pytest.mark.parametrize(
    "cert_url",
    [
        "http://localhost:{port}/cert.pem",  # the same server, by another name
        "https://sns.us-west-2.amazonaws.com.evil.example/cert.pem",
        "http://127.0.0.1:{port}@evil.example/cert.pem",
        " http://127.0.0.1:{port}/cert.pem",
    ],
)
async def test_a_certificate_url_off_the_pattern_is_refused_without_fetching(
    verifier: SnsVerifier, server: FakeSnsHost, identity: SigningIdentity, cert_url: str
) -> None:
    port = server.base_url.rsplit(":", 1)[1]
    body = identity.signed(notification(server, SigningCertURL=cert_url.format(port=port)))

    with pytest.raises(UntrustedUrl, match="SigningCertURL"):
        await verifier.verify(parsed(body))

    assert server.requests == Counter()


async def test_the_certificate_is_fetched_once_and_cached(
    verifier: SnsVerifier, server: FakeSnsHost, identity: SigningIdentity
) -> None:
    for number in range(3):
        body = notification(server, MessageId=f"message-{number}")
        await verifier.verify(parsed(identity.signed(body, version=str(1 + number % 2))))

    assert server.requests == Counter({"/cert.pem": 1})


async def test_concurrent_first_messages_fetch_the_certificate_once(
    verifier: SnsVerifier, server: FakeSnsHost, identity: SigningIdentity
) -> None:
    bodies = [identity.signed(notification(server, MessageId=f"m-{n}")) for n in range(5)]

    await asyncio.gather(*(verifier.verify(parsed(body)) for body in bodies))

    assert server.requests == Counter({"/cert.pem": 1})


async def test_an_old_message_is_refused_before_fetching(
    verifier: SnsVerifier, server: FakeSnsHost, identity: SigningIdentity
) -> None:
    old = (NOW - timedelta(hours=1, seconds=1)).isoformat()
    body = identity.signed(notification(server, Timestamp=old))

    with pytest.raises(StaleMessage, match="over 1:00:00 ago"):
        await verifier.verify(parsed(body))

    assert server.requests == Counter()


async def test_a_message_from_the_future_is_refused(
    verifier: SnsVerifier, server: FakeSnsHost, identity: SigningIdentity
) -> None:
    future = (NOW + timedelta(minutes=6)).isoformat()

    with pytest.raises(StaleMessage, match="future"):
        await verifier.verify(parsed(identity.signed(notification(server, Timestamp=future))))


async def test_a_message_just_inside_the_window_passes(
    verifier: SnsVerifier, server: FakeSnsHost, identity: SigningIdentity
) -> None:
    edge = (NOW - timedelta(minutes=59)).isoformat()

    await verifier.verify(parsed(identity.signed(notification(server, Timestamp=edge))))


async def test_an_expired_certificate_does_not_vouch(
    server: FakeSnsHost, client: httpx.AsyncClient, identity: SigningIdentity
) -> None:
    later = NOW + timedelta(days=400)
    verifier = SnsVerifier(
        HttpCertificateFetcher(client), server.url_pattern, clock=ManualClock(later)
    )
    body = identity.signed(notification(server, Timestamp=later.isoformat()))

    with pytest.raises(BadSignature, match="not valid"):
        await verifier.verify(parsed(body))


@pytest.mark.parametrize("path", ["/missing.pem", "/huge.pem", "/moved.pem"])
async def test_an_unavailable_certificate_is_retryable(
    verifier: SnsVerifier, server: FakeSnsHost, identity: SigningIdentity, path: str
) -> None:
    body = identity.signed(notification(server, SigningCertURL=server.url(path)))

    with pytest.raises(CertificateUnavailable) as info:
        await verifier.verify(parsed(body))

    assert isinstance(info.value, RetryableFailure)
    assert isinstance(info.value, SnsVerificationError)
    assert server.requests[path] == 1
    assert server.requests["/cert.pem"] == 0  # the redirect was not followed


async def test_a_failed_fetch_is_not_cached(
    verifier: SnsVerifier, server: FakeSnsHost, identity: SigningIdentity
) -> None:
    body = identity.signed(notification(server, SigningCertURL=server.url("/missing.pem")))
    for _ in range(2):
        with pytest.raises(CertificateUnavailable):
            await verifier.verify(parsed(body))

    assert server.requests["/missing.pem"] == 2


async def test_a_subscription_confirmation_verifies_and_confirms_once(
    verifier: SnsVerifier,
    server: FakeSnsHost,
    identity: SigningIdentity,
    client: httpx.AsyncClient,
) -> None:
    message = parsed(identity.signed(subscription(server), version="2"))
    assert isinstance(message, SnsSubscriptionConfirmation)

    await verifier.verify(message)
    await confirm_subscription(client, message, server.url_pattern)

    assert server.requests == Counter({"/cert.pem": 1, "/confirm": 1})


async def test_an_unsubscribe_confirmation_verifies(
    verifier: SnsVerifier, server: FakeSnsHost, identity: SigningIdentity
) -> None:
    body = subscription(server, Type="UnsubscribeConfirmation")

    await verifier.verify(parsed(identity.signed(body)))


async def test_a_tampered_token_fails(
    verifier: SnsVerifier, server: FakeSnsHost, identity: SigningIdentity
) -> None:
    body = {**identity.signed(subscription(server)), "Token": "another-token"}

    with pytest.raises(BadSignature):
        await verifier.verify(parsed(body))


async def test_a_subscribe_url_off_the_pattern_is_not_visited(
    server: FakeSnsHost, identity: SigningIdentity, client: httpx.AsyncClient
) -> None:
    port = server.base_url.rsplit(":", 1)[1]
    body = subscription(server, SubscribeURL=f"http://localhost:{port}/confirm?Token=secret")
    message = parsed(identity.signed(body))
    assert isinstance(message, SnsSubscriptionConfirmation)

    with pytest.raises(UntrustedUrl) as info:
        await confirm_subscription(client, message, server.url_pattern)

    assert "secret" not in str(info.value)  # the token in the query is never shown
    assert server.requests == Counter()


async def test_a_refused_confirmation_is_retryable(
    server: FakeSnsHost, identity: SigningIdentity, client: httpx.AsyncClient
) -> None:
    message = parsed(identity.signed(subscription(server, SubscribeURL=server.url("/refuse"))))
    assert isinstance(message, SnsSubscriptionConfirmation)

    with pytest.raises(SubscriptionNotConfirmed, match="HTTP 403"):
        await confirm_subscription(client, message, server.url_pattern)

    assert server.requests == Counter({"/refuse": 1})


@pytest.mark.parametrize(
    ("cert_url", "allowed"),
    [
        ("https://sns.us-west-2.amazonaws.com/SimpleNotificationService-f3ecfb72.pem", True),
        ("https://sns.cn-north-1.amazonaws.com.cn/SimpleNotificationService-abc.pem", True),
        ("http://sns.us-west-2.amazonaws.com/x.pem", False),
        ("https://sns.us-west-2.amazonaws.com.evil.example/x.pem", False),
        ("https://evil.example/sns.us-west-2.amazonaws.com/x.pem", False),
        ("https://sns.us-west-2.amazonaws.com@evil.example/x.pem", False),
        ("https://sns.us-west-2.amazonaws.com:8443/x.pem", False),
    ],
)
async def test_the_default_pattern_allows_aws_sns_hosts_only(
    identity: SigningIdentity, cert_url: str, allowed: bool
) -> None:
    pattern = Settings(_env_file=None).sns_cert_url_pattern
    verifier = SnsVerifier(_FetchRefused(), pattern, clock=ManualClock(NOW))
    message = parsed(identity.signed(notification(_NOWHERE, SigningCertURL=cert_url)))

    expected = _Fetched if allowed else UntrustedUrl
    with pytest.raises(expected):
        await verifier.verify(message)


class _Fetched(Exception):
    pass


class _FetchRefused:
    """A fetcher that only reports that it was asked: proof the URL passed the pattern."""

    async def certificate(self, url: str) -> x509.Certificate:
        raise _Fetched(url)


def test_string_to_sign_follows_the_documented_example() -> None:
    # AWS's example string to sign for a Notification (SNS developer guide).
    body = {
        "Type": "Notification",
        "MessageId": "4d4dc071-ddbf-465d-bba8-08f81c89da64",
        "TopicArn": "arn:aws:sns:us-east-2:123456789012:s4-MySNSTopic-1G1WEFCOXTC0P",
        "Subject": "My subject",
        "Message": "My Test Message",
        "Timestamp": "2012-06-05T04:37:04.321Z",
        "SignatureVersion": "1",
        "Signature": "c2lnbmF0dXJl",
        "SigningCertURL": "https://sns.us-east-2.amazonaws.com/cert.pem",
    }

    assert string_to_sign(parsed(body)) == (
        b"Message\nMy Test Message\n"
        b"MessageId\n4d4dc071-ddbf-465d-bba8-08f81c89da64\n"
        b"Subject\nMy subject\n"
        b"Timestamp\n2012-06-05T04:37:04.321Z\n"
        b"TopicArn\narn:aws:sns:us-east-2:123456789012:s4-MySNSTopic-1G1WEFCOXTC0P\n"
        b"Type\nNotification\n"
    )


def test_only_configured_topics_are_heard(identity: SigningIdentity) -> None:
    message = SnsNotification.model_validate(identity.signed(notification(_NOWHERE)))

    require_known_topic(message, ())
    require_known_topic(message, (TOPIC,))
    with pytest.raises(UnknownTopic):
        require_known_topic(message, ("arn:aws:sns:us-west-2:123456789012:other",))
