"""SMS drivers (Twilio, generic HTTP gateway) against a local server that answers like them.

Twilio's answers are the provider's own bodies (tests/fixtures/outbound/twilio_*);
each test checks what went over the wire and how the answer was read.
"""

from __future__ import annotations

import base64
import json
from collections.abc import AsyncIterator, Callable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from redis.asyncio import Redis

from services.dispatcher.channels.context import DriverContext, http_client
from services.dispatcher.channels.outcome import NotConfigured, Permanent, Retryable, Sent
from services.dispatcher.channels.sms import SmsChannel, build_sms_channel
from services.dispatcher.channels.sms_gateway import SmsGatewayChannel
from services.dispatcher.channels.sms_twilio import TwilioSmsChannel
from services.dispatcher.fanout import Delivery
from services.dispatcher.rendering.messages import RenderedMessage
from shared.clock import ManualClock
from shared.plan import ChannelName
from shared.settings import Settings
from tests.conftest import load_fixture
from tests.support.builders import make_delivery
from tests.support.fake_provider import Answer, FakeProvider, Received
from tests.support.plans import make_plan
from tests.support.smtp import free_port

pytestmark = pytest.mark.integration

NOW = datetime(2026, 11, 23, 14, 30, tzinfo=UTC)
SID = "ACaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"  # the account of the 201 fixture
AUTH_TOKEN = "twilio-auth-token-5ecret"
GATEWAY_TOKEN = "gateway-token-5ecret"
SENDER = "+14155552345"
NUMBER = "+15558675310"
MESSAGES_PATH = f"/2010-04-01/Accounts/{SID}/Messages.json"
MESSAGE = RenderedMessage(
    ChannelName.SMS, title="Investigating", text="Checkout is failing. Updates: https://s.example"
)


def twilio_fixture(name: str) -> dict[str, Any]:
    return load_fixture(f"outbound/twilio_{name}.json")


def sms_delivery(**overrides: Any) -> Delivery:
    values = {"channel": ChannelName.SMS, "recipient": NUMBER, "delivery_id": "d" * 32}
    return make_delivery(**(values | overrides))


def assert_private(error: str) -> None:
    """No secret and no full phone number in an error that goes to the delivery log."""
    for private in (AUTH_TOKEN, GATEWAY_TOKEN, NUMBER, NUMBER.lstrip("+")):
        assert private not in error


@pytest.fixture
def provider() -> Iterator[FakeProvider]:
    with FakeProvider() as fake:
        yield fake


@pytest.fixture
async def http(make_settings: Callable[..., Settings]) -> AsyncIterator[httpx.AsyncClient]:
    client = http_client(make_settings())
    try:
        yield client
    finally:
        await client.aclose()


@pytest.fixture
def context(
    make_settings: Callable[..., Settings], http: httpx.AsyncClient, redis: Redis
) -> Callable[..., DriverContext]:
    def build(**settings: Any) -> DriverContext:
        return DriverContext(
            settings=make_settings(**settings),
            plan=make_plan(),
            http=http,
            redis=redis,
            clock=ManualClock(NOW),
            environ={},
        )

    return build


@pytest.fixture
def twilio(context: Callable[..., DriverContext], provider: FakeProvider) -> TwilioSmsChannel:
    return TwilioSmsChannel(
        context(
            twilio_api_url=provider.url,
            twilio_account_sid=SID,
            twilio_auth_token=AUTH_TOKEN,
            twilio_from=SENDER,
        )
    )


# Twilio


async def test_twilio_posts_the_form_with_basic_auth_and_reads_the_message_sid(
    twilio: TwilioSmsChannel, provider: FakeProvider
) -> None:
    provider.answer("POST", MESSAGES_PATH, 201, json=twilio_fixture("messages_create_response_201"))

    outcome = await twilio.send(MESSAGE, NUMBER, sms_delivery())

    assert outcome == Sent("SMaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa")
    [request] = provider.received
    assert (request.method, request.path) == ("POST", MESSAGES_PATH)
    assert request.headers["content-type"] == "application/x-www-form-urlencoded"
    expected_auth = base64.b64encode(f"{SID}:{AUTH_TOKEN}".encode()).decode()
    assert request.headers["authorization"] == f"Basic {expected_auth}"
    assert request.form() == {"To": NUMBER, "From": SENDER, "Body": MESSAGE.text}
    # The documented request uses these field names (it adds a StatusCallback we don't use).
    assert set(request.form()) <= set(twilio_fixture("messages_create_request.form"))
    assert "idempotency-key" not in request.headers
    assert twilio.idempotent is False


