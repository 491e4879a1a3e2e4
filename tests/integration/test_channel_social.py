"""Social drivers (Mastodon, Bluesky, X) against a local server that answers like them.

Answers come from the providers' documented bodies (tests/fixtures/outbound/
mastodon_*, bluesky_*, x_api_*). Each test checks what went over the wire
(method, path, auth, headers, body) and how the answer was read.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Callable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any, Final

import httpx
import pytest
from redis.asyncio import Redis

from services.dispatcher.channels.bluesky import BlueskyChannel, record_key
from services.dispatcher.channels.context import DriverContext, http_client
from services.dispatcher.channels.mastodon import MastodonChannel
from services.dispatcher.channels.outcome import NotConfigured, Permanent, Retryable, Sent
from services.dispatcher.channels.x_posts import XChannel
from services.dispatcher.fanout import Delivery
from services.dispatcher.rendering.messages import RenderedMessage
from shared.clock import ManualClock
from shared.plan import ChannelName, Plan
from shared.settings import Settings
from tests.conftest import load_fixture
from tests.support.builders import T0, make_delivery
from tests.support.fake_provider import Answer, FakeProvider, Received
from tests.support.plans import make_plan
from tests.support.smtp import free_port

pytestmark = pytest.mark.integration

NOW: Final = datetime(2026, 11, 23, 14, 31, 5, tzinfo=UTC)
MASTODON_TOKEN: Final = "mastodon-token-5ecret"
BLUESKY_PASSWORD: Final = "abcd-efgh-ijkl-mnop"
X_TOKEN: Final = "x-user-token-5ecret"
SECRETS: Final = (MASTODON_TOKEN, BLUESKY_PASSWORD, X_TOKEN)
ENVIRON: Final = {
    "MASTODON_TOKEN": MASTODON_TOKEN,
    "BLUESKY_APP_PASSWORD": BLUESKY_PASSWORD,
    "X_TOKEN": X_TOKEN,
}
HANDLE: Final = "handle.example.com"
DID: Final = "did:plc:u5cwb2mwiv2bfq53cjufe6yn"  # the repo of the createRecord fixture
TID: Final = re.compile(r"^[234567abcdefghij][234567abcdefghijklmnopqrstuvwxyz]{12}$")
TEXT: Final = "Investigating: checkout is failing. Updates: https://status.example.com/i/42"

STATUSES: Final = "/api/v1/statuses"
CREATE_SESSION: Final = "/xrpc/com.atproto.server.createSession"
REFRESH_SESSION: Final = "/xrpc/com.atproto.server.refreshSession"
CREATE_RECORD: Final = "/xrpc/com.atproto.repo.createRecord"
GET_RECORD: Final = "/xrpc/com.atproto.repo.getRecord"
TWEETS: Final = "/2/tweets"


def fixture(name: str) -> Any:
    return load_fixture(f"outbound/{name}.json")


def session_body(number: int = 1) -> dict[str, Any]:
    """A createSession/refreshSession answer (the lexicon's output fields)."""
    return {
        "accessJwt": f"access-jwt-{number}",
        "refreshJwt": f"refresh-jwt-{number}",
        "handle": HANDLE,
        "did": DID,
        "active": True,
    }


def message(channel: ChannelName, text: str = TEXT) -> RenderedMessage:
    return RenderedMessage(channel, title="Investigating", text=text)


def assert_private(error: str) -> None:
    for secret in SECRETS:
        assert secret not in error


def social_plan(url: str) -> Plan:
    customers = {
        "public": True,
        "mastodon": [{"instance": url, "access_token_env": "MASTODON_TOKEN"}],
        "bluesky": [{"handle": HANDLE, "app_password_env": "BLUESKY_APP_PASSWORD", "service": url}],
        "x": [{"account": "clarion_status", "access_token_env": "X_TOKEN"}],
    }
    return make_plan(audiences={"customers": customers})


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
    make_settings: Callable[..., Settings],
    http: httpx.AsyncClient,
    redis: Redis,
    provider: FakeProvider,
) -> Callable[..., DriverContext]:
    def build(
        environ: dict[str, str] = ENVIRON,
        store: Redis | None = None,
        url: str | None = None,
        **settings: Any,
    ) -> DriverContext:
        return DriverContext(
            settings=make_settings(x_api_url=url or provider.url, **settings),
            plan=social_plan(url or provider.url),
            http=http,
            redis=store or redis,
            clock=ManualClock(NOW),
            environ=environ,
        )

    return build


