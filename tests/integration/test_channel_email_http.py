"""SendGrid v3 and Mailgun email drivers against a local fake provider: the exact
request each sends, and how each provider answer is classified."""

from __future__ import annotations

import base64
import json
import re
from collections.abc import AsyncIterator, Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from redis.asyncio import Redis

from services.dispatcher.channels import Channel
from services.dispatcher.channels.context import DriverContext, http_client
from services.dispatcher.channels.email_mailgun import MailgunChannel
from services.dispatcher.channels.email_sendgrid import SendGridChannel
from services.dispatcher.channels.outcome import (
    NotConfigured,
    Outcome,
    Permanent,
    Retryable,
    Sent,
)
from services.dispatcher.rendering.messages import RenderedMessage
from services.dispatcher.unsubscribe import unsubscribe_token, verify_unsubscribe_token
from shared.clock import ManualClock
from shared.plan import ChannelName
from shared.settings import Settings
from tests.support.builders import make_delivery
from tests.support.fake_provider import FakeProvider
from tests.support.plans import make_plan
from tests.support.smtp import free_port

pytestmark = pytest.mark.integration

OUTBOUND = Path(__file__).parent.parent / "fixtures" / "outbound"
NOW = datetime(2026, 11, 23, 14, 30, tzinfo=UTC)
SECRET = "unsubscribe-secret-for-tests"
SENDGRID_KEY = "SG.test-key-not-real"
MAILGUN_KEY = "mailgun-test-key-not-real"
MAILGUN_DOMAIN = "mg.example.com"
FROM = "Example Status <status@example.com>"
ALICE = "alice@example.com"
MESSAGE = RenderedMessage(
    ChannelName.EMAIL,
    title="Investigating: Checkout is failing",
    text="We are investigating.\n",
    html="<p>We are investigating.</p>",
)
PUBLIC = make_delivery(delivery_id="d-public", incident_id="inc-1", public=True)
INTERNAL = make_delivery(delivery_id="d-internal", audience="oncall", public=False)
UNSUBSCRIBE = f"https://status.example.com/unsubscribe?token={unsubscribe_token(SECRET, ALICE)}"
EMAIL_PATTERN = re.compile(r"[\w.+-]+@[\w-]+\.[\w.]+")


def outbound(name: str) -> Any:
    return json.loads((OUTBOUND / name).read_text())


@pytest.fixture
def provider() -> Iterator[FakeProvider]:
    with FakeProvider() as fake:
        yield fake


@pytest.fixture
async def http(make_settings: Callable[..., Settings]) -> AsyncIterator[httpx.AsyncClient]:
    async with http_client(make_settings()) as client:
        yield client


@pytest.fixture
def driver(
    make_settings: Callable[..., Settings], redis: Redis, http: httpx.AsyncClient
) -> Callable[..., Channel]:
    def factory(kind: type, **overrides: Any) -> Channel:
        values: dict[str, Any] = {
            "email_from": FROM,
            "unsubscribe_secret": SECRET,
            "sendgrid_api_key": SENDGRID_KEY,
            "mailgun_api_key": MAILGUN_KEY,
            "mailgun_domain": MAILGUN_DOMAIN,
        }
        ctx = DriverContext(
            settings=make_settings(**(values | overrides)),
            plan=make_plan(status_page_url="https://status.example.com"),
            http=http,
            redis=redis,
            clock=ManualClock(NOW),
            environ={},
        )
        channel: Channel = kind(ctx)
        return channel

    return factory


def assert_clean(outcome: Outcome) -> None:
    """No address and no key in what goes to the delivery log."""
    if isinstance(outcome, NotConfigured):
        text = outcome.reason
    else:
        assert isinstance(outcome, Permanent | Retryable)
        text = outcome.error
    assert not EMAIL_PATTERN.search(text), text
    for secret in (SENDGRID_KEY, MAILGUN_KEY, SECRET):
        assert secret not in text


THREAD_HEADERS = {
    "Message-ID": "<d-public@example.com>",
    "In-Reply-To": "<incident-inc-1@example.com>",
    "References": "<incident-inc-1@example.com>",
    "Auto-Submitted": "auto-generated",
    "X-Auto-Response-Suppress": "OOF, AutoReply",
}