async def test_a_messaging_service_sender_goes_as_messaging_service_sid(
    context: Callable[..., DriverContext], provider: FakeProvider
) -> None:
    provider.answer("POST", MESSAGES_PATH, 201, json=twilio_fixture("messages_create_response_201"))
    channel = TwilioSmsChannel(
        context(
            twilio_api_url=provider.url,
            twilio_account_sid=SID,
            twilio_auth_token=AUTH_TOKEN,
            twilio_from="MG" + "b" * 32,
        )
    )

    outcome = await channel.send(MESSAGE, NUMBER, sms_delivery())

    assert isinstance(outcome, Sent)
    assert provider.received[0].form() == {
        "To": NUMBER,
        "MessagingServiceSid": "MG" + "b" * 32,
        "Body": MESSAGE.text,
    }


async def test_twilio_20429_is_retried_after_retry_after(
    twilio: TwilioSmsChannel, provider: FakeProvider
) -> None:
    provider.answer(
        "POST",
        MESSAGES_PATH,
        429,
        json=twilio_fixture("error_20429_too_many_requests"),
        headers={"Retry-After": "30"},
    )

    outcome = await twilio.send(MESSAGE, NUMBER, sms_delivery())

    assert isinstance(outcome, Retryable)
    assert outcome.retry_after == timedelta(seconds=30)
    assert "20429" in outcome.error
    assert_private(outcome.error)


async def test_twilio_20429_is_retryable_whatever_the_http_status(
    twilio: TwilioSmsChannel, provider: FakeProvider
) -> None:
    body = twilio_fixture("error_20429_too_many_requests") | {"status": 400}
    provider.answer("POST", MESSAGES_PATH, 400, json=body)

    outcome = await twilio.send(MESSAGE, NUMBER, sms_delivery())

    assert isinstance(outcome, Retryable)
    assert outcome.retry_after is None


async def test_twilio_21211_invalid_number_is_permanent_and_the_number_stays_private(
    twilio: TwilioSmsChannel, provider: FakeProvider
) -> None:
    template = twilio_fixture("error_21211_invalid_to")

    def echo_the_number(request: Received) -> Answer:
        # Twilio names the refused number in its message, as the fixture shows.
        message = template["message"].replace("+19xxxxxxx", request.form()["To"])
        return Answer(400, json=template | {"message": message})

    provider.answer("POST", MESSAGES_PATH, respond=echo_the_number)

    outcome = await twilio.send(MESSAGE, NUMBER, sms_delivery())

    assert isinstance(outcome, Permanent)
    assert "21211" in outcome.error
    assert "not a valid phone number" in outcome.error
    assert_private(outcome.error)


@pytest.mark.parametrize(
    ("status", "body", "kind"),
    [
        (400, twilio_fixture("error_400_with_details"), Permanent),
        (401, {"code": 20003, "message": "Authenticate", "status": 401}, Permanent),
        (404, {"code": 20404, "message": "Not found", "status": 404}, Permanent),
        (500, {"code": 20500, "message": "Internal Server Error", "status": 500}, Retryable),
        (503, None, Retryable),
    ],
)
async def test_twilio_other_answers_by_status(
    twilio: TwilioSmsChannel,
    provider: FakeProvider,
    status: int,
    body: dict[str, Any] | None,
    kind: type[Permanent | Retryable],
) -> None:
    if body is None:
        provider.answer("POST", MESSAGES_PATH, status, body=b"upstream unavailable")
    else:
        provider.answer("POST", MESSAGES_PATH, status, json=body)

    outcome = await twilio.send(MESSAGE, NUMBER, sms_delivery())

    assert type(outcome) is kind
    assert str(status) in outcome.error
    if body is not None:
        assert str(body["code"]) in outcome.error
    assert_private(outcome.error)