def delivery_for(ctx: DriverContext, channel: ChannelName, **overrides: Any) -> Delivery:
    [address] = ctx.plan.audiences["customers"].addresses(channel)
    values = {"channel": channel, "recipient": address, "audience": "customers"}
    return make_delivery(**(values | overrides))


# Mastodon


async def test_mastodon_posts_a_public_status_with_bearer_and_idempotency_key(
    context: Callable[..., DriverContext], provider: FakeProvider
) -> None:
    provider.answer("POST", STATUSES, 200, json=fixture("mastodon_status_entity_200"))
    ctx = context()
    channel = MastodonChannel(ctx)
    delivery = delivery_for(ctx, ChannelName.MASTODON, delivery_id="5a" * 16)

    outcome = await channel.send(message(ChannelName.MASTODON), delivery.recipient, delivery)

    assert outcome == Sent("103270115826048975")
    assert channel.idempotent is True
    [request] = provider.received
    assert (request.method, request.path) == ("POST", STATUSES)
    assert request.headers["authorization"] == f"Bearer {MASTODON_TOKEN}"
    assert request.headers["idempotency-key"] == "5a" * 16
    assert request.headers["content-type"] == "application/x-www-form-urlencoded"
    assert request.form() == {"status": TEXT, "visibility": "public"}
    assert set(request.form()) <= set(fixture("mastodon_post_status_request"))


async def test_mastodon_retries_carry_the_same_idempotency_key(
    context: Callable[..., DriverContext], provider: FakeProvider
) -> None:
    provider.answer_next("POST", STATUSES, 503, body=b"busy")
    provider.answer("POST", STATUSES, 200, json=fixture("mastodon_status_entity_200"))
    ctx = context()
    channel = MastodonChannel(ctx)
    delivery = delivery_for(ctx, ChannelName.MASTODON)

    first = await channel.send(message(ChannelName.MASTODON), delivery.recipient, delivery)
    second = await channel.send(message(ChannelName.MASTODON), delivery.recipient, delivery)

    assert isinstance(first, Retryable)
    assert second == Sent("103270115826048975")
    keys = [r.headers["idempotency-key"] for r in provider.requests_to("POST", STATUSES)]
    assert keys == [delivery.delivery_id, delivery.delivery_id]


@pytest.mark.parametrize(
    ("status", "body", "words"),
    [
        (401, fixture("mastodon_error_401"), "The access token is invalid"),
        (403, {"error": "This action is not allowed"}, "not allowed"),
        (422, fixture("mastodon_error_422"), "Text can't be blank"),
    ],
)
async def test_mastodon_refusals_are_permanent(
    context: Callable[..., DriverContext],
    provider: FakeProvider,
    status: int,
    body: dict[str, Any],
    words: str,
) -> None:
    provider.answer("POST", STATUSES, status, json=body)
    ctx = context()
    delivery = delivery_for(ctx, ChannelName.MASTODON)

    outcome = await MastodonChannel(ctx).send(
        message(ChannelName.MASTODON), delivery.recipient, delivery
    )

    assert isinstance(outcome, Permanent)
    assert words in outcome.error
    assert str(status) in outcome.error
    if status != 422:
        assert "MASTODON_TOKEN" in outcome.error  # names the variable, never its value
    assert_private(outcome.error)


@pytest.mark.parametrize(
    ("headers", "wait"),
    [
        ({"Retry-After": "30"}, timedelta(seconds=30)),
        (
            {"X-RateLimit-Reset": (NOW + timedelta(seconds=90)).isoformat().replace("+00:00", "Z")},
            timedelta(seconds=90),
        ),
        (
            {"X-RateLimit-Reset": "2026-11-23T14:35:00.019685Z"},
            timedelta(minutes=3, seconds=55, microseconds=19685),
        ),
        ({}, None),
    ],
)
async def test_mastodon_429_is_retried_when_the_limit_resets(
    context: Callable[..., DriverContext],
    provider: FakeProvider,
    headers: dict[str, str],
    wait: timedelta | None,
) -> None:
    provider.answer("POST", STATUSES, 429, json={"error": "Too many requests"}, headers=headers)
    ctx = context()
    delivery = delivery_for(ctx, ChannelName.MASTODON)

    outcome = await MastodonChannel(ctx).send(
        message(ChannelName.MASTODON), delivery.recipient, delivery
    )

    assert isinstance(outcome, Retryable)
    assert outcome.retry_after == wait
    assert "429" in outcome.error


