"""Signed webhooks (Standard Webhooks) against a local receiver, with SSRF protection on.

The receiver is a FakeProvider on 127.0.0.1, so every test that should reach it
sets ``webhook_allow_private``; the others check that loopback is refused by
default. Signatures are checked here independently of the driver's code, with
the spec's published test vector and a plain HMAC.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import socket
import ssl
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Final

import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from redis.asyncio import Redis

from services.dispatcher.channels.asyncio_network import direct_transport
from services.dispatcher.channels.context import DriverContext, http_client
from services.dispatcher.channels.outcome import NotConfigured, Permanent, Retryable, Sent
from services.dispatcher.channels.signed_webhook import SignedWebhookChannel, secret_key, sign
from services.dispatcher.fanout import Delivery
from services.dispatcher.rendering.messages import RenderedMessage, Renderer
from services.dispatcher.rendering.values import RenderContext
from shared.clock import ManualClock
from shared.plan import ChannelName, Plan
from shared.settings import Settings
from tests.support.builders import T0, make_delivery, make_incident, make_incident_opened
from tests.support.fake_provider import FakeProvider, Received
from tests.support.plans import make_plan

pytestmark = pytest.mark.integration

OUTBOUND: Final = Path(__file__).resolve().parent.parent / "fixtures" / "outbound"
HOOK_PATH: Final = "/hooks/clarion"
SECRET_ENV: Final = "ACME_WEBHOOK_SECRET"
VECTOR: Final = json.loads(
    (OUTBOUND / "standard_webhooks_signature_test_vector.json").read_text(encoding="utf-8")
)
SECRET: Final = str(VECTOR["secret"])


def webhook_plan(base_url: str) -> Plan:
    port = base_url.rsplit(":", 1)[1]
    partners = {
        "webhook": [
            {"name": "acme", "url": base_url + HOOK_PATH, "secret_env": SECRET_ENV},
            {"name": "open", "url": base_url + HOOK_PATH},
            {"name": "by-name", "url": f"http://localhost:{port}{HOOK_PATH}"},
            {"name": "decimal", "url": f"http://2130706433:{port}{HOOK_PATH}"},
            {"name": "rebind", "url": f"http://rebind.test:{port}{HOOK_PATH}"},
        ]
    }
    return make_plan(
        audiences={"partners": partners}, routes=[{"name": "all", "audiences": ["partners"]}]
    )


def delivery_for(name: str, delivery_id: str = "d0000000000000001") -> Delivery:
    return make_delivery(
        delivery_id=delivery_id, channel=ChannelName.WEBHOOK, recipient=name, audience="partners"
    )


def expected_signature(key: bytes, request: Received) -> str:
    """The signature recomputed from what the receiver got, as a receiver would."""
    signed = (
        f"{request.headers['webhook-id']}.{request.headers['webhook-timestamp']}.".encode()
        + request.body
    )
    return "v1," + base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest()).decode()


VECTOR_KEY: Final = base64.b64decode(SECRET.removeprefix("whsec_"))


@pytest.fixture
def provider() -> Iterator[FakeProvider]:
    with FakeProvider() as fake:
        yield fake


@pytest.fixture
async def http(make_settings: Callable[..., Settings]) -> AsyncIterator[httpx.AsyncClient]:
    async with http_client(make_settings()) as client:
        yield client


@pytest.fixture
def make_context(
    make_settings: Callable[..., Settings],
    http: httpx.AsyncClient,
    redis: Redis,
    provider: FakeProvider,
) -> Callable[..., DriverContext]:
    def factory(
        *, allow_private: bool = True, environ: dict[str, str] | None = None
    ) -> DriverContext:
        settings = make_settings(webhook_allow_private=allow_private)
        return DriverContext(
            settings,
            webhook_plan(provider.url),
            http,
            redis,
            ManualClock(T0),
            {SECRET_ENV: SECRET} if environ is None else environ,
        )

    return factory


def rendered(ctx: DriverContext) -> RenderedMessage:
    renderer = Renderer(RenderContext.of(ctx.plan, ctx.settings))
    return renderer.render(make_incident_opened(), make_incident(), "partners", ChannelName.WEBHOOK)


def test_the_signer_reproduces_the_spec_test_vector() -> None:
    headers = VECTOR["headers"]
    signature = sign(
        secret_key(SECRET),
        headers["webhook-id"],
        int(headers["webhook-timestamp"]),
        VECTOR["body"].encode(),
    )

    assert signature == headers["webhook-signature"]


@pytest.mark.parametrize(
    "secret",
    [SECRET, SECRET.removeprefix("whsec_"), SECRET.rstrip("="), f"  {SECRET}\n"],
)
def test_secrets_with_or_without_prefix_and_padding_give_the_same_key(secret: str) -> None:
    assert secret_key(secret) == VECTOR_KEY


async def test_a_signed_webhook_carries_verifiable_standard_headers(
    make_context: Callable[..., DriverContext], provider: FakeProvider
) -> None:
    provider.answer("POST", HOOK_PATH, 200, body="")
    ctx = make_context()
    message = rendered(ctx)
    channel = SignedWebhookChannel(ctx)

    outcome = await channel.send(message, "acme", delivery_for("acme", "d-acme-1"))

    assert outcome == Sent("d-acme-1")
    assert channel.idempotent is True
    [request] = provider.requests_to("POST", HOOK_PATH)
    assert request.headers["webhook-id"] == "d-acme-1"
    assert request.headers["webhook-timestamp"] == str(int(T0.timestamp()))
    assert request.headers["webhook-signature"] == expected_signature(VECTOR_KEY, request)
    assert request.headers["content-type"] == "application/json"
    assert json.loads(request.body) == message.payload
    assert request.json()["type"] == "incident.opened"
    assert request.json()["incident"]["id"] == "inc-1"


async def test_a_retried_delivery_keeps_its_id_and_is_signed_afresh(
    make_context: Callable[..., DriverContext], provider: FakeProvider
) -> None:
    provider.answer_next("POST", HOOK_PATH, 503, body="busy")
    provider.answer("POST", HOOK_PATH, 204)
    ctx = make_context()
    assert isinstance(ctx.clock, ManualClock)
    message = rendered(ctx)
    channel = SignedWebhookChannel(ctx)

    first = await channel.send(message, "acme", delivery_for("acme", "d-acme-2"))
    ctx.clock.advance(timedelta(minutes=5))
    second = await channel.send(message, "acme", delivery_for("acme", "d-acme-2"))

    assert isinstance(first, Retryable)
    assert second == Sent("d-acme-2")
    one, two = provider.requests_to("POST", HOOK_PATH)
    assert one.headers["webhook-id"] == two.headers["webhook-id"] == "d-acme-2"
    assert int(two.headers["webhook-timestamp"]) - int(one.headers["webhook-timestamp"]) == 300
    assert one.headers["webhook-signature"] != two.headers["webhook-signature"]
    for request in (one, two):
        assert request.headers["webhook-signature"] == expected_signature(VECTOR_KEY, request)
    assert one.body == two.body


async def test_without_a_secret_env_the_webhook_goes_unsigned(
    make_context: Callable[..., DriverContext], provider: FakeProvider
) -> None:
    provider.answer("POST", HOOK_PATH, 200)

    ctx = make_context()
    outcome = await SignedWebhookChannel(ctx).send(
        rendered(ctx), "open", delivery_for("open", "d-open-1")
    )

    assert outcome == Sent("d-open-1")
    [request] = provider.requests_to("POST", HOOK_PATH)
    assert "webhook-signature" not in request.headers
    assert request.headers["webhook-id"] == "d-open-1"
    assert request.headers["webhook-timestamp"] == str(int(T0.timestamp()))


async def test_a_named_but_unset_secret_is_not_configured_and_sends_nothing(
    make_context: Callable[..., DriverContext], provider: FakeProvider
) -> None:
    ctx = make_context(environ={})

    outcome = await SignedWebhookChannel(ctx).send(rendered(ctx), "acme", delivery_for("acme"))

    assert isinstance(outcome, NotConfigured)
    assert SECRET_ENV in outcome.reason
    assert provider.received == []


async def test_a_malformed_secret_is_permanent_and_never_quoted(
    make_context: Callable[..., DriverContext], provider: FakeProvider
) -> None:
    ctx = make_context(environ={SECRET_ENV: "whsec_not*base64!"})

    outcome = await SignedWebhookChannel(ctx).send(rendered(ctx), "acme", delivery_for("acme"))

    assert isinstance(outcome, Permanent)
    assert SECRET_ENV in outcome.error
    assert "not*base64" not in outcome.error
    assert provider.received == []


@pytest.mark.parametrize("name", ["acme", "by-name", "decimal"])
async def test_loopback_receivers_are_refused_by_default(
    make_context: Callable[..., DriverContext], provider: FakeProvider, name: str
) -> None:
    provider.answer("POST", HOOK_PATH, 200)
    ctx = make_context(allow_private=False)

    outcome = await SignedWebhookChannel(ctx).send(rendered(ctx), name, delivery_for(name))

    assert isinstance(outcome, Permanent)
    assert "loopback" in outcome.error
    assert "CLARION_WEBHOOK_ALLOW_PRIVATE" in outcome.error
    assert provider.received == []


async def test_allowing_private_reaches_a_host_by_name_with_its_host_header(
    make_context: Callable[..., DriverContext], provider: FakeProvider
) -> None:
    provider.answer("POST", HOOK_PATH, 200)
    port = provider.url.rsplit(":", 1)[1]

    ctx = make_context()
    outcome = await SignedWebhookChannel(ctx).send(
        rendered(ctx), "by-name", delivery_for("by-name")
    )

    assert outcome == Sent("d0000000000000001")
    [request] = provider.requests_to("POST", HOOK_PATH)
    assert request.headers["host"] == f"localhost:{port}"


async def test_the_request_is_pinned_to_the_address_that_was_checked(
    make_context: Callable[..., DriverContext],
    provider: FakeProvider,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # "rebind.test" resolves once (for the check); the connection must use that answer,
    # not ask DNS again (where a rebinding attacker would now answer differently).
    port = int(provider.url.rsplit(":", 1)[1])
    real = socket.getaddrinfo
    lookups: list[str] = []

    def getaddrinfo(host: Any, *args: Any, **kwargs: Any) -> Any:
        name = host.decode() if isinstance(host, bytes) else host
        if name == "rebind.test":
            lookups.append(name)
            return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", ("127.0.0.1", port))]
        return real(host, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    provider.answer("POST", HOOK_PATH, 200)
    ctx = make_context()

    outcome = await SignedWebhookChannel(ctx).send(rendered(ctx), "rebind", delivery_for("rebind"))

    assert outcome == Sent("d0000000000000001")
    assert lookups == ["rebind.test"]
    [request] = provider.requests_to("POST", HOOK_PATH)
    assert request.headers["host"] == f"rebind.test:{port}"


@pytest.mark.parametrize("status", [301, 302, 307, 308])
async def test_a_redirect_is_refused_and_not_followed(
    make_context: Callable[..., DriverContext], provider: FakeProvider, status: int
) -> None:
    provider.answer("POST", HOOK_PATH, status, headers={"Location": "/elsewhere"})
    provider.answer("POST", "/elsewhere", 200)
    provider.answer("GET", "/elsewhere", 200)

    ctx = make_context()
    outcome = await SignedWebhookChannel(ctx).send(rendered(ctx), "acme", delivery_for("acme"))

    assert isinstance(outcome, Permanent)
    assert "redirects are not followed" in outcome.error
    assert [r.path for r in provider.received] == [HOOK_PATH]


@pytest.mark.parametrize(
    ("status", "headers", "kind", "wait"),
    [
        (410, {}, Permanent, None),
        (400, {}, Permanent, None),
        (429, {"Retry-After": "120"}, Retryable, timedelta(seconds=120)),
        (502, {}, Retryable, None),
        (504, {}, Retryable, None),
    ],
)
async def test_receiver_answers_are_classified(
    make_context: Callable[..., DriverContext],
    provider: FakeProvider,
    status: int,
    headers: dict[str, str],
    kind: type[Permanent] | type[Retryable],
    wait: timedelta | None,
) -> None:
    provider.answer("POST", HOOK_PATH, status, headers=headers, body="no")

    ctx = make_context()
    outcome = await SignedWebhookChannel(ctx).send(rendered(ctx), "acme", delivery_for("acme"))

    assert isinstance(outcome, kind)
    if isinstance(outcome, Retryable):
        assert outcome.retry_after == wait


# HTTPS: connecting to the checked address must still verify the certificate of the name.


def self_signed(name: str) -> tuple[bytes, bytes]:
    """A certificate for ``name`` (and its key), valid around now, trusted by itself."""
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.now(UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(days=1))
        .not_valid_after(now + timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(name)]), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    key_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    return certificate.public_bytes(serialization.Encoding.PEM), key_pem


@asynccontextmanager
async def tls_receiver(
    certificate: bytes, key: bytes, tmp_path: Path
) -> AsyncIterator[tuple[int, list[str], list[bytes]]]:
    """A minimal HTTPS receiver on 127.0.0.1: its port, the SNI names and requests it saw."""
    (tmp_path / "cert.pem").write_bytes(certificate)
    (tmp_path / "key.pem").write_bytes(key)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(tmp_path / "cert.pem", tmp_path / "key.pem")
    names: list[str] = []
    requests: list[bytes] = []
    context.sni_callback = lambda _sock, name, _ctx: names.append(name or "")

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        length = next(
            (
                int(line.split(b":", 1)[1])
                for line in head.split(b"\r\n")
                if line.lower().startswith(b"content-length:")
            ),
            0,
        )
        requests.append(head + await reader.readexactly(length))
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\nconnection: close\r\n\r\n")
        await writer.drain()
        writer.close()
        await writer.wait_closed()

    server = await asyncio.start_server(handle, "127.0.0.1", 0, ssl=context)
    try:
        yield server.sockets[0].getsockname()[1], names, requests
    finally:
        server.close()
        await server.wait_closed()


@pytest.mark.parametrize(("certified", "delivered"), [("hooks.test", True), ("other.test", False)])
@pytest.mark.parametrize("network", ["asyncio", "anyio"])  # the drivers' backend, httpx's own
async def test_https_is_pinned_and_still_verifies_the_certificate_of_the_name(
    make_settings: Callable[..., Settings],
    redis: Redis,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    certified: str,
    delivered: bool,
    network: str,
) -> None:
    certificate, key = self_signed(certified)
    trust = ssl.create_default_context(cadata=certificate.decode())
    real = socket.getaddrinfo

    def getaddrinfo(host: Any, port: Any, *args: Any, **kwargs: Any) -> Any:
        if host in ("hooks.test", b"hooks.test"):
            return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", ("127.0.0.1", port))]
        return real(host, port, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    async with tls_receiver(certificate, key, tmp_path) as (port, names, requests):
        plan = make_plan(
            audiences={
                "partners": {"webhook": [{"name": "tls", "url": f"https://hooks.test:{port}/in"}]}
            },
            routes=[{"name": "all", "audiences": ["partners"]}],
        )
        settings = make_settings(webhook_allow_private=True)
        transport = direct_transport(httpx.Limits(), verify=trust) if network == "asyncio" else None
        async with httpx.AsyncClient(
            verify=trust, transport=transport, follow_redirects=False
        ) as client:
            ctx = DriverContext(settings, plan, client, redis, ManualClock(T0), {})
            outcome = await SignedWebhookChannel(ctx).send(
                rendered(ctx), "tls", delivery_for("tls")
            )

    assert names == ["hooks.test"]  # SNI carries the name, though the socket went to the IP
    if delivered:
        assert outcome == Sent("d0000000000000001")
        [request] = requests
        assert request.startswith(b"POST /in HTTP/1.1\r\n")
        assert f"host: hooks.test:{port}\r\n".encode() in request.lower()
    else:
        assert isinstance(outcome, Retryable)
        assert "CERTIFICATE_VERIFY_FAILED" in outcome.error
        assert requests == []