# SendGrid


async def test_sendgrid_gets_the_documented_request(
    driver: Callable[..., Channel], provider: FakeProvider
) -> None:
    provider.answer("POST", "/v3/mail/send", 202, headers={"X-Message-Id": "sg-msg-1"})
    channel = driver(SendGridChannel, sendgrid_api_url=provider.url)

    outcome = await channel.send(MESSAGE, ALICE, PUBLIC)

    assert outcome == Sent("sg-msg-1")
    [request] = provider.requests_to("POST", "/v3/mail/send")
    assert request.headers["authorization"] == f"Bearer {SENDGRID_KEY}"
    assert request.headers["content-type"] == "application/json"
    body = request.json()
    assert body == {
        "personalizations": [{"to": [{"email": ALICE}]}],
        "from": {"email": "status@example.com", "name": "Example Status"},
        "subject": "Investigating: Checkout is failing",
        "content": [
            {"type": "text/plain", "value": "We are investigating.\n"},
            {"type": "text/html", "value": "<p>We are investigating.</p>"},
        ],
        "headers": {
            **THREAD_HEADERS,
            "Precedence": "bulk",
            "X-Clarion-Incident": "inc-1",
            "List-Unsubscribe": f"<{UNSUBSCRIBE}>",
            "List-Unsubscribe-Post": "List-Unsubscribe=One-Click",
        },
        "custom_args": {"delivery_id": "d-public", "incident_id": "inc-1", "event_id": "ev-1"},
        "categories": ["incident"],
    }
    # The same shape as the documented incident request: its fields, content order, headers.
    documented = outbound("sendgrid_v3_mail_send_incident.json")
    assert set(body) <= set(documented)
    assert [c["type"] for c in body["content"]] == [c["type"] for c in documented["content"]]
    assert set(documented["headers"]) <= set(body["headers"])
    assert set(body["personalizations"][0]["to"][0]) <= set(
        documented["personalizations"][0]["to"][0]
    )
    assert all(isinstance(v, str) for v in body["custom_args"].values())


async def test_sendgrid_internal_mail_has_no_unsubscribe(
    driver: Callable[..., Channel], provider: FakeProvider
) -> None:
    provider.answer("POST", "/v3/mail/send", 202, headers={"X-Message-Id": "sg-msg-2"})
    channel = driver(SendGridChannel, sendgrid_api_url=provider.url)

    outcome = await channel.send(MESSAGE, "oncall@example.com", INTERNAL)

    assert outcome == Sent("sg-msg-2")
    [request] = provider.requests_to("POST", "/v3/mail/send")
    headers = request.json()["headers"]
    assert "List-Unsubscribe" not in headers
    assert "List-Unsubscribe-Post" not in headers
    assert "Precedence" not in headers
    assert headers["References"] == "<incident-inc-1@example.com>"


async def test_sendgrid_documented_400_is_permanent(
    driver: Callable[..., Channel], provider: FakeProvider
) -> None:
    provider.answer(
        "POST", "/v3/mail/send", 400, json=outbound("sendgrid_v3_mail_send_error_400.json")
    )
    channel = driver(SendGridChannel, sendgrid_api_url=provider.url)

    outcome = await channel.send(MESSAGE, ALICE, PUBLIC)

    assert isinstance(outcome, Permanent)
    assert "400" in outcome.error
    assert "invalid request" in outcome.error
    assert_clean(outcome)


@pytest.mark.parametrize("status", [401, 403, 413])
async def test_sendgrid_refusals_are_permanent(
    status: int, driver: Callable[..., Channel], provider: FakeProvider
) -> None:
    provider.answer(
        "POST",
        "/v3/mail/send",
        status,
        json={"errors": [{"message": "authorization required", "field": None}]},
    )
    channel = driver(SendGridChannel, sendgrid_api_url=provider.url)

    outcome = await channel.send(MESSAGE, ALICE, PUBLIC)

    assert isinstance(outcome, Permanent)
    assert str(status) in outcome.error
    assert_clean(outcome)


