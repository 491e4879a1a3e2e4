"""Scenario: outbound webhooks never reach a private address, however it is spelled.

The real signed-webhook driver sends to each hostile URL of a plan, with SSRF
protection on (the default). Two witnesses say nothing left: a local HTTP server that
the loopback spellings all point at (it records every request), and the HTTP client's
transport, which records every request the driver tried to make to any address.
Names are answered by a stand-in resolver (``getaddrinfo`` patched), so no test
depends on real DNS. A redirect from an allowed receiver is never followed.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from typing import Final

import httpx
import pytest
from redis.asyncio import Redis

from services.dispatcher.channels.context import DriverContext
from services.dispatcher.channels.outcome import Outcome, Permanent
from services.dispatcher.channels.signed_webhook import SignedWebhookChannel
from services.dispatcher.rendering.messages import RenderedMessage, Renderer
from services.dispatcher.rendering.values import RenderContext
from shared.clock import ManualClock
from shared.plan import ChannelName, Plan
from shared.settings import Settings
from tests.reliability.hostile import Tally
from tests.reliability.scale import report
from tests.support.builders import T0, make_delivery, make_incident, make_incident_opened
from tests.support.fake_dns import answer_names
from tests.support.fake_provider import FakeProvider
from tests.support.plans import make_plan

pytestmark = pytest.mark.integration

HOOK: Final = "/hooks/clarion"
SECRET_ENV: Final = "PARTNER_WEBHOOK_SECRET"
SECRET: Final = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"

# Names the stand-in resolver answers, and with what.
RESOLVER: Final[Mapping[str, tuple[str, ...]]] = {
    "hooks.internal.test": ("10.0.0.7",),
    "metadata.test": ("169.254.169.254",),
    "back-home.test": ("127.0.0.1",),
    "mostly-public.test": ("93.184.216.34", "192.168.1.20"),
    "v6-home.test": ("::1",),
    "mapped-home.test": ("::ffff:127.0.0.1",),
}


def hostile_urls(port: int) -> dict[str, str]:
    """Webhook URLs that lead somewhere private; loopback ones at the recording server."""
    return {
        "loopback": f"http://127.0.0.1:{port}{HOOK}",
        "private-10": f"http://10.0.0.1:{port}{HOOK}",
        "cloud-metadata": "http://169.254.169.254/latest/meta-data/iam/security-credentials/",
        "ipv6-loopback": f"http://[::1]:{port}{HOOK}",
        "ipv4-mapped-loopback": f"http://[::ffff:127.0.0.1]:{port}{HOOK}",
        "ipv4-mapped-metadata": "http://[::ffff:169.254.169.254]/latest/meta-data/",
        "nat64-metadata": "http://[64:ff9b::a9fe:a9fe]/latest/meta-data/",
        "6to4-private": "http://[2002:a00:1::1]/hook",
        "decimal": f"http://2130706433:{port}{HOOK}",
        "octal": f"http://0177.0.0.1:{port}{HOOK}",
        "hex": f"http://0x7f000001:{port}{HOOK}",
        "short": f"http://127.1:{port}{HOOK}",
        "octal-metadata": "http://0251.0376.0251.0376/latest/meta-data/",
        "unspecified": f"http://0.0.0.0:{port}{HOOK}",
        "localhost": f"http://localhost:{port}{HOOK}",
        "https-loopback": f"https://127.0.0.1:{port}{HOOK}",
        "user-info-trick": f"http://hooks.example.com@127.0.0.1:{port}{HOOK}",
        "name-to-private": f"http://hooks.internal.test:{port}{HOOK}",
        "name-to-metadata": "http://metadata.test/latest/meta-data/",
        "name-to-loopback": f"http://back-home.test:{port}{HOOK}",
        "name-with-one-private-answer": f"http://mostly-public.test:{port}{HOOK}",
        "name-to-ipv6-loopback": f"http://v6-home.test:{port}{HOOK}",
        "name-to-mapped-loopback": f"http://mapped-home.test:{port}{HOOK}",
    }


class RecordingTransport(httpx.AsyncBaseTransport):
    """The real transport, noting every request the driver tried to make."""

    def __init__(self) -> None:
        self.tried: list[str] = []
        self._inner = httpx.AsyncHTTPTransport()

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        self.tried.append(str(request.url))
        return await self._inner.handle_async_request(request)

    async def aclose(self) -> None:
        await self._inner.aclose()


@pytest.fixture
def resolver(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Answer :data:`RESOLVER`'s names; everything else goes to the real resolver."""
    return answer_names(monkeypatch, RESOLVER)