async def test_mastodon_server_errors_and_unreachable_instances_are_retryable(
    context: Callable[..., DriverContext], provider: FakeProvider
) -> None:
    provider.answer("POST", STATUSES, 502, body=b"<html>Bad Gateway</html>")
    ctx = context()
    delivery = delivery_for(ctx, ChannelName.MASTODON)
    channel = MastodonChannel(ctx)

    gone = context(url=f"http://127.0.0.1:{free_port()}")  # nothing listens there
    gone_delivery = delivery_for(gone, ChannelName.MASTODON)

    bad_gateway = await channel.send(message(ChannelName.MASTODON), delivery.recipient, delivery)
    unreachable = await MastodonChannel(gone).send(
        message(ChannelName.MASTODON), gone_delivery.recipient, gone_delivery
    )

    assert isinstance(bad_gateway, Retryable)
    assert "502" in bad_gateway.error
    assert isinstance(unreachable, Retryable)
    assert_private(unreachable.error)


async def test_mastodon_without_a_token_is_not_configured(
    context: Callable[..., DriverContext], provider: FakeProvider
) -> None:
    ctx = context(environ={})
    delivery = delivery_for(ctx, ChannelName.MASTODON)

    outcome = await MastodonChannel(ctx).send(
        message(ChannelName.MASTODON), delivery.recipient, delivery
    )

    assert isinstance(outcome, NotConfigured)
    assert "MASTODON_TOKEN" in outcome.reason
    assert provider.received == []


async def test_mastodon_error_that_echoes_the_token_keeps_it_private(
    context: Callable[..., DriverContext], provider: FakeProvider
) -> None:
    def echo(request: Received) -> Answer:
        return Answer(422, json={"error": f"bad request with {request.headers['authorization']}"})

    provider.answer("POST", STATUSES, respond=echo)
    ctx = context()
    delivery = delivery_for(ctx, ChannelName.MASTODON)

    outcome = await MastodonChannel(ctx).send(
        message(ChannelName.MASTODON), delivery.recipient, delivery
    )

    assert isinstance(outcome, Permanent)
    assert "bad request with" in outcome.error
    assert_private(outcome.error)


# X


async def test_x_posts_the_text_with_the_user_token(
    context: Callable[..., DriverContext], provider: FakeProvider
) -> None:
    provider.answer("POST", TWEETS, 201, json=fixture("x_api_v2_create_post_response_201"))
    ctx = context()
    channel = XChannel(ctx)
    delivery = delivery_for(ctx, ChannelName.X)

    outcome = await channel.send(message(ChannelName.X), delivery.recipient, delivery)

    assert outcome == Sent("1445880548472328192")
    assert channel.idempotent is False
    [request] = provider.received
    assert (request.method, request.path) == ("POST", TWEETS)
    assert request.headers["authorization"] == f"Bearer {X_TOKEN}"
    assert request.headers["content-type"] == "application/json"
    assert request.json() == {"text": TEXT}
    assert set(request.json()) == set(fixture("x_api_v2_create_post_request"))


def epoch(moment: datetime) -> str:
    return str(int(moment.timestamp()))


@pytest.mark.parametrize(
    ("headers", "wait"),
    [
        (
            {
                "x-rate-limit-remaining": "0",
                "x-rate-limit-reset": epoch(NOW + timedelta(minutes=2)),
            },
            timedelta(minutes=2),
        ),
        (
            {
                "x-rate-limit-remaining": "40",
                "x-rate-limit-reset": epoch(NOW + timedelta(minutes=2)),
                "x-user-limit-24hour-remaining": "0",
                "x-user-limit-24hour-reset": epoch(NOW + timedelta(hours=5)),
            },
            timedelta(hours=5),
        ),
        ({"Retry-After": "15"}, timedelta(seconds=15)),
        ({}, None),
    ],
)
async def test_x_429_is_retried_when_the_exhausted_window_resets(
    context: Callable[..., DriverContext],
    provider: FakeProvider,
    headers: dict[str, str],
    wait: timedelta | None,
) -> None:
    body = {"title": "Too Many Requests", "detail": "Too Many Requests", "type": "about:blank"}
    provider.answer("POST", TWEETS, 429, json=body | {"status": 429}, headers=headers)
    ctx = context()
    delivery = delivery_for(ctx, ChannelName.X)

    outcome = await XChannel(ctx).send(message(ChannelName.X), delivery.recipient, delivery)

    assert isinstance(outcome, Retryable)
    assert outcome.retry_after == wait


