"""Building and signing requests to the ingest API, independently of the code under test.

Signatures are computed here from each scheme's published rules (Grafana's hex
HMAC, Standard Webhooks, SNS through :mod:`tests.support.signing_certs`), never
with ``services.ingest.signatures``, so a mistake there cannot cancel out.

:class:`LoopbackServer` stands in for ``sns.<region>.amazonaws.com``: a real
HTTP server on 127.0.0.1 serving the signing certificate and the SubscribeURL,
recording every request it gets.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Final

import httpx
from fastapi import FastAPI
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from starlette.types import ASGIApp, Receive, Scope, Send

from tests.support.asgi import serving_in_thread

REMOTE_CLIENT: Final = ("203.0.113.5", 1234)
"""A client address that is not loopback (TEST-NET-3)."""

JSON: Final = {"Content-Type": "application/json"}


@asynccontextmanager
async def running_from(
    app: FastAPI, base_url: str, client: tuple[str, int] = REMOTE_CLIENT
) -> AsyncIterator[httpx.AsyncClient]:
    """Like :func:`tests.support.asgi.running`, with requests coming from ``client``."""
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app, client=client)
        async with httpx.AsyncClient(transport=transport, base_url=base_url) as http:
            yield http


def body_of(payload: Any) -> bytes:
    """The exact bytes to send (and sign)."""
    return json.dumps(payload, separators=(",", ":")).encode()


def epoch(moment: datetime) -> int:
    return int(moment.timestamp())


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def basic(user: str, password: str) -> dict[str, str]:
    credentials = base64.b64encode(f"{user}:{password}".encode()).decode()
    return {"Authorization": f"Basic {credentials}"}


def grafana_headers(secret: str, body: bytes, timestamp: int | None = None) -> dict[str, str]:
    """As Grafana signs: hex HMAC-SHA256 of the body, or of ``"<timestamp>:<body>"``."""
    signed = body if timestamp is None else f"{timestamp}:".encode() + body
    headers = {
        **JSON,
        "X-Grafana-Alerting-Signature": hmac.new(
            secret.encode(), signed, hashlib.sha256
        ).hexdigest(),
    }
    if timestamp is not None:
        headers["X-Grafana-Alerting-Signature-Timestamp"] = str(timestamp)
    return headers


def whsec(key: bytes) -> str:
    """A Standard Webhooks secret for ``key``."""
    return "whsec_" + base64.b64encode(key).decode()


def standard_webhook_headers(
    secret: str, body: bytes, timestamp: int, msg_id: str = "msg_2Qm5pZ0d1"
) -> dict[str, str]:
    """As the Standard Webhooks spec signs: ``v1,`` + base64 HMAC-SHA256 of ``id.ts.body``."""
    key = base64.b64decode(secret.removeprefix("whsec_"))
    digest = hmac.new(key, f"{msg_id}.{timestamp}.".encode() + body, hashlib.sha256).digest()
    return {
        **JSON,
        "webhook-id": msg_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": "v1," + base64.b64encode(digest).decode(),
    }


def sns_time(moment: datetime) -> str:
    """SNS's ``Timestamp`` format: ``2026-11-23T14:30:00.000Z``."""
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


def cloudwatch_alarm(
    state: str,
    changed_at: datetime,
    *,
    name: str = "checkout-5xx",
    description: str = "severity: SEV1 Checkout answers too many 5xx",
) -> str:
    """The JSON a CloudWatch alarm publishes as an SNS ``Message`` when its state changes."""
    return json.dumps(
        {
            "AlarmName": name,
            "AlarmDescription": description,
            "AWSAccountId": "123456789012",
            "NewStateValue": state,
            "NewStateReason": "Threshold Crossed: 1 datapoint [12.3] was greater than 5.0.",
            "StateChangeTime": changed_at.strftime("%Y-%m-%dT%H:%M:%S.000+0000"),
            "Region": "US West (Oregon)",
            "AlarmArn": f"arn:aws:cloudwatch:us-west-2:123456789012:alarm:{name}",
            "OldStateValue": "OK" if state == "ALARM" else "ALARM",
            "Trigger": {
                "MetricName": "HTTPCode_Target_5XX_Count",
                "Namespace": "AWS/ApplicationELB",
                "Statistic": "SUM",
                "Dimensions": [{"name": "ServiceName", "value": "checkout"}],
                "Period": 60,
                "EvaluationPeriods": 1,
                "ComparisonOperator": "GreaterThanThreshold",
                "Threshold": 5.0,
            },
        }
    )


@dataclass
class LoopbackServer:
    """A real HTTP server on loopback: ``/cert.pem`` and ``/confirm``, every request logged."""

    certificate_pem: bytes
    base_url: str = ""
    requests: list[tuple[str, str]] = field(default_factory=list)  # (method, path)

    @property
    def url_pattern(self) -> str:
        """A ``CLARION_SNS_CERT_URL_PATTERN`` that allows this server only."""
        return "^" + self.base_url.replace(".", r"\.") + "/"

    def url(self, path: str) -> str:
        return f"{self.base_url}{path}"

    def seen(self, path: str) -> list[str]:
        """The methods of the requests for ``path``, in order."""
        return [method for method, seen_path in self.requests if seen_path == path]

    def app(self) -> ASGIApp:
        async def certificate(_: Request) -> Response:
            return Response(self.certificate_pem, media_type="application/x-pem-file")

        async def confirm(_: Request) -> Response:
            return Response("<ConfirmSubscriptionResponse/>", media_type="text/xml")

        inner = Starlette(routes=[Route("/cert.pem", certificate), Route("/confirm", confirm)])

        async def recording(scope: Scope, receive: Receive, send: Send) -> None:
            if scope["type"] == "http":
                self.requests.append((scope["method"], scope["path"]))
            await inner(scope, receive, send)

        return recording


@contextmanager
def loopback_server(certificate_pem: bytes) -> Iterator[LoopbackServer]:
    """A :class:`LoopbackServer` running in a thread until the block ends."""
    server_state = LoopbackServer(certificate_pem)
    with serving_in_thread(server_state.app()) as base_url:
        server_state.base_url = base_url
        yield server_state
