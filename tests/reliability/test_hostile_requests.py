"""Scenario: hostile requests to ingest get the 4xx its code documents, never a 5xx.

Ingest runs for real (uvicorn on loopback, a real Valkey). Each case is one request a
hostile or broken sender could make: bodies that are too big (declared, or streamed
without end), nested 100k deep, not UTF-8, with thousands of labels; signatures that
are replayed, restamped or stripped; wrong and misplaced tokens. Bodies over the limit
must be refused *without being read*: an in-process app counts how much of an endless
stream was consumed, and a raw socket shows the answer comes before the body ends.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Final

import httpx
import pytest

from services.ingest.app import create_app
from shared.settings import Settings
from tests.conftest import load_fixture
from tests.reliability.hostile import Tally, deeply_nested, ingest_served
from tests.reliability.scale import report
from tests.support.ingest_requests import (
    JSON,
    basic,
    bearer,
    body_of,
    epoch,
    grafana_headers,
    standard_webhook_headers,
    whsec,
)

pytestmark = pytest.mark.integration

TOKEN: Final = "hostile-ingest-t0ken"
OPS_TOKEN: Final = "hostile-ops-t0ken"
GRAFANA_SECRET: Final = "hostile-grafana-s3cret"
WEBHOOK_SECRET: Final = whsec(b"hostile-standard-webhook-key-32b")
LIMIT: Final = 1024 * 1024  # CLARION_MAX_BODY_BYTES: its default
LEVELS: Final = 100_000

ROUTES: Final = {
    "alertmanager": "/v1/alerts/alertmanager",
    "grafana": "/v1/alerts/grafana",
    "datadog": "/v1/alerts/datadog",
    "generic": "/v1/alerts/generic",
    "pagerduty": "/v2/enqueue",
    "sns": "/v1/alerts/sns",
}
OPERATOR_ROUTES: Final = (
    "/v1/incidents/inc-1/updates",
    "/v1/incidents/inc-1/acknowledge",
    "/v1/incidents/inc-1/resolve",
    "/v1/incidents/inc-1/postmortem",
)
AUTH: Final = bearer(TOKEN)


def hostile_ingest_settings(make_settings: Callable[..., Settings]) -> Settings:
    return make_settings(
        ingest_token=TOKEN,
        ops_token=OPS_TOKEN,
        grafana_hmac_secret=GRAFANA_SECRET,
        generic_webhook_secret=WEBHOOK_SECRET,
        ingest_rate_limit="1000000/second",
    )


@pytest.fixture
def ingest_url(make_settings: Callable[..., Settings]) -> Iterator[str]:
    with ingest_served(hostile_ingest_settings(make_settings)) as url:
        yield url


# --- the table of hostile requests --------------------------------------------------------


@dataclass(frozen=True)
class Case:
    """One request and the answers its documentation allows."""

    name: str
    url: str
    expect: frozenset[int]
    content: bytes = b"{}"
    headers: dict[str, str] = field(default_factory=dict)
    method: str = "POST"
    check: Callable[[httpx.Response], bool] = lambda _: True


def case(name: str, url: str, expect: int | set[int], content: bytes = b"{}", **kw: Any) -> Case:
    statuses = frozenset({expect} if isinstance(expect, int) else expect)
    return Case(name, url, statuses, content, **kw)


def alertmanager_body(**changes: Any) -> dict[str, Any]:
    return {**load_fixture("alertmanager_webhook_v4_firing_single.json"), **changes}


def with_labels(count: int) -> bytes:
    body = alertmanager_body()
    body["alerts"][0]["labels"] = {f"label_{n:06d}": f"value-{n}" for n in range(count)}
    return body_of(body)


def many_alerts(count: int) -> bytes:
    body = alertmanager_body()
    body["alerts"] = [
        {**body["alerts"][0], "fingerprint": f"fp{n:05d}", "labels": {"n": str(n)}}
        for n in range(count)
    ]
    return body_of(body)


def generic_with_labels(count: int) -> bytes:
    labels = {f"l{n}": "v" for n in range(count)}
    return body_of({"version": "1", "alerts": [{"title": "Disk full", "labels": labels}]})


def duplicate(response: httpx.Response) -> bool:
    return response.status_code == 202 and response.json()["duplicate"] is True


def names_field(field_name: str) -> Callable[[httpx.Response], bool]:
    def check(response: httpx.Response) -> bool:
        fields = response.json()["error"].get("fields") or []
        return field_name in [f["field"] for f in fields]

    return check


def body_cases() -> list[Case]:
    """Bodies that are not what they claim to be, on every webhook route."""
    cases: list[Case] = []
    for source, url in ROUTES.items():
        cases += [
            case(
                f"{source}: {LEVELS} nested arrays", url, 400, deeply_nested(LEVELS), headers=AUTH
            ),
            case(
                f"{source}: {LEVELS} nested objects",
                url,
                400,
                deeply_nested(LEVELS, as_object=True),
                headers=AUTH,
            ),
            case(f"{source}: not UTF-8", url, 400, b'{"version": "\xff\xfe\xc3("}', headers=AUTH),
            case(f"{source}: empty", url, 400, b"", headers=AUTH),
            case(
                f"{source}: a 5000-digit number",
                url,
                400,
                b'{"n": ' + b"9" * 5000 + b"}",
                headers=AUTH,
            ),
        ]
    deep_inside = json.dumps(alertmanager_body()).replace(
        '"labels": {', '"deep": ' + "[" * LEVELS + "]" * LEVELS + ', "labels": {', 1
    )
    cases += [
        case(
            "nesting inside a valid body",
            ROUTES["alertmanager"],
            400,
            deep_inside.encode(),
            headers=AUTH,
        ),
        case("a top-level array", ROUTES["generic"], 422, b"[1, 2]", headers=AUTH),
        case("a top-level string", ROUTES["grafana"], 422, b'"alerts"', headers=AUTH),
        case(
            "NaN where a count goes",
            ROUTES["alertmanager"],
            422,
            b'{"truncatedAlerts": NaN}',
            headers=AUTH,
        ),
    ]
    return cases


def size_cases() -> list[Case]:
    """Bodies over the limits, and what the code declares for label and alert counts."""
    alerts_url, generic_url = ROUTES["alertmanager"], ROUTES["generic"]
    return [
        # Alertmanager declares no label limit: the body limit bounds them (accepted below it).
        case("5000 labels, under the body limit", alerts_url, 202, with_labels(5000), headers=AUTH),
        case(
            "60000 labels, over the body limit", alerts_url, 413, with_labels(60000), headers=AUTH
        ),
        # The generic format declares at most 64 labels (docs/sources/generic.md).
        case(
            "65 labels on a generic alert",
            generic_url,
            422,
            generic_with_labels(65),
            headers=AUTH,
            check=names_field("alerts.0.labels"),
        ),
        case(
            "1001 alerts (CLARION_MAX_ALERTS_PER_REQUEST is 1000)",
            alerts_url,
            413,
            many_alerts(1001),
            headers=AUTH,
            check=lambda r: "CLARION_MAX_ALERTS_PER_REQUEST" in r.text,
        ),
        case("a body one byte over", alerts_url, 413, b" " * (LIMIT + 1), headers=AUTH),
    ]


def credential_cases(now: datetime) -> list[Case]:
    """Missing, wrong, misplaced, replayed and restamped credentials."""
    am, grafana, generic = ROUTES["alertmanager"], ROUTES["grafana"], ROUTES["generic"]
    body = body_of(alertmanager_body())
    g_body = body_of(load_fixture("grafana_webhook_v1_firing.json"))
    w_body = body_of(load_fixture("generic_alert_v1_firing.json"))
    hour_ago, hour_ahead = epoch(now - timedelta(hours=1)), epoch(now + timedelta(hours=1))
    signed_now = grafana_headers(GRAFANA_SECRET, g_body, epoch(now))
    stripped = {k: v for k, v in signed_now.items() if not k.endswith("Timestamp")}
    webhook_now = standard_webhook_headers(WEBHOOK_SECRET, w_body, epoch(now), msg_id="msg_1")
    return [
        case("no credentials", am, 401, body, headers=JSON),
        case("a wrong bearer token", am, 401, body, headers=bearer("not-" + TOKEN)),
        case("a bearer without a token", am, 401, body, headers={"Authorization": "Bearer"}),
        case("the token without a scheme", am, 401, body, headers={"Authorization": TOKEN}),
        case("the token as a basic password", am, 401, body, headers=basic("clarion", TOKEN)),
        case("malformed basic credentials", am, 401, body, headers={"Authorization": "Basic %%"}),
        case("the ops token on a webhook", am, 401, body, headers=bearer(OPS_TOKEN)),
        case(
            "a 12 kB authorization header",
            am,
            {400, 401, 431},
            body,
            headers={"Authorization": "Bearer " + "A" * 12_000},
        ),
        case(
            "the ingest token on the operator API", "/v1/incidents", 401, method="GET", headers=AUTH
        ),
        case("no token on the operator API", "/v1/incidents", 401, method="GET"),
        case("no token on the rejections", "/v1/rejections", 401, method="GET"),
        case(
            "an operator update without a token",
            OPERATOR_ROUTES[0],
            401,
            b'{"message": "all fine"}',
            headers=JSON,
        ),
        case(
            "grafana, signed an hour ago",
            grafana,
            401,
            g_body,
            headers=grafana_headers(GRAFANA_SECRET, g_body, hour_ago),
        ),
        case(
            "grafana, signed for an hour from now",
            grafana,
            401,
            g_body,
            headers=grafana_headers(GRAFANA_SECRET, g_body, hour_ahead),
        ),
        case(
            "grafana, restamped after signing",
            grafana,
            401,
            g_body,
            headers={**signed_now, "X-Grafana-Alerting-Signature-Timestamp": str(hour_ahead)},
        ),
        case("grafana, timestamp header stripped", grafana, 401, g_body, headers=stripped),
        case(
            "grafana, a text timestamp",
            grafana,
            401,
            g_body,
            headers={**signed_now, "X-Grafana-Alerting-Signature-Timestamp": "yesterday"},
        ),
        case(
            "standard webhook, signed an hour ago",
            generic,
            401,
            w_body,
            headers=standard_webhook_headers(WEBHOOK_SECRET, w_body, hour_ago),
        ),
        case(
            "standard webhook, signed for an hour from now",
            generic,
            401,
            w_body,
            headers=standard_webhook_headers(WEBHOOK_SECRET, w_body, hour_ahead),
        ),
        case(
            "standard webhook, the signature of another message id",
            generic,
            401,
            w_body,
            headers={**webhook_now, "webhook-id": "msg_2"},
        ),
        case(
            "standard webhook, no webhook-id",
            generic,
            401,
            w_body,
            headers={k: v for k, v in webhook_now.items() if k != "webhook-id"},
        ),
        case("standard webhook, signed now", generic, 202, w_body, headers=webhook_now),
        case(
            "standard webhook, replayed within the window: changes nothing",
            generic,
            202,
            w_body,
            headers=webhook_now,
            check=duplicate,
        ),
    ]


def other_cases() -> list[Case]:
    ops = {"Authorization": f"Bearer {OPS_TOKEN}"}
    return [
        case("GET on a webhook", ROUTES["alertmanager"], 405, method="GET", headers=AUTH),
        case(
            "a path-traversing incident id",
            "/v1/incidents/..%2F..%2Fetc",
            404,
            method="GET",
            headers=ops,
        ),
        case(
            "a 10 kB incident id", "/v1/incidents/" + "i" * 10_000, 404, method="GET", headers=ops
        ),
        case("a negative limit", "/v1/incidents?limit=-1", 422, method="GET", headers=ops),
        case("a 40-digit limit", "/v1/incidents?limit=" + "9" * 40, 422, method="GET", headers=ops),
        case("an update that is not JSON", OPERATOR_ROUTES[0], {400, 422}, b"{no", headers=ops),
        case(
            "an update of an unknown incident",
            OPERATOR_ROUTES[0],
            404,
            b'{"message": "x"}',
            headers=ops,
        ),
    ]


async def send(client: httpx.AsyncClient, hostile: Case) -> httpx.Response:
    headers = hostile.headers
    if hostile.method == "POST":
        headers = {"Content-Type": "application/json", **headers}
    return await client.request(
        hostile.method, hostile.url, content=hostile.content or None, headers=headers
    )


async def test_hostile_requests_get_the_documented_4xx_and_never_a_5xx(ingest_url: str) -> None:
    now = datetime.now(UTC)
    cases = [*credential_cases(now), *body_cases(), *size_cases(), *other_cases()]
    tally = Tally()

    async with httpx.AsyncClient(base_url=ingest_url, timeout=60.0) as client:
        for hostile in cases:
            try:
                response = await send(client, hostile)
            except httpx.TransportError as exc:
                tally.bad(f"{hostile.name}: {type(exc).__name__}")
                continue
            if response.status_code in hostile.expect and hostile.check(response):
                tally.ok()
            else:
                tally.bad(f"{hostile.name}: {response.status_code} {response.text[:100]}")

    outcome = report(tally.outcome("hostile: requests to ingest"))
    assert outcome.sent == len(cases)
    assert outcome.lost == 0, outcome.notes
    assert len(with_labels(5000)) < LIMIT < len(with_labels(60000))  # the cases mean it


# --- bodies over the limit are not read ---------------------------------------------------

CHUNK: Final = 16 * 1024
CHUNKS: Final = 4 * LIMIT // CHUNK  # four times the limit, if anyone reads it all


@dataclass
class EndlessBody:
    """A request body stream that counts how many of its chunks were taken."""

    taken: int = 0

    async def __aiter__(self) -> AsyncIterator[bytes]:
        for _ in range(CHUNKS):
            self.taken += 1
            yield b" " * CHUNK


def most_read() -> int:
    """Chunks a bounded reader may take: up to the limit, and the one that crosses it."""
    return LIMIT // CHUNK + 1


@pytest.mark.parametrize(
    ("url", "headers"),
    [
        *(pytest.param(url, AUTH, id=source) for source, url in ROUTES.items()),
        *(pytest.param(url, {}, id=url.rsplit("/", 1)[1]) for url in OPERATOR_ROUTES),
    ],
)
async def test_a_stream_past_the_limit_is_refused_before_it_is_read(
    make_settings: Callable[..., Settings], url: str, headers: dict[str, str]
) -> None:
    app = create_app(hostile_ingest_settings(make_settings))
    body = EndlessBody()

    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://ingest") as client:
            response = await client.post(url, content=body, headers=headers)

    handled = response.status_code in (401, 413) and body.taken <= most_read()
    outcome = report(
        Tally(sent=1, mishandled=0 if handled else 1).outcome(
            f"hostile: endless body to {url}",
            f"answered {response.status_code} after {body.taken} of {CHUNKS} chunks",
        )
    )
    assert outcome.lost == 0, outcome.notes


async def answer_while_sending(port: int, head: bytes, parts: list[bytes]) -> bytes:
    """Send ``head`` and ``parts`` over a raw socket, never finishing the body; return the
    status line the server answers with (the server must answer without the rest)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(head)
        for part in parts:
            writer.write(part)
            await writer.drain()
        return await asyncio.wait_for(reader.readline(), timeout=30.0)
    finally:
        writer.close()


