"""Slack, Discord and generic chat webhook drivers against a local fake provider.

Each driver is checked for the exact request it sends (path, query, headers,
body) and for how it reads every kind of answer the provider documents: success
with an id, rate limits with their wait, permanent errors, server errors, and a
recipient whose webhook URL is not configured.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from datetime import timedelta
from pathlib import Path
from typing import Any, Final

import httpx
import pytest
from redis.asyncio import Redis

from services.dispatcher.channels.chat_webhook import ChatWebhookChannel
from services.dispatcher.channels.context import DriverContext, http_client
from services.dispatcher.channels.discord import DiscordChannel
from services.dispatcher.channels.outcome import NotConfigured, Permanent, Retryable, Sent
from services.dispatcher.channels.slack import SlackChannel
from services.dispatcher.fanout import Delivery
from services.dispatcher.rendering.messages import RenderedMessage, Renderer
from services.dispatcher.rendering.values import RenderContext
from shared.clock import ManualClock
from shared.plan import ChannelName, Plan
from shared.settings import Settings
from tests.support.builders import T0, make_delivery, make_incident, make_incident_opened
from tests.support.fake_provider import FakeProvider
from tests.support.plans import make_plan
from tests.support.smtp import free_port

pytestmark = pytest.mark.integration

OUTBOUND: Final = Path(__file__).resolve().parent.parent / "fixtures" / "outbound"
SLACK_PATH: Final = "/services/T000/B000/slacksecrettoken"
DISCORD_PATH: Final = "/api/webhooks/123456/discordsecrettoken"
CHAT_PATH: Final = "/hooks/chat/chatsecrettoken"
ENV: Final = {"slack": "SLACK_OPS_URL", "discord": "DISCORD_OPS_URL", "chat": "CHAT_OPS_URL"}


def outbound(name: str) -> Any:
    return json.loads((OUTBOUND / name).read_text(encoding="utf-8"))


def chat_plan() -> Plan:
    team = {
        "slack": [{"name": "ops", "url_env": ENV["slack"]}],
        "discord": [{"name": "ops", "url_env": ENV["discord"]}],
        "chat_webhook": [{"name": "ops", "url_env": ENV["chat"]}],
    }
    return make_plan(audiences={"team": team}, routes=[{"name": "team", "audiences": ["team"]}])


def delivery_for(channel: ChannelName, delivery_id: str = "d0000000000000001") -> Delivery:
    return make_delivery(
        delivery_id=delivery_id, channel=channel, recipient="ops", audience="team", event_id="ev-1"
    )


def message_with(channel: ChannelName, payload: Mapping[str, Any]) -> RenderedMessage:
    return RenderedMessage(
        channel, title="Checkout is failing", text="Investigating.", payload=payload
    )


@pytest.fixture
def settings(make_settings: Callable[..., Settings]) -> Settings:
    return make_settings()


@pytest.fixture
async def http(settings: Settings) -> AsyncIterator[httpx.AsyncClient]:
    async with http_client(settings) as client:
        yield client


@pytest.fixture
def provider() -> Iterator[FakeProvider]:
    with FakeProvider() as fake:
        yield fake


@pytest.fixture
def context(
    settings: Settings, http: httpx.AsyncClient, redis: Redis, provider: FakeProvider
) -> DriverContext:
    environ = {
        ENV["slack"]: provider.url + SLACK_PATH,
        ENV["discord"]: provider.url + DISCORD_PATH,
        ENV["chat"]: provider.url + CHAT_PATH,
    }
    return DriverContext(settings, chat_plan(), http, redis, ManualClock(T0), environ)


def without_env(ctx: DriverContext, name: str) -> DriverContext:
    environ = {k: v for k, v in ctx.environ.items() if k != name}
    return DriverContext(ctx.settings, ctx.plan, ctx.http, ctx.redis, ctx.clock, environ)


def with_env(ctx: DriverContext, name: str, value: str) -> DriverContext:
    environ = {**ctx.environ, name: value}
    return DriverContext(ctx.settings, ctx.plan, ctx.http, ctx.redis, ctx.clock, environ)


def rendered(ctx: DriverContext, channel: ChannelName) -> RenderedMessage:
    renderer = Renderer(RenderContext.of(ctx.plan, ctx.settings))
    return renderer.render(make_incident_opened(), make_incident(), "team", channel)


def test_chat_drivers_are_not_idempotent(context: DriverContext) -> None:
    # None of these providers drops a repeated request: a resend after a crash duplicates.
    assert SlackChannel(context).idempotent is False
    assert DiscordChannel(context).idempotent is False
    assert ChatWebhookChannel(context).idempotent is False


# Slack


async def test_slack_posts_the_rendered_blocks_to_the_webhook(
    context: DriverContext, provider: FakeProvider
) -> None:
    provider.answer("POST", SLACK_PATH, 200, body="ok", headers={"content-type": "text/plain"})
    message = rendered(context, ChannelName.SLACK)

    outcome = await SlackChannel(context).send(message, "ops", delivery_for(ChannelName.SLACK))

    assert outcome == Sent(None)
    [request] = provider.requests_to("POST", SLACK_PATH)
    assert request.headers["content-type"] == "application/json"
    assert request.json() == message.payload
    assert [block["type"] for block in request.json()["blocks"]] == [
        "header",
        "section",
        "context",
    ]


@pytest.mark.parametrize(
    "fixture", ["slack_incoming_webhook_text.json", "slack_incoming_webhook_blocks.json"]
)
async def test_slack_sends_documented_payloads_unchanged(
    context: DriverContext, provider: FakeProvider, fixture: str
) -> None:
    provider.answer("POST", SLACK_PATH, 200, body="ok")
    payload = outbound(fixture)

    outcome = await SlackChannel(context).send(
        message_with(ChannelName.SLACK, payload), "ops", delivery_for(ChannelName.SLACK)
    )

    assert outcome == Sent(None)
    assert provider.requests_to("POST", SLACK_PATH)[0].json() == payload


@pytest.mark.parametrize(
    ("status", "code"),
    [
        (400, "invalid_payload"),
        (403, "invalid_token"),
        (404, "no_service"),
        (404, "channel_not_found"),
        (410, "channel_is_archived"),
        (403, "action_prohibited"),
        (400, "no_text"),
        (500, "invalid_payload"),  # a known code is permanent even on an odd status
    ],
)
async def test_slack_error_codes_are_permanent_and_hide_the_url(
    context: DriverContext, provider: FakeProvider, status: int, code: str
) -> None:
    provider.answer("POST", SLACK_PATH, status, body=code)

    outcome = await SlackChannel(context).send(
        message_with(ChannelName.SLACK, {"text": "x"}), "ops", delivery_for(ChannelName.SLACK)
    )

    assert isinstance(outcome, Permanent)
    assert code in outcome.error
    assert str(status) in outcome.error
    assert "slacksecrettoken" not in outcome.error


async def test_slack_429_is_retried_after_the_time_slack_asks(
    context: DriverContext, provider: FakeProvider
) -> None:
    provider.answer("POST", SLACK_PATH, 429, body="rate_limited", headers={"Retry-After": "30"})

    outcome = await SlackChannel(context).send(
        message_with(ChannelName.SLACK, {"text": "x"}), "ops", delivery_for(ChannelName.SLACK)
    )

    assert isinstance(outcome, Retryable)
    assert outcome.retry_after == timedelta(seconds=30)


@pytest.mark.parametrize(("status", "body"), [(500, "rollup_error"), (503, "")])
async def test_slack_server_errors_are_retryable(
    context: DriverContext, provider: FakeProvider, status: int, body: str
) -> None:
    provider.answer("POST", SLACK_PATH, status, body=body)

    outcome = await SlackChannel(context).send(
        message_with(ChannelName.SLACK, {"text": "x"}), "ops", delivery_for(ChannelName.SLACK)
    )

    assert isinstance(outcome, Retryable)
    assert outcome.retry_after is None


async def test_slack_without_its_url_is_not_configured(
    context: DriverContext, provider: FakeProvider
) -> None:
    ctx = without_env(context, ENV["slack"])

    outcome = await SlackChannel(ctx).send(
        message_with(ChannelName.SLACK, {"text": "x"}), "ops", delivery_for(ChannelName.SLACK)
    )

    assert isinstance(outcome, NotConfigured)
    assert ENV["slack"] in outcome.reason
    assert provider.received == []


async def test_unreachable_webhook_is_retryable_without_leaking_the_url(
    context: DriverContext,
) -> None:
    ctx = with_env(context, ENV["slack"], f"http://127.0.0.1:{free_port()}{SLACK_PATH}")

    outcome = await SlackChannel(ctx).send(
        message_with(ChannelName.SLACK, {"text": "x"}), "ops", delivery_for(ChannelName.SLACK)
    )

    assert isinstance(outcome, Retryable)
    assert "slacksecrettoken" not in outcome.error


async def test_a_redirect_from_a_chat_webhook_is_not_followed(
    context: DriverContext, provider: FakeProvider
) -> None:
    provider.answer("POST", SLACK_PATH, 302, headers={"Location": "/elsewhere"})
    provider.answer("POST", "/elsewhere", 200, body="ok")

    outcome = await SlackChannel(context).send(
        message_with(ChannelName.SLACK, {"text": "x"}), "ops", delivery_for(ChannelName.SLACK)
    )

    assert isinstance(outcome, Permanent)
    assert provider.requests_to("POST", "/elsewhere") == []


# Discord


async def test_discord_waits_for_the_message_and_returns_its_id(
    context: DriverContext, provider: FakeProvider
) -> None:
    provider.answer("POST", DISCORD_PATH, 200, json={"id": "1180000000000000001", "type": 0})
    payload = outbound("discord_webhook_execute_request.json")

    outcome = await DiscordChannel(context).send(
        message_with(ChannelName.DISCORD, payload), "ops", delivery_for(ChannelName.DISCORD)
    )

    assert outcome == Sent("1180000000000000001")
    [request] = provider.requests_to("POST", DISCORD_PATH)
    assert request.query == {"wait": "true"}
    assert request.headers["content-type"] == "application/json"
    assert request.json() == payload


async def test_discord_sends_the_rendered_embed_and_keeps_the_urls_query(
    context: DriverContext, provider: FakeProvider
) -> None:
    provider.answer("POST", DISCORD_PATH, 200, json={"id": "42"})
    ctx = with_env(context, ENV["discord"], f"{provider.url}{DISCORD_PATH}?thread_id=77")
    message = rendered(ctx, ChannelName.DISCORD)

    outcome = await DiscordChannel(ctx).send(message, "ops", delivery_for(ChannelName.DISCORD))

    assert outcome == Sent("42")
    [request] = provider.requests_to("POST", DISCORD_PATH)
    assert request.query == {"thread_id": "77", "wait": "true"}
    assert request.json() == message.payload
    assert request.json()["allowed_mentions"] == {"parse": []}


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ({"Retry-After": "65", "X-RateLimit-Scope": "user"}, timedelta(seconds=65)),
        ({}, timedelta(seconds=64.57)),
        ({"Retry-After": "3"}, timedelta(seconds=64.57)),  # the longer wait wins
    ],
)
async def test_discord_429_honours_retry_after(
    context: DriverContext,
    provider: FakeProvider,
    headers: dict[str, str],
    expected: timedelta,
) -> None:
    provider.answer(
        "POST",
        DISCORD_PATH,
        429,
        json=outbound("discord_error_429_rate_limited.json"),
        headers=headers,
    )

    outcome = await DiscordChannel(context).send(
        message_with(ChannelName.DISCORD, {"content": "x"}),
        "ops",
        delivery_for(ChannelName.DISCORD),
    )

    assert isinstance(outcome, Retryable)
    assert outcome.retry_after == expected


async def test_discord_invalid_form_body_is_permanent(
    context: DriverContext, provider: FakeProvider
) -> None:
    provider.answer(
        "POST", DISCORD_PATH, 400, json=outbound("discord_error_50035_invalid_form_body.json")
    )

    outcome = await DiscordChannel(context).send(
        message_with(ChannelName.DISCORD, {"content": "x"}),
        "ops",
        delivery_for(ChannelName.DISCORD),
    )

    assert isinstance(outcome, Permanent)
    assert "50035" in outcome.error
    assert "Invalid Form Body" in outcome.error
    assert "access_token: This field is required" in outcome.error
    assert "discordsecrettoken" not in outcome.error


async def test_discord_unknown_webhook_is_permanent_and_server_errors_retry(
    context: DriverContext, provider: FakeProvider
) -> None:
    provider.answer_next(
        "POST", DISCORD_PATH, 404, json={"code": 10015, "message": "Unknown Webhook"}
    )
    provider.answer_next("POST", DISCORD_PATH, 502, body="bad gateway")
    channel = DiscordChannel(context)
    message = message_with(ChannelName.DISCORD, {"content": "x"})

    gone = await channel.send(message, "ops", delivery_for(ChannelName.DISCORD))
    flaky = await channel.send(message, "ops", delivery_for(ChannelName.DISCORD))

    assert isinstance(gone, Permanent)
    assert "10015 Unknown Webhook" in gone.error
    assert isinstance(flaky, Retryable)


async def test_discord_without_its_url_is_not_configured(
    context: DriverContext, provider: FakeProvider
) -> None:
    outcome = await DiscordChannel(without_env(context, ENV["discord"])).send(
        message_with(ChannelName.DISCORD, {"content": "x"}),
        "ops",
        delivery_for(ChannelName.DISCORD),
    )

    assert isinstance(outcome, NotConfigured)
    assert ENV["discord"] in outcome.reason
    assert provider.received == []


# Generic chat webhook


async def test_chat_webhook_sends_our_idempotency_key_on_every_attempt(
    context: DriverContext, provider: FakeProvider
) -> None:
    provider.answer_next("POST", CHAT_PATH, 503, body="busy")
    provider.answer("POST", CHAT_PATH, 200, json={"id": "m-1"})
    channel = ChatWebhookChannel(context)
    message = rendered(context, ChannelName.CHAT_WEBHOOK)
    delivery = delivery_for(ChannelName.CHAT_WEBHOOK, "d-chat-1")

    first = await channel.send(message, "ops", delivery)
    second = await channel.send(message, "ops", delivery)
    other = await channel.send(message, "ops", delivery_for(ChannelName.CHAT_WEBHOOK, "d-chat-2"))

    assert isinstance(first, Retryable)
    assert second == Sent("m-1")
    assert other == Sent("m-1")
    keys = [r.headers["idempotency-key"] for r in provider.requests_to("POST", CHAT_PATH)]
    assert keys == ["d-chat-1", "d-chat-1", "d-chat-2"]
    bodies = [r.json() for r in provider.requests_to("POST", CHAT_PATH)]
    assert bodies == [message.payload] * 3
    assert bodies[0]["incident_id"] == "inc-1"


@pytest.mark.parametrize(
    ("status", "options", "expected"),
    [
        (204, {}, Sent(None)),
        (202, {"json": {"id": 7}}, Sent("7")),
        (429, {"headers": {"Retry-After": "12"}}, Retryable),
        (400, {"json": {"error": "bad"}}, Permanent),
        (401, {}, Permanent),
        (500, {}, Retryable),
    ],
)
async def test_chat_webhook_reads_answers_generically(
    context: DriverContext,
    provider: FakeProvider,
    status: int,
    options: dict[str, Any],
    expected: Any,
) -> None:
    provider.answer("POST", CHAT_PATH, status, **options)

    outcome = await ChatWebhookChannel(context).send(
        message_with(ChannelName.CHAT_WEBHOOK, {"text": "x"}),
        "ops",
        delivery_for(ChannelName.CHAT_WEBHOOK),
    )

    if isinstance(expected, Sent):
        assert outcome == expected
    else:
        assert isinstance(outcome, expected)
        assert "chatsecrettoken" not in outcome.error
    if status == 429:
        assert isinstance(outcome, Retryable)
        assert outcome.retry_after == timedelta(seconds=12)


async def test_chat_webhook_without_its_url_is_not_configured(
    context: DriverContext, provider: FakeProvider
) -> None:
    outcome = await ChatWebhookChannel(without_env(context, ENV["chat"])).send(
        message_with(ChannelName.CHAT_WEBHOOK, {"text": "x"}),
        "ops",
        delivery_for(ChannelName.CHAT_WEBHOOK),
    )

    assert outcome == NotConfigured(
        f"set {ENV['chat']} to the webhook URL of chat webhook recipient 'ops'"
    )
    assert provider.received == []