@pytest.mark.parametrize(
    ("status", "headers", "wait"),
    [
        (429, {"Retry-After": "7"}, timedelta(seconds=7)),
        (429, {"X-RateLimit-Reset": str(int(NOW.timestamp()) + 60)}, timedelta(seconds=60)),
        (500, {}, None),
        (503, {"Retry-After": "30"}, timedelta(seconds=30)),
    ],
)
async def test_sendgrid_rate_limits_and_outages_are_retryable(
    status: int,
    headers: dict[str, str],
    wait: timedelta | None,
    driver: Callable[..., Channel],
    provider: FakeProvider,
) -> None:
    provider.answer(
        "POST",
        "/v3/mail/send",
        status,
        json={"errors": [{"message": "too many requests"}]},
        headers=headers,
    )
    channel = driver(SendGridChannel, sendgrid_api_url=provider.url)

    outcome = await channel.send(MESSAGE, ALICE, PUBLIC)

    assert isinstance(outcome, Retryable)
    assert outcome.retry_after == wait
    assert str(status) in outcome.error
    assert_clean(outcome)


async def test_sendgrid_without_a_key_is_not_configured(
    driver: Callable[..., Channel], provider: FakeProvider
) -> None:
    channel = driver(SendGridChannel, sendgrid_api_url=provider.url, sendgrid_api_key=None)

    outcome = await channel.send(MESSAGE, ALICE, PUBLIC)

    assert outcome == NotConfigured("no SendGrid API key configured (CLARION_SENDGRID_API_KEY)")
    assert provider.received == []


async def test_sendgrid_unreachable_is_retryable(driver: Callable[..., Channel]) -> None:
    channel = driver(SendGridChannel, sendgrid_api_url=f"http://127.0.0.1:{free_port()}")

    outcome = await channel.send(MESSAGE, ALICE, PUBLIC)

    assert isinstance(outcome, Retryable)
    assert_clean(outcome)


# Mailgun

MAILGUN_PATH = f"/v3/{MAILGUN_DOMAIN}/messages"


async def test_mailgun_gets_the_documented_request(
    driver: Callable[..., Channel], provider: FakeProvider
) -> None:
    answer = outbound("mailgun_messages_response_200.json")
    provider.answer("POST", MAILGUN_PATH, 200, json=answer)
    channel = driver(MailgunChannel, mailgun_api_url=provider.url)

    outcome = await channel.send(MESSAGE, ALICE, PUBLIC)

    assert outcome == Sent(answer["id"])
    [request] = provider.requests_to("POST", MAILGUN_PATH)
    expected_auth = base64.b64encode(f"api:{MAILGUN_KEY}".encode()).decode()
    assert request.headers["authorization"] == f"Basic {expected_auth}"
    assert request.headers["content-type"] == "application/x-www-form-urlencoded"
    form = request.form()
    assert form == {
        "from": FROM,
        "to": ALICE,
        "subject": "Investigating: Checkout is failing",
        "text": "We are investigating.\n",
        "html": "<p>We are investigating.</p>",
        "h:Message-Id": "<d-public@example.com>",
        "h:In-Reply-To": "<incident-inc-1@example.com>",
        "h:References": "<incident-inc-1@example.com>",
        "h:Auto-Submitted": "auto-generated",
        "h:X-Auto-Response-Suppress": "OOF, AutoReply",
        "h:Precedence": "bulk",
        "h:X-Clarion-Incident": "inc-1",
        "h:List-Unsubscribe": f"<{UNSUBSCRIBE}>",
        "h:List-Unsubscribe-Post": "List-Unsubscribe=One-Click",
        "o:tag": "incident",
        "v:delivery_id": "d-public",
        "v:incident_id": "inc-1",
    }
    assert len(request.form_list()) == len(form)  # no field sent twice
    # Every field the documented request uses, spelt the same way.
    documented = outbound("mailgun_messages_request.form.json")
    assert set(documented) <= set(form)
    token = form["h:List-Unsubscribe"].split("token=", 1)[1].rstrip(">")
    assert verify_unsubscribe_token(SECRET, token) == ALICE