@pytest.mark.parametrize("framing", ["content-length", "chunked"])
async def test_the_answer_comes_before_an_oversized_body_ends(
    ingest_url: str, framing: str
) -> None:
    port = int(ingest_url.rsplit(":", 1)[1])
    tally = Tally()
    for source, url in ROUTES.items():
        if framing == "content-length":  # ten gigabytes declared, one chunk sent
            length = b"content-length: 10000000000\r\n"
            parts = [b" " * CHUNK]
        else:  # chunks past the limit, and never the last chunk
            length = b"transfer-encoding: chunked\r\n"
            parts = [b"%x\r\n%s\r\n" % (CHUNK, b" " * CHUNK)] * (most_read() + 1)
        head = (
            b"POST " + url.encode() + b" HTTP/1.1\r\nhost: ingest\r\n"
            b"content-type: application/json\r\n"
            b"authorization: Bearer " + TOKEN.encode() + b"\r\n" + length + b"\r\n"
        )
        status_line = await answer_while_sending(port, head, parts)
        if status_line.startswith(b"HTTP/1.1 413 "):
            tally.ok()
        else:
            tally.bad(f"{source}: {status_line!r}")

    outcome = report(tally.outcome(f"hostile: oversized bodies ({framing}) answered early"))
    assert outcome.lost == 0, outcome.notes
