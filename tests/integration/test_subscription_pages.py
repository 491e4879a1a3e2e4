"""The subscription pages of the dispatcher app, over HTTP, with its lifespan running: the
form, the confirmation email's link end to end, GET never confirming, one-click
unsubscribe (RFC 8058) from the link the real email driver puts on incident mail."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from datetime import timedelta
from email.message import EmailMessage
from html.parser import HTMLParser
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest
from faststream.redis import RedisBroker
from redis.asyncio import Redis

from services.dispatcher.app import create_app
from services.dispatcher.outbox import read_outbox
from services.dispatcher.subscriptions import PENDING_FOR, SubscriptionStore
from services.dispatcher.unsubscribe import unsubscribe_secret, unsubscribe_token
from shared.clock import ManualClock
from shared.contracts import DeliveryJob, IncidentOpened
from shared.redis_values import data_entries
from shared.settings import Settings
from shared.streams import INCIDENT_EVENTS, delivery_stream
from tests.support.asgi import running, serving_in_thread
from tests.support.builders import T0, make_incident, make_incident_opened
from tests.support.plans import make_plan
from tests.support.smtp import SmtpServer

pytestmark = pytest.mark.integration

ALICE = "alice@example.com"
SUB = "reader@example.org"
PLAN = make_plan(
    emails=(ALICE,),
    organization="Example Shop",
    components=[
        {"name": "Website", "description": "The shop and sign-in.", "services": ["web"]},
        {"name": "Checkout", "services": ["checkout-api"]},
    ],
    audiences={"customers": {"public": True, "subscribers": True, "email": [ALICE]}},
    routes=[{"audiences": ["customers"]}],
)


# Reading pages


@dataclass
class Page(HTMLParser):
    """What a test checks on a page: forms, fields, labels, links."""

    inputs: list[dict[str, str]] = field(default_factory=list)
    labels: list[str] = field(default_factory=list)
    forms: list[dict[str, str]] = field(default_factory=list)
    links: list[str] = field(default_factory=list)
    buttons: int = 0
    has_main: bool = False

    def __post_init__(self) -> None:
        super().__init__()

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        values = {name: value or "" for name, value in attrs}
        if tag == "input":
            self.inputs.append(values)
        elif tag == "label" and "for" in values:
            self.labels.append(values["for"])
        elif tag == "form":
            self.forms.append(values)
        elif tag == "a" and "href" in values:
            self.links.append(values["href"])
        elif tag == "button":
            self.buttons += 1
        elif tag == "main":
            self.has_main = True

    @property
    def visible_inputs(self) -> list[dict[str, str]]:
        return [i for i in self.inputs if i.get("type") not in ("hidden", "submit")]


def read(response: httpx.Response) -> Page:
    assert response.headers["content-type"].startswith("text/html")
    page = Page()
    page.feed(response.text)
    return page


def assert_accessible(page: Page) -> None:
    """Every visible field has a label, the page has a main part and a way back to /status."""
    for field_ in page.visible_inputs:
        assert field_.get("id") in page.labels, f"no label for {field_}"
    assert page.has_main
    assert "/status" in page.links


# The app


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock(T0)


@pytest.fixture
def settings(make_settings: Callable[..., Settings], smtp_server: SmtpServer) -> Settings:
    return make_settings(
        smtp_host=smtp_server.host,
        smtp_port=smtp_server.port,
        email_from="Example Shop <status@shop.example>",
        rate_limits=(),
    )


def origin(settings: Settings) -> str:
    """Where the built-in page is (the links in emails point there): the test client's base."""
    parts = urlsplit(settings.local_status_url)
    return f"{parts.scheme}://{parts.netloc}"


@pytest.fixture
async def client(
    redis: Redis, settings: Settings, clock: ManualClock
) -> AsyncIterator[httpx.AsyncClient]:
    async with running(create_app(settings, clock, plan=PLAN), origin(settings)) as http:
        yield http


async def mail_to(smtp: SmtpServer, address: str, count: int = 1) -> list[EmailMessage]:
    await asyncio.to_thread(
        smtp.mailbox.wait_for,
        lambda messages: len([m for m in messages if m["X-Envelope-To"] == address]) >= count,
    )
    return smtp.to(address)


def plain(message: EmailMessage) -> str:
    body = message.get_body(("plain",))
    assert body is not None
    text = body.get_content()
    assert isinstance(text, str)
    return text