async def test_x_duplicate_content_is_permanent_with_a_clear_message(
    context: Callable[..., DriverContext], provider: FakeProvider
) -> None:
    duplicate = {
        "detail": "You are not allowed to create a Tweet with duplicate content.",
        "type": "about:blank",
        "title": "Forbidden",
        "status": 403,
    }
    provider.answer("POST", TWEETS, 403, json=duplicate)
    ctx = context()
    delivery = delivery_for(ctx, ChannelName.X)

    outcome = await XChannel(ctx).send(message(ChannelName.X), delivery.recipient, delivery)

    assert isinstance(outcome, Permanent)
    assert "duplicate content" in outcome.error
    assert "not posted again" in outcome.error
    assert_private(outcome.error)


@pytest.mark.parametrize(
    ("status", "body", "words"),
    [
        (
            401,
            {
                "title": "Unauthorized",
                "type": "about:blank",
                "status": 401,
                "detail": "Unauthorized",
            },
            "Unauthorized",
        ),
        (
            403,
            {
                "errors": [
                    {
                        "title": "Forbidden",
                        "type": "about:blank",
                        "status": 403,
                        "detail": "You are not permitted to perform this action.",
                    }
                ]
            },
            "not permitted",
        ),
    ],
)
async def test_x_refused_token_is_permanent_and_names_the_variable(
    context: Callable[..., DriverContext],
    provider: FakeProvider,
    status: int,
    body: dict[str, Any],
    words: str,
) -> None:
    assert set(fixture("x_api_v2_problem_error_shape")["errors"][0]) <= {
        "title",
        "type",
        "detail",
        "status",
    }
    provider.answer("POST", TWEETS, status, json=body)
    ctx = context()
    delivery = delivery_for(ctx, ChannelName.X)

    outcome = await XChannel(ctx).send(message(ChannelName.X), delivery.recipient, delivery)

    assert isinstance(outcome, Permanent)
    assert words in outcome.error
    assert "X_TOKEN" in outcome.error
    assert_private(outcome.error)


async def test_x_server_errors_are_retryable_and_unset_token_is_not_configured(
    context: Callable[..., DriverContext], provider: FakeProvider
) -> None:
    provider.answer("POST", TWEETS, 503, json={"title": "Service Unavailable", "status": 503})
    ctx = context()
    delivery = delivery_for(ctx, ChannelName.X)

    unavailable = await XChannel(ctx).send(message(ChannelName.X), delivery.recipient, delivery)
    unset = await XChannel(context(environ={})).send(
        message(ChannelName.X), delivery.recipient, delivery
    )

    assert isinstance(unavailable, Retryable)
    assert isinstance(unset, NotConfigured)
    assert "X_TOKEN" in unset.reason
    assert len(provider.received) == 1


# Bluesky


def script_pds(provider: FakeProvider) -> None:
    provider.answer("POST", CREATE_SESSION, 200, json=session_body(1))
    provider.answer("POST", CREATE_RECORD, 200, json=fixture("bluesky_createRecord_response"))