async def test_an_error_that_echoes_credentials_keeps_them_out_of_the_error(
    twilio: TwilioSmsChannel, provider: FakeProvider
) -> None:
    def echo_everything(request: Received) -> Answer:
        echoed = f"{request.headers['authorization']} {request.form()} {AUTH_TOKEN}"
        return Answer(400, json={"code": 21211, "message": echoed, "status": 400})

    provider.answer("POST", MESSAGES_PATH, respond=echo_everything)

    outcome = await twilio.send(MESSAGE, NUMBER, sms_delivery())

    assert isinstance(outcome, Permanent)
    assert_private(outcome.error)
    assert base64.b64encode(f"{SID}:{AUTH_TOKEN}".encode()).decode() not in outcome.error


async def test_unreachable_twilio_is_retryable(context: Callable[..., DriverContext]) -> None:
    channel = TwilioSmsChannel(
        context(
            twilio_api_url=f"http://127.0.0.1:{free_port()}",
            twilio_account_sid=SID,
            twilio_auth_token=AUTH_TOKEN,
            twilio_from=SENDER,
        )
    )

    outcome = await channel.send(MESSAGE, NUMBER, sms_delivery())

    assert isinstance(outcome, Retryable)
    assert "Twilio" in outcome.error
    assert_private(outcome.error)


@pytest.mark.parametrize(
    ("unset", "named"),
    [
        ("twilio_account_sid", "CLARION_TWILIO_ACCOUNT_SID"),
        ("twilio_auth_token", "CLARION_TWILIO_AUTH_TOKEN"),
        ("twilio_from", "CLARION_TWILIO_FROM"),
    ],
)
async def test_twilio_without_credentials_is_not_configured_and_sends_nothing(
    context: Callable[..., DriverContext], provider: FakeProvider, unset: str, named: str
) -> None:
    settings: dict[str, Any] = {
        "twilio_api_url": provider.url,
        "twilio_account_sid": SID,
        "twilio_auth_token": AUTH_TOKEN,
        "twilio_from": SENDER,
    }
    settings[unset] = None

    outcome = await TwilioSmsChannel(context(**settings)).send(MESSAGE, NUMBER, sms_delivery())

    assert isinstance(outcome, NotConfigured)
    assert named in outcome.reason
    others = {"CLARION_TWILIO_ACCOUNT_SID", "CLARION_TWILIO_AUTH_TOKEN", "CLARION_TWILIO_FROM"}
    assert not [other for other in others - {named} if other in outcome.reason]
    assert AUTH_TOKEN not in outcome.reason
    assert SID not in outcome.reason
    assert provider.received == []


# Generic HTTP gateway


def gateway(
    context: Callable[..., DriverContext], provider: FakeProvider, **settings: Any
) -> SmsChannel:
    values: dict[str, Any] = {
        "sms_provider": "gateway",
        "sms_gateway_url": f"{provider.url}/v1/sms",
        "sms_gateway_token": GATEWAY_TOKEN,
    }
    return build_sms_channel(context(**(values | settings)))


async def test_gateway_posts_json_with_our_idempotency_key_and_bearer_token(
    context: Callable[..., DriverContext], provider: FakeProvider
) -> None:
    provider.answer("POST", "/v1/sms", 200, json={"message_id": "gw-7781", "status": "queued"})
    channel = gateway(context, provider)
    delivery = sms_delivery(delivery_id="0f" * 16)

    outcome = await channel.send(MESSAGE, NUMBER, delivery)

    assert isinstance(channel, SmsGatewayChannel)
    assert channel.idempotent is False
    assert outcome == Sent("gw-7781")
    [request] = provider.received
    assert (request.method, request.path) == ("POST", "/v1/sms")
    assert request.headers["content-type"] == "application/json"
    assert request.headers["authorization"] == f"Bearer {GATEWAY_TOKEN}"
    assert request.headers["idempotency-key"] == "0f" * 16
    assert request.json() == {"to": NUMBER, "text": MESSAGE.text, "idempotency_key": "0f" * 16}