def confirm_link(text: str, settings: Settings) -> str:
    start = text.index(f"{settings.local_status_url}/subscribe/confirm?token=")
    return text[start:].split(maxsplit=1)[0]


async def ask(client: httpx.AsyncClient, email: str, *components: str) -> httpx.Response:
    data: dict[str, Any] = {"email": email}
    if components:
        data["component"] = list(components)
    return await client.post("/status/subscribe", data=data)


# The form


async def test_the_form_offers_the_plans_components_with_labels(
    client: httpx.AsyncClient,
) -> None:
    response = await client.get("/status/subscribe")

    assert response.status_code == 200
    page = read(response)
    assert_accessible(page)
    assert page.forms == [{"method": "post", "action": "/status/subscribe", "class": "card"}]
    email = next(i for i in page.inputs if i.get("name") == "email")
    assert email["type"] == "email"
    assert "required" in email
    boxes = [i for i in page.inputs if i.get("type") == "checkbox"]
    assert [(b["name"], b["value"]) for b in boxes] == [
        ("component", "Website"),
        ("component", "Checkout"),
    ]
    assert not any("checked" in b for b in boxes)  # none ticked: every incident
    assert "every incident" in response.text
    assert "The shop and sign-in." in response.text
    assert page.buttons == 1


async def test_a_bad_address_gets_the_form_back_with_the_reason(
    client: httpx.AsyncClient, smtp_server: SmtpServer
) -> None:
    response = await ask(client, "not-an-address", "Checkout")

    assert response.status_code == 400
    page = read(response)
    assert_accessible(page)
    assert "There is a problem" in response.text
    assert "enter an email address like name@example.com" in response.text
    email = next(i for i in page.inputs if i.get("name") == "email")
    assert email["value"] == "not-an-address"  # kept, to correct
    assert email["aria-invalid"] == "true"
    checkout = next(i for i in page.inputs if i.get("value") == "Checkout")
    assert "checked" in checkout
    assert response.text.count("<title>Error:") == 1


async def test_an_empty_address_and_an_unknown_component_are_refused(
    client: httpx.AsyncClient,
) -> None:
    empty = await client.post("/status/subscribe", data={})
    unknown = await ask(client, SUB, "Billing")
    script = await ask(client, "<script>@x.example")

    assert empty.status_code == 400
    assert "enter your email address" in empty.text
    assert unknown.status_code == 400
    assert "there is no component called &#39;Billing&#39;" in unknown.text
    assert script.status_code == 400
    assert "<script>" not in script.text  # escaped


# Subscribing and confirming, end to end


async def test_the_confirm_link_in_the_email_subscribes_after_a_post_only(
    client: httpx.AsyncClient,
    smtp_server: SmtpServer,
    settings: Settings,
    redis: Redis,
    clock: ManualClock,
) -> None:
    response = await ask(client, SUB, "checkout")

    assert response.status_code == 200
    assert "Check your inbox" in response.text
    assert_accessible(read(response))
    [mail] = await mail_to(smtp_server, SUB)
    assert mail["From"] == "Example Shop <status@shop.example>"
    link = confirm_link(plain(mail), settings)
    store = SubscriptionStore(redis, clock)

    shown = await client.get(link)  # what a link scanner does
    again = await client.get(link)

    assert shown.status_code == 200
    assert again.status_code == 200
    assert await store.count() == 0  # GET never confirms
    page = read(shown)
    assert_accessible(page)
    assert page.forms[0]["method"] == "post"
    assert page.buttons == 1
    assert "incidents affecting Checkout" in shown.text
    assert shown.headers["referrer-policy"] == "no-referrer"
    assert shown.headers["cache-control"] == "no-store"
    form_action = page.forms[0]["action"]
    token = next(i["value"] for i in page.inputs if i.get("name") == "token")

    confirmed = await client.post(form_action, data={"token": token})

    assert confirmed.status_code == 200
    assert "You're subscribed" in confirmed.text
    assert_accessible(read(confirmed))
    subscription = await store.subscription(SUB)
    assert subscription is not None
    assert subscription.components == ("Checkout",)
    used = await client.post(link)
    assert used.status_code == 404
    assert "expired or was used already" in used.text
    assert (await client.get(link)).status_code == 404