async def test_bluesky_creates_one_session_for_two_posts(
    context: Callable[..., DriverContext], provider: FakeProvider
) -> None:
    script_pds(provider)
    ctx = context()
    channel = BlueskyChannel(ctx)
    first = delivery_for(ctx, ChannelName.BLUESKY, delivery_id="01" * 16)
    second = delivery_for(ctx, ChannelName.BLUESKY, delivery_id="02" * 16, event_id="ev-2")

    outcomes = [
        await channel.send(message(ChannelName.BLUESKY), d.recipient, d) for d in (first, second)
    ]

    uri = fixture("bluesky_createRecord_response")["uri"]
    assert outcomes == [Sent(uri), Sent(uri)]
    assert channel.idempotent is True
    [login] = provider.requests_to("POST", CREATE_SESSION)
    assert login.json() == {"identifier": HANDLE, "password": BLUESKY_PASSWORD}
    assert set(login.json()) == set(fixture("bluesky_createSession_request"))
    posts = provider.requests_to("POST", CREATE_RECORD)
    assert [p.headers["authorization"] for p in posts] == ["Bearer access-jwt-1"] * 2
    body = posts[0].json()
    assert set(body) == set(fixture("bluesky_createRecord_request")) | {"rkey"}
    assert (body["repo"], body["collection"]) == (DID, "app.bsky.feed.post")
    assert body["rkey"] == record_key(first)
    assert posts[1].json()["rkey"] == record_key(second) != body["rkey"]
    assert body["record"] == {
        "$type": "app.bsky.feed.post",
        "text": TEXT,
        "createdAt": "2026-11-23T14:31:05.000Z",
        "facets": [
            {
                "index": {"byteStart": TEXT.index("https"), "byteEnd": len(TEXT)},
                "features": [
                    {
                        "$type": "app.bsky.richtext.facet#link",
                        "uri": "https://status.example.com/i/42",
                    }
                ],
            }
        ],
    }
    assert set(fixture("bluesky_post_record")) <= set(body["record"])


async def test_bluesky_session_is_shared_across_dispatchers_through_redis(
    context: Callable[..., DriverContext], provider: FakeProvider, redis: Redis
) -> None:
    script_pds(provider)
    one, other = BlueskyChannel(context()), BlueskyChannel(context())
    ctx = context()
    delivery = delivery_for(ctx, ChannelName.BLUESKY)

    await one.send(message(ChannelName.BLUESKY), delivery.recipient, delivery)
    outcome = await other.send(message(ChannelName.BLUESKY), delivery.recipient, delivery)

    assert isinstance(outcome, Sent)
    assert len(provider.requests_to("POST", CREATE_SESSION)) == 1
    [key] = await redis.keys("clarion:bluesky:session:*")
    assert 0 < await redis.ttl(key) <= 24 * 3600
    stored = await redis.get(key)
    assert isinstance(stored, bytes)
    assert b"access-jwt-1" in stored
    assert BLUESKY_PASSWORD.encode() not in stored


async def test_bluesky_keeps_its_session_in_memory_when_redis_is_down(
    context: Callable[..., DriverContext], provider: FakeProvider
) -> None:
    script_pds(provider)
    unreachable = Redis.from_url(f"redis://127.0.0.1:{free_port()}", socket_connect_timeout=2)
    try:
        ctx = context(store=unreachable)
        channel = BlueskyChannel(ctx)
        delivery = delivery_for(ctx, ChannelName.BLUESKY)

        first = await channel.send(message(ChannelName.BLUESKY), delivery.recipient, delivery)
        second = await channel.send(message(ChannelName.BLUESKY), delivery.recipient, delivery)
    finally:
        await unreachable.aclose()

    assert isinstance(first, Sent)
    assert isinstance(second, Sent)
    assert len(provider.requests_to("POST", CREATE_SESSION)) == 1


async def test_bluesky_refreshes_an_expired_session_and_posts(
    context: Callable[..., DriverContext], provider: FakeProvider
) -> None:
    script_pds(provider)
    provider.answer_next(
        "POST", CREATE_RECORD, 400, json=fixture("bluesky_xrpc_error_expired_token")
    )
    provider.answer("POST", REFRESH_SESSION, 200, json=session_body(2))
    ctx = context()
    delivery = delivery_for(ctx, ChannelName.BLUESKY)

    outcome = await BlueskyChannel(ctx).send(
        message(ChannelName.BLUESKY), delivery.recipient, delivery
    )
    later = await BlueskyChannel(ctx).send(
        message(ChannelName.BLUESKY), delivery.recipient, delivery_for(ctx, ChannelName.BLUESKY)
    )

    assert outcome == Sent(fixture("bluesky_createRecord_response")["uri"])
    assert isinstance(later, Sent)
    assert [r.path for r in provider.received] == [
        CREATE_SESSION,
        CREATE_RECORD,
        REFRESH_SESSION,
        CREATE_RECORD,
        CREATE_RECORD,
    ]
    [refresh] = provider.requests_to("POST", REFRESH_SESSION)
    assert refresh.headers["authorization"] == "Bearer refresh-jwt-1"
    posts = provider.requests_to("POST", CREATE_RECORD)
    assert [p.headers["authorization"] for p in posts] == [
        "Bearer access-jwt-1",
        "Bearer access-jwt-2",
        "Bearer access-jwt-2",  # the refreshed session was kept for the next send
    ]
    assert posts[0].json()["rkey"] == posts[1].json()["rkey"]


