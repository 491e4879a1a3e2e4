"""A stand-in for AWS SNS: a signing key, messages signed with it, and a host serving its cert.

The string to sign is built here from AWS's documented rules, independently of
the code under test, so a mistake there cannot cancel out in the tests.
"""

from __future__ import annotations

import base64
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.x509.oid import NameOID
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp, Receive, Scope, Send

from tests.support.asgi import serving_in_thread

# The fields SNS signs, per message type, in the order it signs them.
_SIGNED_FIELDS = {
    "Notification": ("Message", "MessageId", "Subject", "Timestamp", "TopicArn", "Type"),
    "SubscriptionConfirmation": (
        "Message",
        "MessageId",
        "SubscribeURL",
        "Timestamp",
        "Token",
        "TopicArn",
        "Type",
    ),
}
_SIGNED_FIELDS["UnsubscribeConfirmation"] = _SIGNED_FIELDS["SubscriptionConfirmation"]


@dataclass(frozen=True)
class SigningIdentity:
    key: rsa.RSAPrivateKey
    certificate: x509.Certificate

    @property
    def certificate_pem(self) -> bytes:
        return self.certificate.public_bytes(serialization.Encoding.PEM)

    def signed(self, message: dict[str, Any], version: str = "1") -> dict[str, Any]:
        """``message`` with ``SignatureVersion`` and a base64 ``Signature`` added."""
        fields = _SIGNED_FIELDS[message["Type"]]
        text = "".join(f"{name}\n{message[name]}\n" for name in fields if name in message)
        algorithm = hashes.SHA1() if version == "1" else hashes.SHA256()
        signature = self.key.sign(text.encode(), padding.PKCS1v15(), algorithm)
        return {
            **message,
            "SignatureVersion": version,
            "Signature": base64.b64encode(signature).decode(),
        }


def signing_identity(now: datetime, common_name: str = "sns.amazonaws.com") -> SigningIdentity:
    """A fresh RSA key and a self-signed certificate valid around ``now``."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(days=1))
        .not_valid_after(now + timedelta(days=365))
        .sign(key, hashes.SHA256())
    )
    return SigningIdentity(key, certificate)


@dataclass
class FakeSnsHost:
    """A loopback stand-in for ``sns.<region>.amazonaws.com``, counting requests by path.

    ``/cert.pem`` serves the certificate and ``/confirm`` accepts a subscription;
    ``/huge.pem`` (200 kB), ``/moved.pem`` (a redirect to ``/cert.pem``) and
    ``/refuse`` (403) misbehave; any other path is a 404.
    """

    certificate_pem: bytes
    base_url: str = ""
    requests: Counter[str] = field(default_factory=Counter)

    @property
    def url_pattern(self) -> str:
        """A pattern that allows this host only, like CLARION_SNS_CERT_URL_PATTERN does AWS."""
        return "^" + self.base_url.replace(".", r"\.") + "/"

    def url(self, path: str) -> str:
        return f"{self.base_url}{path}"

    def app(self) -> ASGIApp:
        async def certificate(_: Request) -> Response:
            return Response(self.certificate_pem, media_type="application/x-pem-file")

        async def huge(_: Request) -> Response:
            return Response(b"A" * 200_000)

        async def moved(_: Request) -> Response:
            return RedirectResponse("/cert.pem", status_code=302)

        async def confirm(_: Request) -> Response:
            return Response("<ConfirmSubscriptionResponse/>", media_type="text/xml")

        async def refuse(_: Request) -> Response:
            return Response("<Error/>", status_code=403, media_type="text/xml")

        routes = [
            Route("/cert.pem", certificate),
            Route("/huge.pem", huge),
            Route("/moved.pem", moved),
            Route("/confirm", confirm),
            Route("/refuse", refuse),
        ]
        inner = Starlette(routes=routes)

        async def counting(scope: Scope, receive: Receive, send: Send) -> None:
            if scope["type"] == "http":
                self.requests[scope["path"]] += 1
            await inner(scope, receive, send)

        return counting


@contextmanager
def serving_fake_sns_host(identity: SigningIdentity) -> Iterator[FakeSnsHost]:
    """Serve ``identity``'s certificate on 127.0.0.1 (uvicorn, in a thread) until exit."""
    host = FakeSnsHost(identity.certificate_pem)
    with serving_in_thread(host.app()) as base_url:
        host.base_url = base_url
        yield host