async def test_forged_malformed_and_expired_confirm_links_get_a_clear_page(
    client: httpx.AsyncClient,
    smtp_server: SmtpServer,
    settings: Settings,
    redis: Redis,
    clock: ManualClock,
) -> None:
    await ask(client, SUB)
    [mail] = await mail_to(smtp_server, SUB)
    link = confirm_link(plain(mail), settings)
    token = link.partition("token=")[2]
    forged = token[:-1] + ("A" if token[-1] != "A" else "B")

    missing = await client.post("/status/subscribe/confirm")
    malformed = await client.get("/status/subscribe/confirm", params={"token": token[:20]})
    wrong = await client.post("/status/subscribe/confirm", params={"token": forged})
    clock.advance(PENDING_FOR)
    expired = await client.post(link)

    assert missing.status_code == 400
    assert "missing part of its address" in missing.text
    assert malformed.status_code == 400
    assert wrong.status_code == 404
    assert expired.status_code == 404
    assert "more than 48 hours old" in expired.text
    assert_accessible(read(expired))
    assert "/status/subscribe" in read(expired).links
    assert await SubscriptionStore(redis, clock).count() == 0


async def test_the_answer_never_tells_whether_an_address_is_subscribed(
    client: httpx.AsyncClient,
    smtp_server: SmtpServer,
    settings: Settings,
    redis: Redis,
    clock: ManualClock,
) -> None:
    await SubscriptionStore(redis, clock).add_confirmed({SUB: ()})

    subscribed = await ask(client, SUB)
    throttled = await ask(client, SUB)
    stranger = await ask(client, "nobody@example.org")
    stranger_again = await ask(client, "nobody@example.org")

    assert subscribed.status_code == throttled.status_code == stranger.status_code == 200
    assert subscribed.text == throttled.text
    assert stranger.text == stranger_again.text
    assert subscribed.text.replace(SUB, "X") == stranger.text.replace("nobody@example.org", "X")
    await mail_to(smtp_server, "nobody@example.org")
    assert len(await mail_to(smtp_server, SUB)) == 1  # one mail per 10 minutes


async def test_without_smtp_the_confirmation_is_in_the_outbox_and_its_link_works(
    redis: Redis, make_settings: Callable[..., Settings], clock: ManualClock
) -> None:
    settings = make_settings(smtp_host=None)
    async with running(create_app(settings, clock, plan=PLAN), origin(settings)) as client:
        assert (await ask(client, SUB)).status_code == 200
        [kept] = await read_outbox(redis, channel="email")
        link = confirm_link(kept.text, settings)

        confirmed = await client.post(link)

    assert kept.to == SUB
    assert confirmed.status_code == 200
    assert await SubscriptionStore(redis, clock).subscription(SUB) is not None


# Unsubscribing


async def publish_opened(redis_url: str, event_id: str, incident_id: str) -> IncidentOpened:
    event = make_incident_opened(
        make_incident(id=incident_id),
        event_id=event_id,
        occurred_at=T0,
        next_update_at=T0 + timedelta(minutes=30),
    )
    async with RedisBroker(redis_url) as broker:
        await broker.publish(event, stream=INCIDENT_EVENTS)
    return event


async def test_a_subscriber_hears_of_incidents_until_a_one_click_unsubscribe(
    client: httpx.AsyncClient,
    smtp_server: SmtpServer,
    settings: Settings,
    redis: Redis,
    redis_url: str,
) -> None:
    await ask(client, SUB)
    [confirmation] = await mail_to(smtp_server, SUB)
    assert (await client.post(confirm_link(plain(confirmation), settings))).status_code == 200

    await publish_opened(redis_url, "ev-1", "inc-1")
    incident_mail = (await mail_to(smtp_server, SUB, count=2))[-1]
    assert incident_mail["X-Clarion-Incident"] == "inc-1"
    link = incident_mail["List-Unsubscribe"].strip("<>")
    assert link.startswith(f"{settings.local_status_url}/unsubscribe?token=")

    # RFC 8058: a POST of this exact body, no cookie, no auth, as a mail provider sends it.
    assert not client.cookies
    answer = await client.post(
        link,
        content=b"List-Unsubscribe=One-Click",
        headers={"Content-Type": "application/x-www-form-urlencoded"},
    )
    assert answer.status_code == 200
    assert "You're unsubscribed" in answer.text
    assert_accessible(read(answer))

    await publish_opened(redis_url, "ev-2", "inc-2")
    await mail_to(smtp_server, ALICE, count=2)  # the second incident went out: fanned out
    jobs = [
        DeliveryJob.model_validate_json(payload)
        for _, payload in data_entries(await redis.xrange(delivery_stream("email")))
    ]
    assert {(j.event_id, j.recipient) for j in jobs} == {
        ("ev-1", ALICE),
        ("ev-1", SUB),
        ("ev-2", ALICE),
    }
    assert [m["X-Clarion-Incident"] for m in smtp_server.to(SUB)] == [None, "inc-1"]