async def test_bluesky_logs_in_again_when_the_refresh_fails(
    context: Callable[..., DriverContext], provider: FakeProvider
) -> None:
    provider.answer_next("POST", CREATE_SESSION, 200, json=session_body(1))
    provider.answer("POST", CREATE_SESSION, 200, json=session_body(3))
    provider.answer_next(
        "POST", CREATE_RECORD, 400, json=fixture("bluesky_xrpc_error_expired_token")
    )
    provider.answer("POST", CREATE_RECORD, 200, json=fixture("bluesky_createRecord_response"))
    provider.answer("POST", REFRESH_SESSION, 400, json=fixture("bluesky_xrpc_error_expired_token"))
    ctx = context()
    delivery = delivery_for(ctx, ChannelName.BLUESKY)

    outcome = await BlueskyChannel(ctx).send(
        message(ChannelName.BLUESKY), delivery.recipient, delivery
    )

    assert isinstance(outcome, Sent)
    assert [r.path for r in provider.received] == [
        CREATE_SESSION,
        CREATE_RECORD,
        REFRESH_SESSION,
        CREATE_SESSION,
        CREATE_RECORD,
    ]
    assert provider.received[-1].headers["authorization"] == "Bearer access-jwt-3"


async def test_bluesky_a_session_refused_even_when_new_is_retried_with_a_new_login(
    context: Callable[..., DriverContext], provider: FakeProvider, redis: Redis
) -> None:
    provider.answer("POST", CREATE_SESSION, 200, json=session_body(1))
    provider.answer("POST", CREATE_RECORD, 400, json=fixture("bluesky_xrpc_error_expired_token"))
    provider.answer("POST", REFRESH_SESSION, 200, json=session_body(2))
    ctx = context()
    delivery = delivery_for(ctx, ChannelName.BLUESKY)

    outcome = await BlueskyChannel(ctx).send(
        message(ChannelName.BLUESKY), delivery.recipient, delivery
    )

    assert isinstance(outcome, Retryable)
    assert "ExpiredToken" in outcome.error
    assert len(provider.requests_to("POST", CREATE_RECORD)) == 2  # one retry inside, no loop
    assert await redis.keys("clarion:bluesky:session:*") == []


async def test_bluesky_link_facets_count_utf8_bytes(
    context: Callable[..., DriverContext], provider: FakeProvider
) -> None:
    script_pds(provider)
    text = (
        "Zahlungsstörung behoben 🎉 — Details: https://status.example.com/i/42?ref=bsky. "
        "Danke (siehe https://example.org/faq)!"
    )
    ctx = context()
    delivery = delivery_for(ctx, ChannelName.BLUESKY)

    await BlueskyChannel(ctx).send(message(ChannelName.BLUESKY, text), delivery.recipient, delivery)

    [post] = provider.requests_to("POST", CREATE_RECORD)
    facets = post.json()["record"]["facets"]
    encoded = text.encode()
    links = ["https://status.example.com/i/42?ref=bsky", "https://example.org/faq"]
    assert [f["features"] for f in facets] == [
        [{"$type": "app.bsky.richtext.facet#link", "uri": link}] for link in links
    ]
    for facet, link in zip(facets, links, strict=True):
        start, end = facet["index"]["byteStart"], facet["index"]["byteEnd"]
        assert encoded[start:end].decode() == link
    assert facets[0]["index"]["byteStart"] == encoded.index(b"https://status")
    assert facets[0]["index"]["byteStart"] > text.index("https://status")  # ö, 🎉, — are multibyte


def test_record_keys_are_tids_fixed_per_delivery() -> None:
    delivery = make_delivery(channel=ChannelName.BLUESKY, delivery_id="ab" * 16)

    key = record_key(delivery)

    assert TID.match(key)
    assert record_key(make_delivery(channel=ChannelName.BLUESKY, delivery_id="ab" * 16)) == key
    assert record_key(make_delivery(channel=ChannelName.BLUESKY, delivery_id="cd" * 16)) != key
    value = 0
    for char in key:
        value = value * 32 + "234567abcdefghijklmnopqrstuvwxyz".index(char)
    stamped = datetime.fromtimestamp((value >> 10) / 1_000_000, UTC)
    assert T0 <= stamped < T0 + timedelta(seconds=1)  # in the second of the event