@pytest.fixture
def receiver() -> Iterator[FakeProvider]:
    with FakeProvider() as fake:
        fake.answer("POST", HOOK, 200)
        yield fake


@pytest.fixture
async def transport() -> AsyncIterator[RecordingTransport]:
    recording = RecordingTransport()
    yield recording
    await recording.aclose()


def partners_plan(urls: Mapping[str, str]) -> Plan:
    hooks = [{"name": name, "url": url, "secret_env": SECRET_ENV} for name, url in urls.items()]
    return make_plan(
        audiences={"partners": {"webhook": hooks}},
        routes=[{"name": "all", "audiences": ["partners"]}],
    )


def driver(
    settings: Settings, plan: Plan, redis: Redis, transport: RecordingTransport
) -> tuple[SignedWebhookChannel, httpx.AsyncClient]:
    # As the dispatcher's shared client (context.http_client): no redirects followed.
    http = httpx.AsyncClient(transport=transport, follow_redirects=False, timeout=10.0)
    context = DriverContext(settings, plan, http, redis, ManualClock(T0), {SECRET_ENV: SECRET})
    return SignedWebhookChannel(context), http


def message_for(settings: Settings, plan: Plan) -> RenderedMessage:
    renderer = Renderer(RenderContext.of(plan, settings))
    return renderer.render(make_incident_opened(), make_incident(), "partners", ChannelName.WEBHOOK)


async def send_to(channel: SignedWebhookChannel, message: RenderedMessage, name: str) -> Outcome:
    delivery = make_delivery(
        delivery_id=f"d-{name}", channel=ChannelName.WEBHOOK, recipient=name, audience="partners"
    )
    return await channel.send(message, name, delivery)


async def test_webhooks_to_private_addresses_are_refused_and_nothing_is_contacted(
    make_settings: Callable[..., Settings],
    redis: Redis,
    resolver: list[str],
    receiver: FakeProvider,
    transport: RecordingTransport,
) -> None:
    port = int(receiver.url.rsplit(":", 1)[1])
    urls = hostile_urls(port)
    settings = make_settings()  # CLARION_WEBHOOK_ALLOW_PRIVATE left at its default
    plan = partners_plan(urls)
    channel, http = driver(settings, plan, redis, transport)
    message = message_for(settings, plan)
    tally = Tally()

    async with http:
        for name in urls:
            outcome = await send_to(channel, message, name)
            if isinstance(outcome, Permanent) and "refused" in outcome.error:
                tally.ok()
            else:
                tally.bad(f"{name}: {outcome}")

    outcome_line = report(
        tally.outcome(
            "ssrf: webhooks to private addresses",
            f"{len(transport.tried)} requests tried, {len(receiver.received)} received",
        )
    )
    assert settings.webhook_allow_private is False
    assert set(resolver) == set(RESOLVER)  # every stand-in name was looked up, and refused
    assert transport.tried == []
    assert receiver.received == []
    assert outcome_line.lost == 0, outcome_line.notes


@pytest.mark.parametrize("status", [301, 302, 303, 307, 308])
async def test_a_redirect_to_a_private_address_is_never_followed(
    make_settings: Callable[..., Settings],
    redis: Redis,
    receiver: FakeProvider,
    transport: RecordingTransport,
    status: int,
) -> None:
    # The receiver must be reachable to answer the redirect: it is on loopback, so this
    # test allows private targets; the redirect itself must still not be followed.
    with FakeProvider() as inside:
        inside.answer("POST", "/admin", 200)
        inside.answer("GET", "/admin", 200)
        targets = [
            f"{inside.url}/admin",
            "http://169.254.169.254/latest/meta-data/",
            "http://10.0.0.1/admin",
        ]
        tally = Tally()
        for target in targets:
            receiver.answer("POST", HOOK, status, headers={"Location": target})
            settings = make_settings(webhook_allow_private=True)
            plan = partners_plan({"partner": f"{receiver.url}{HOOK}"})
            channel, http = driver(settings, plan, redis, transport)
            async with http:
                outcome = await send_to(channel, message_for(settings, plan), "partner")
            if isinstance(outcome, Permanent) and "redirects are not followed" in outcome.error:
                tally.ok()
            else:
                tally.bad(f"{target}: {outcome}")

    line = report(tally.outcome(f"ssrf: {status} redirects to private addresses"))
    assert [r.path for r in receiver.received] == [HOOK] * len(targets)
    assert inside.received == []
    assert transport.tried == [f"{receiver.url}{HOOK}"] * len(targets)
    assert line.lost == 0, line.notes