async def test_mailgun_internal_mail_has_no_unsubscribe(
    driver: Callable[..., Channel], provider: FakeProvider
) -> None:
    provider.answer("POST", MAILGUN_PATH, 200, json={"id": "<x@mg>", "message": "Queued."})
    channel = driver(MailgunChannel, mailgun_api_url=provider.url)

    outcome = await channel.send(MESSAGE, "oncall@example.com", INTERNAL)

    assert outcome == Sent("<x@mg>")
    [request] = provider.requests_to("POST", MAILGUN_PATH)
    form = request.form()
    assert form["to"] == "oncall@example.com"
    assert "h:List-Unsubscribe" not in form
    assert "h:List-Unsubscribe-Post" not in form
    assert "h:Precedence" not in form


@pytest.mark.parametrize(
    ("status", "body"),
    [
        (400, {"message": "'to' parameter is not a valid address. please check documentation"}),
        (401, {"message": "Invalid private key"}),
        (404, {"message": "Domain not found: mg.example.com"}),
    ],
)
async def test_mailgun_refusals_are_permanent(
    status: int, body: dict[str, str], driver: Callable[..., Channel], provider: FakeProvider
) -> None:
    provider.answer("POST", MAILGUN_PATH, status, json=body)
    channel = driver(MailgunChannel, mailgun_api_url=provider.url)

    outcome = await channel.send(MESSAGE, ALICE, PUBLIC)

    assert isinstance(outcome, Permanent)
    assert str(status) in outcome.error
    assert body["message"][:20] in outcome.error
    assert_clean(outcome)


@pytest.mark.parametrize(
    ("status", "headers", "wait"),
    [(429, {"Retry-After": "12"}, timedelta(seconds=12)), (500, {}, None), (502, {}, None)],
)
async def test_mailgun_rate_limits_and_outages_are_retryable(
    status: int,
    headers: dict[str, str],
    wait: timedelta | None,
    driver: Callable[..., Channel],
    provider: FakeProvider,
) -> None:
    provider.answer("POST", MAILGUN_PATH, status, json={"message": "slow down"}, headers=headers)
    channel = driver(MailgunChannel, mailgun_api_url=provider.url)

    outcome = await channel.send(MESSAGE, ALICE, PUBLIC)

    assert isinstance(outcome, Retryable)
    assert outcome.retry_after == wait
    assert str(status) in outcome.error
    assert_clean(outcome)


@pytest.mark.parametrize(
    ("overrides", "variable"),
    [
        ({"mailgun_api_key": None}, "CLARION_MAILGUN_API_KEY"),
        ({"mailgun_domain": None}, "CLARION_MAILGUN_DOMAIN"),
    ],
)
async def test_mailgun_without_key_or_domain_is_not_configured(
    overrides: dict[str, Any],
    variable: str,
    driver: Callable[..., Channel],
    provider: FakeProvider,
) -> None:
    channel = driver(MailgunChannel, mailgun_api_url=provider.url, **overrides)

    outcome = await channel.send(MESSAGE, ALICE, PUBLIC)

    assert isinstance(outcome, NotConfigured)
    assert variable in outcome.reason
    assert provider.received == []
    assert_clean(outcome)


async def test_mailgun_unreachable_is_retryable(driver: Callable[..., Channel]) -> None:
    channel = driver(MailgunChannel, mailgun_api_url=f"http://127.0.0.1:{free_port()}")

    outcome = await channel.send(MESSAGE, ALICE, PUBLIC)

    assert isinstance(outcome, Retryable)
    assert_clean(outcome)


# Both


@pytest.mark.parametrize("kind", [SendGridChannel, MailgunChannel])
async def test_an_unusable_address_never_reaches_the_provider(
    kind: type, driver: Callable[..., Channel], provider: FakeProvider
) -> None:
    channel = driver(kind, sendgrid_api_url=provider.url, mailgun_api_url=provider.url)

    outcome = await channel.send(MESSAGE, "alice@example.com, eve@example.com", PUBLIC)

    assert isinstance(outcome, Permanent)
    assert provider.received == []
    assert_clean(outcome)