class FakePds:
    """A PDS repository in the test: refuses a second record at a key, as the real one does.

    The reference PDS fails such a create with a bare 500 InternalServerError (its
    repository tree refuses a key that exists), and getRecord finds the record.
    """

    def __init__(self, provider: FakeProvider) -> None:
        self.records: dict[str, dict[str, Any]] = {}
        provider.answer("POST", CREATE_SESSION, 200, json=session_body(1))
        provider.answer("POST", CREATE_RECORD, respond=self.create)
        provider.answer("GET", GET_RECORD, respond=self.get)

    def create(self, request: Received) -> Answer:
        body = request.json()
        if body["rkey"] in self.records:
            return Answer(
                500, json={"error": "InternalServerError", "message": "Internal Server Error"}
            )
        self.records[body["rkey"]] = body["record"]
        uri = f"at://{DID}/{body['collection']}/{body['rkey']}"
        return Answer(200, json={"uri": uri, "cid": "bafyreib" + "a" * 51})

    def get(self, request: Received) -> Answer:
        rkey = request.query["rkey"]
        if request.query["repo"] != DID or rkey not in self.records:
            return Answer(
                400, json={"error": "RecordNotFound", "message": "Could not locate record"}
            )
        uri = f"at://{DID}/{request.query['collection']}/{rkey}"
        return Answer(200, json={"uri": uri, "value": self.records[rkey]})


async def test_bluesky_a_resent_delivery_posts_once(
    context: Callable[..., DriverContext], provider: FakeProvider
) -> None:
    pds = FakePds(provider)
    ctx = context()
    delivery = delivery_for(ctx, ChannelName.BLUESKY)
    uri = f"at://{DID}/app.bsky.feed.post/{record_key(delivery)}"

    # The first send posts, then the dispatcher "crashes" before recording it.
    first = await BlueskyChannel(ctx).send(
        message(ChannelName.BLUESKY), delivery.recipient, delivery
    )
    again = await BlueskyChannel(ctx).send(
        message(ChannelName.BLUESKY), delivery.recipient, delivery
    )

    assert first == Sent(uri)
    assert again == Sent(uri)
    assert list(pds.records) == [record_key(delivery)]
    [lookup] = provider.requests_to("GET", GET_RECORD)
    assert lookup.query == {
        "repo": DID,
        "collection": "app.bsky.feed.post",
        "rkey": record_key(delivery),
    }


@pytest.mark.parametrize(
    "refusal",
    [
        {"error": "InvalidRequest", "message": "Record already exists"},
        {
            "error": "InvalidRequest",
            "message": "There is already a value at key: app.bsky.feed.post/x",
        },
    ],
)
async def test_bluesky_an_explicit_already_exists_is_sent(
    context: Callable[..., DriverContext], provider: FakeProvider, refusal: dict[str, str]
) -> None:
    provider.answer("POST", CREATE_SESSION, 200, json=session_body(1))
    provider.answer("POST", CREATE_RECORD, 400, json=refusal)
    ctx = context()
    delivery = delivery_for(ctx, ChannelName.BLUESKY)

    outcome = await BlueskyChannel(ctx).send(
        message(ChannelName.BLUESKY), delivery.recipient, delivery
    )

    assert outcome == Sent(f"at://{DID}/app.bsky.feed.post/{record_key(delivery)}")


async def test_bluesky_a_server_error_without_the_record_is_retryable(
    context: Callable[..., DriverContext], provider: FakeProvider
) -> None:
    provider.answer("POST", CREATE_SESSION, 200, json=session_body(1))
    provider.answer(
        "POST",
        CREATE_RECORD,
        500,
        json={"error": "InternalServerError", "message": "Internal Server Error"},
    )
    provider.answer(
        "GET", GET_RECORD, 400, json={"error": "RecordNotFound", "message": "not found"}
    )
    ctx = context()
    delivery = delivery_for(ctx, ChannelName.BLUESKY)

    outcome = await BlueskyChannel(ctx).send(
        message(ChannelName.BLUESKY), delivery.recipient, delivery
    )

    assert isinstance(outcome, Retryable)
    assert "500" in outcome.error
    assert len(provider.requests_to("GET", GET_RECORD)) == 1