@pytest.mark.parametrize(
    ("status", "body", "provider_id"),
    [
        (201, {"id": "abc-1", "message_id": "ignored"}, "abc-1"),
        (200, {"id": 4711}, "4711"),
        (202, None, None),
        (200, ["not", "an", "object"], None),
    ],
)
async def test_gateway_reads_the_message_id_when_there_is_one(
    context: Callable[..., DriverContext],
    provider: FakeProvider,
    status: int,
    body: Any,
    provider_id: str | None,
) -> None:
    if body is None:
        provider.answer("POST", "/v1/sms", status, body=b"")
    else:
        provider.answer("POST", "/v1/sms", status, body=json.dumps(body))

    outcome = await gateway(context, provider).send(MESSAGE, NUMBER, sms_delivery())

    assert outcome == Sent(provider_id)


async def test_gateway_without_a_token_sends_no_authorization(
    context: Callable[..., DriverContext], provider: FakeProvider
) -> None:
    provider.answer("POST", "/v1/sms", 202, json={"id": "q-1"})

    outcome = await gateway(context, provider, sms_gateway_token=None).send(
        MESSAGE, NUMBER, sms_delivery()
    )

    assert outcome == Sent("q-1")
    assert "authorization" not in provider.received[0].headers
    assert provider.received[0].headers["idempotency-key"] == "d" * 32


async def test_gateway_429_is_retried_after_retry_after(
    context: Callable[..., DriverContext], provider: FakeProvider
) -> None:
    provider.answer(
        "POST", "/v1/sms", 429, json={"error": "slow down"}, headers={"Retry-After": "12"}
    )

    outcome = await gateway(context, provider).send(MESSAGE, NUMBER, sms_delivery())

    assert isinstance(outcome, Retryable)
    assert outcome.retry_after == timedelta(seconds=12)
    assert "429" in outcome.error


@pytest.mark.parametrize(("status", "kind"), [(400, Permanent), (422, Permanent), (502, Retryable)])
async def test_gateway_errors_are_classified_and_keep_number_and_token_private(
    context: Callable[..., DriverContext],
    provider: FakeProvider,
    status: int,
    kind: type[Permanent | Retryable],
) -> None:
    def echo(request: Received) -> Answer:
        sent = request.json()
        return Answer(
            status,
            json={
                "error": f"cannot send to {sent['to']}",
                "auth": request.headers["authorization"],
            },
        )

    provider.answer("POST", "/v1/sms", respond=echo)

    outcome = await gateway(context, provider).send(MESSAGE, NUMBER, sms_delivery())

    assert type(outcome) is kind
    assert str(status) in outcome.error
    assert "cannot send to" in outcome.error
    assert_private(outcome.error)


async def test_unreachable_gateway_is_retryable(context: Callable[..., DriverContext]) -> None:
    channel = build_sms_channel(
        context(sms_provider="gateway", sms_gateway_url=f"http://127.0.0.1:{free_port()}/sms")
    )

    outcome = await channel.send(MESSAGE, NUMBER, sms_delivery())

    assert isinstance(outcome, Retryable)
    assert_private(outcome.error)


async def test_gateway_without_a_url_is_not_configured(
    context: Callable[..., DriverContext],
) -> None:
    channel = build_sms_channel(context(sms_provider="gateway", sms_gateway_token=GATEWAY_TOKEN))

    outcome = await channel.send(MESSAGE, NUMBER, sms_delivery())

    assert isinstance(outcome, NotConfigured)
    assert "CLARION_SMS_GATEWAY_URL" in outcome.reason
    assert GATEWAY_TOKEN not in outcome.reason


async def test_the_sms_provider_setting_picks_the_driver(
    context: Callable[..., DriverContext],
) -> None:
    assert isinstance(build_sms_channel(context()), TwilioSmsChannel)
    assert isinstance(build_sms_channel(context(sms_provider="twilio")), TwilioSmsChannel)
    assert isinstance(build_sms_channel(context(sms_provider="gateway")), SmsGatewayChannel)