async def test_the_unsubscribe_link_shows_a_button_and_get_changes_nothing(
    client: httpx.AsyncClient, redis: Redis, settings: Settings, clock: ManualClock
) -> None:
    store = SubscriptionStore(redis, clock)
    await store.add_confirmed({SUB: ()})
    token = unsubscribe_token(await unsubscribe_secret(settings, redis), SUB)

    shown = await client.get("/status/unsubscribe", params={"token": token})

    assert shown.status_code == 200
    page = read(shown)
    assert_accessible(page)
    assert SUB in shown.text
    assert page.forms[0]["method"] == "post"
    assert await store.count() == 1
    assert {"type": "hidden", "name": "List-Unsubscribe", "value": "One-Click"} in page.inputs

    pressed = await client.post(page.forms[0]["action"], data={"List-Unsubscribe": "One-Click"})

    assert pressed.status_code == 200
    assert await store.count() == 0
    assert await store.unsubscribed_among([SUB]) == {SUB}
    assert (await client.post(page.forms[0]["action"])).status_code == 200  # twice: still fine


async def test_a_listed_address_can_unsubscribe_from_public_mail(
    client: httpx.AsyncClient, redis: Redis, settings: Settings, clock: ManualClock
) -> None:
    token = unsubscribe_token(await unsubscribe_secret(settings, redis), ALICE)

    answer = await client.post("/status/unsubscribe", params={"token": token})

    assert answer.status_code == 200
    assert await SubscriptionStore(redis, clock).unsubscribed_among([ALICE]) == {ALICE}


async def test_a_bad_unsubscribe_token_is_a_clear_400(
    client: httpx.AsyncClient, redis: Redis, settings: Settings
) -> None:
    token = unsubscribe_token("another deployment's secret", SUB)

    for response in (
        await client.get("/status/unsubscribe", params={"token": token}),
        await client.post("/status/unsubscribe", params={"token": token}),
        await client.post("/status/unsubscribe", content=b"List-Unsubscribe=One-Click"),
        await client.get("/status/unsubscribe"),
    ):
        assert response.status_code == 400
        assert "not valid" in response.text
        assert_accessible(read(response))


# Over a real socket


def test_one_click_unsubscribe_over_http(
    make_settings: Callable[..., Settings], redis_url: str
) -> None:
    settings = make_settings(smtp_host=None, unsubscribe_secret="a-secret-for-this-test")
    app = create_app(settings, ManualClock(T0), plan=PLAN)
    token = unsubscribe_token("a-secret-for-this-test", SUB)

    async def subscribed() -> int:
        client = Redis.from_url(redis_url)
        try:
            return await SubscriptionStore(client, ManualClock(T0)).count()
        finally:
            await client.aclose()

    async def seed() -> None:
        client = Redis.from_url(redis_url)
        try:
            await client.flushdb()
            await SubscriptionStore(client, ManualClock(T0)).add_confirmed({SUB: ()})
        finally:
            await client.aclose()

    asyncio.run(seed())
    with serving_in_thread(app, lifespan="on") as base:
        answer = httpx.post(
            f"{base}/status/unsubscribe",
            params={"token": token},
            content=b"List-Unsubscribe=One-Click",
            headers={"Content-Type": "application/x-www-form-urlencoded"},
            timeout=10.0,
        )
        form = httpx.get(f"{base}/status/subscribe", timeout=10.0)

    assert answer.status_code == 200
    assert form.status_code == 200
    assert asyncio.run(subscribed()) == 0


async def test_one_client_asking_too_often_gets_a_429_and_no_mail(
    client: httpx.AsyncClient, smtp_server: SmtpServer
) -> None:
    answers = [await ask(client, f"person{n}@example.org") for n in range(11)]

    assert [a.status_code for a in answers[:10]] == [200] * 10
    refused = answers[10]
    assert refused.status_code == 429
    assert int(refused.headers["retry-after"]) > 0
    assert "too many subscription requests" in refused.text
    await mail_to(smtp_server, "person9@example.org")
    assert smtp_server.to("person10@example.org") == []  # refused: no mail was ever queued