@pytest.mark.parametrize(
    ("headers", "wait"),
    [
        (
            {"RateLimit-Remaining": "0", "RateLimit-Reset": epoch(NOW + timedelta(minutes=5))},
            timedelta(minutes=5),
        ),
        ({"Retry-After": "45"}, timedelta(seconds=45)),
    ],
)
async def test_bluesky_session_rate_limit_is_retryable(
    context: Callable[..., DriverContext],
    provider: FakeProvider,
    headers: dict[str, str],
    wait: timedelta,
) -> None:
    provider.answer(
        "POST",
        CREATE_SESSION,
        429,
        json={"error": "RateLimitExceeded", "message": "Rate Limit Exceeded"},
        headers={"RateLimit-Limit": "30", "RateLimit-Policy": "30;w=300"} | headers,
    )
    ctx = context()
    delivery = delivery_for(ctx, ChannelName.BLUESKY)

    outcome = await BlueskyChannel(ctx).send(
        message(ChannelName.BLUESKY), delivery.recipient, delivery
    )

    assert isinstance(outcome, Retryable)
    assert outcome.retry_after == wait
    assert "RateLimitExceeded" in outcome.error
    assert provider.requests_to("POST", CREATE_RECORD) == []


async def test_bluesky_post_rate_limit_is_retryable(
    context: Callable[..., DriverContext], provider: FakeProvider
) -> None:
    provider.answer("POST", CREATE_SESSION, 200, json=session_body(1))
    provider.answer(
        "POST",
        CREATE_RECORD,
        429,
        json={"error": "RateLimitExceeded", "message": "Rate Limit Exceeded"},
        headers={"RateLimit-Reset": epoch(NOW + timedelta(minutes=20))},
    )
    ctx = context()
    delivery = delivery_for(ctx, ChannelName.BLUESKY)

    outcome = await BlueskyChannel(ctx).send(
        message(ChannelName.BLUESKY), delivery.recipient, delivery
    )

    assert isinstance(outcome, Retryable)
    assert outcome.retry_after == timedelta(minutes=20)


async def test_bluesky_wrong_app_password_is_permanent_and_private(
    context: Callable[..., DriverContext], provider: FakeProvider, redis: Redis
) -> None:
    def refuse(request: Received) -> Answer:
        password = request.json()["password"]
        return Answer(401, json={"error": "AuthenticationRequired", "message": f"bad: {password}"})

    provider.answer("POST", CREATE_SESSION, respond=refuse)
    ctx = context()
    delivery = delivery_for(ctx, ChannelName.BLUESKY)

    outcome = await BlueskyChannel(ctx).send(
        message(ChannelName.BLUESKY), delivery.recipient, delivery
    )

    assert isinstance(outcome, Permanent)
    assert "BLUESKY_APP_PASSWORD" in outcome.error
    assert "AuthenticationRequired" in outcome.error
    assert_private(outcome.error)
    assert await redis.keys("clarion:bluesky:session:*") == []


async def test_bluesky_invalid_record_is_permanent(
    context: Callable[..., DriverContext], provider: FakeProvider
) -> None:
    provider.answer("POST", CREATE_SESSION, 200, json=session_body(1))
    provider.answer(
        "POST",
        CREATE_RECORD,
        400,
        json={"error": "InvalidRequest", "message": "Invalid app.bsky.feed.post record: too long"},
    )
    ctx = context()
    delivery = delivery_for(ctx, ChannelName.BLUESKY)

    outcome = await BlueskyChannel(ctx).send(
        message(ChannelName.BLUESKY), delivery.recipient, delivery
    )

    assert isinstance(outcome, Permanent)
    assert "too long" in outcome.error
    assert provider.requests_to("POST", REFRESH_SESSION) == []


async def test_bluesky_without_an_app_password_is_not_configured(
    context: Callable[..., DriverContext], provider: FakeProvider
) -> None:
    ctx = context(environ={"MASTODON_TOKEN": MASTODON_TOKEN})
    delivery = delivery_for(ctx, ChannelName.BLUESKY)

    outcome = await BlueskyChannel(ctx).send(
        message(ChannelName.BLUESKY), delivery.recipient, delivery
    )

    assert isinstance(outcome, NotConfigured)
    assert "BLUESKY_APP_PASSWORD" in outcome.reason
    assert HANDLE in outcome.reason
    assert provider.received == []
