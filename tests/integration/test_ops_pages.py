"""The ops pages through the real dispatcher app (lifespan and consumers on a real Valkey):
who gets in, sessions and CSRF, and what each page shows of what Redis holds."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from html.parser import HTMLParser
from typing import Any, Final

import httpx
import pytest
from fastapi import FastAPI
from redis.asyncio import Redis

from services.dispatcher.app import create_app
from services.dispatcher.delivery_log import DeliveryLog
from services.dispatcher.ops_auth import SESSION_COOKIE
from services.dispatcher.outbox import OutboxMessage, queue_message
from shared.clock import ManualClock
from shared.contracts import (
    DeadLetter,
    DeliveryJob,
    DeliveryRecorded,
    DeliveryStatus,
    IncidentStatus,
    Severity,
    TimelineEntry,
    UpdateAuthor,
)
from shared.redis_values import DATA_FIELD, as_text, data_entries
from shared.settings import Settings
from shared.streams import DEAD_LETTERS, REPLAYED_DEAD_LETTERS
from tests.support.builders import make_incident, store_incident
from tests.support.plans import make_plan

pytestmark = pytest.mark.integration

NOW: Final = datetime(2026, 11, 23, 14, 30, tzinfo=UTC)
TOKEN: Final = "ops-pages-token-8c1f"
BEARER: Final = {"Authorization": f"Bearer {TOKEN}"}
REMOTE: Final = "203.0.113.9"
REPLAY_TARGET: Final = "clarion:test:replay-target"
PAGES: Final = [
    "/ops",
    "/ops/deliveries",
    "/ops/dead-letters",
    "/ops/outbox",
    "/ops/incidents/inc-1",
]
PLAN = make_plan(
    audiences={
        "customers": {"public": True, "email": ["alice@example.com"], "status_page": True},
        "team": {"email": ["oncall@example.com"], "sms": ["+15551234567"]},
    },
    routes=[{"name": "everyone", "audiences": ["customers", "team"]}],
)


# The app, clients, and reading pages


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock(NOW)


@asynccontextmanager
async def dispatcher(settings: Settings, clock: ManualClock) -> AsyncIterator[FastAPI]:
    app = create_app(settings, clock, plan=PLAN)
    async with app.router.lifespan_context(app):
        yield app


def client_of(
    app: FastAPI, *, host: str = "127.0.0.1", base_url: str = "http://dispatcher"
) -> httpx.AsyncClient:
    """A client of ``app`` whose requests come from ``host``."""
    transport = httpx.ASGITransport(app=app, client=(host, 40123))
    return httpx.AsyncClient(transport=transport, base_url=base_url)


@pytest.fixture
async def app(
    redis: Redis, make_settings: Callable[..., Settings], clock: ManualClock
) -> AsyncIterator[FastAPI]:
    async with dispatcher(make_settings(ops_token=TOKEN, smtp_host=None), clock) as running:
        yield running


@pytest.fixture
async def http(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    async with client_of(app) as client:
        yield client


async def sign_in(http: httpx.AsyncClient, next_path: str = "/ops") -> httpx.Response:
    response = await http.post("/ops/login", data={"token": TOKEN, "next": next_path})
    assert response.status_code == 303, response.text
    return response


def csrf_of(page: httpx.Response) -> str:
    match = re.search(r'name="csrf_token" value="([^"]+)"', page.text)
    assert match, "the page has no form with a CSRF token"
    return match[1]


def set_cookie(response: httpx.Response, name: str) -> str:
    headers = [h for h in response.headers.get_list("set-cookie") if h.startswith(f"{name}=")]
    assert len(headers) == 1, response.headers.get_list("set-cookie")
    return headers[0]


def flash_of(page: httpx.Response) -> str | None:
    match = re.search(
        r'<p class="banner tone-(\w+)" id="flash" role="status">([^<]*)</p>', page.text
    )
    return f"{match[1]}: {match[2]}" if match else None


@dataclass
class Row:
    attrs: dict[str, str]
    group: dict[str, str]
    cells: list[str] = field(default_factory=list)


class TableRows(HTMLParser):
    """Every ``<tr>`` of a page: its attributes, its ``<tbody>``'s, and its cells' text."""

    def __init__(self, html: str) -> None:
        super().__init__()
        self.rows: list[Row] = []
        self._group: dict[str, str] = {}
        self._row: Row | None = None
        self._cell: list[str] | None = None
        self.feed(html)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        values = {k: v or "" for k, v in attrs}
        if tag == "tbody":
            self._group = values
        elif tag == "tr":
            self._row = Row(values, self._group)
        elif tag in {"td", "th"} and self._row is not None:
            self._cell = []

    def handle_endtag(self, tag: str) -> None:
        if tag in {"td", "th"} and self._row is not None and self._cell is not None:
            self._row.cells.append(" ".join("".join(self._cell).split()))
            self._cell = None
        elif tag == "tr" and self._row is not None:
            self.rows.append(self._row)
            self._row = None
        elif tag == "tbody":
            self._group = {}

    def handle_data(self, data: str) -> None:
        if self._cell is not None:
            self._cell.append(data)


def rows_of(page: httpx.Response, css_class: str) -> list[Row]:
    return [r for r in TableRows(page.text).rows if css_class in r.attrs.get("class", "").split()]


# What Redis holds


def record(n: int, **overrides: Any) -> DeliveryRecorded:
    at = NOW + timedelta(seconds=n)
    values: dict[str, Any] = {
        "delivery_id": f"d-{n}",
        "incident_id": "inc-1",
        "event_id": "inc-1:1:incident.opened",
        "channel": "email",
        "recipient": "alice@example.com",
        "status": DeliveryStatus.SENT,
        "attempt": 1,
        "audience": "customers",
        "started_at": at,
        "recorded_at": at,
    }
    return DeliveryRecorded.model_validate(values | overrides)


async def record_all(redis: Redis, *records: DeliveryRecorded) -> None:
    log = DeliveryLog(redis)
    for each in records:
        await log.record(each)


async def add_dead_message(redis: Redis, payload: str) -> str:
    letter = DeadLetter(
        kind="message",
        stream=REPLAY_TARGET,
        group="dispatcher",
        entry_id="1-0",
        delivery_count=5,
        reason="no consumer could process it",
        error="ValueError: scripted by the test",
        payload=payload,
        dead_at=NOW,
    )
    return as_text(await redis.xadd(DEAD_LETTERS, {DATA_FIELD: letter.model_dump_json()}))


async def replayed_payloads(redis: Redis) -> list[str]:
    return [as_text(payload) for _, payload in data_entries(await redis.xrange(REPLAY_TARGET))]


# Who gets in


@pytest.mark.parametrize("path", PAGES)
async def test_every_page_answers_401_with_the_login_form_without_a_token(
    http: httpx.AsyncClient, path: str
) -> None:
    response = await http.get(path)

    assert response.status_code == 401
    assert response.headers["www-authenticate"].startswith("Bearer")
    assert response.headers["cache-control"] == "no-store"
    assert '<meta name="robots" content="noindex, nofollow">' in response.text
    assert '<label for="ops-token">Ops token</label>' in response.text
    assert '<input id="ops-token" name="token" type="password"' in response.text
    assert '<button type="submit">Sign in</button>' in response.text
    assert f'<input type="hidden" name="next" value="{path}">' in response.text
    assert 'aria-label="Ops pages"' not in response.text  # no nav before signing in


async def test_a_wrong_token_answers_401_again_with_an_error(http: httpx.AsyncClient) -> None:
    wrong_bearer = await http.get("/ops", headers={"Authorization": "Bearer not-it"})
    wrong_login = await http.post("/ops/login", data={"token": "not-it", "next": "/ops/outbox"})

    assert wrong_bearer.status_code == 401
    assert 'id="login-error"' in wrong_bearer.text
    assert wrong_login.status_code == 401
    assert wrong_login.headers["www-authenticate"].startswith("Bearer")
    assert "That is not the ops token." in wrong_login.text
    assert '<input type="hidden" name="next" value="/ops/outbox">' in wrong_login.text
    assert "set-cookie" not in wrong_login.headers
    assert (await http.get("/ops")).status_code == 401


async def test_the_login_page_itself_answers_200_with_the_form(http: httpx.AsyncClient) -> None:
    page = await http.get("/ops/login", params={"next": "/ops/outbox?channel=sms"})
    too_long = await http.post("/ops/login", data={"token": "x" * 1001})

    assert page.status_code == 200
    assert page.headers["cache-control"] == "no-store"
    assert '<label for="ops-token">Ops token</label>' in page.text
    assert 'name="next" value="/ops/outbox?channel=sms"' in page.text
    assert too_long.status_code == 422
    assert too_long.headers["content-type"].startswith("text/html")
    assert "token" in too_long.text


@pytest.mark.parametrize("path", PAGES)
async def test_the_bearer_token_opens_every_page(http: httpx.AsyncClient, path: str) -> None:
    response = await http.get(path, headers=BEARER)

    assert response.status_code == (404 if path.startswith("/ops/incidents/") else 200)
    assert response.headers["content-type"].startswith("text/html")
    assert response.headers["cache-control"] == "no-store"
    assert response.headers["x-robots-tag"] == "noindex, nofollow"
    assert "frame-ancestors 'none'" in response.headers["content-security-policy"]
    assert '<meta name="robots" content="noindex, nofollow">' in response.text
    assert '<nav class="site" aria-label="Ops pages">' in response.text
    assert 'id="logout-form"' not in response.text  # a bearer has no session to end


async def test_signing_in_sets_a_session_cookie_that_is_not_the_token(
    http: httpx.AsyncClient,
) -> None:
    signed_in = await sign_in(http, "/ops/deliveries?status=sent")

    assert signed_in.headers["location"] == "/ops/deliveries?status=sent"
    cookie = set_cookie(signed_in, SESSION_COOKIE)
    attributes = [part.strip().lower() for part in cookie.split(";")]
    assert {"httponly", "samesite=strict", "path=/ops", "max-age=43200"} <= set(attributes)
    assert "secure" not in attributes  # plain http
    value = http.cookies[SESSION_COOKIE]
    assert TOKEN not in value
    assert value != TOKEN

    page = await http.get("/ops/deliveries?status=sent")
    assert page.status_code == 200
    assert 'id="logout-form"' in page.text
    assert (await http.get("/ops/login")).headers["location"] == "/ops"  # signed in already


async def test_over_https_the_session_cookie_is_secure(app: FastAPI) -> None:
    async with client_of(app, base_url="https://dispatcher") as https:
        signed_in = await sign_in(https)

    assert "secure" in [p.strip().lower() for p in set_cookie(signed_in, SESSION_COOKIE).split(";")]


async def test_a_tampered_or_expired_session_is_refused(
    app: FastAPI, http: httpx.AsyncClient, clock: ManualClock
) -> None:
    await sign_in(http)
    value = http.cookies[SESSION_COOKIE]
    issued, _, rest = value.removeprefix("v1.").partition(".")
    tampered = {
        "mac": value[:-1] + ("A" if value[-1] != "A" else "B"),
        "issued": f"v1.{int(issued) + 3600}.{rest}",
        "the token": TOKEN,
    }

    async with client_of(app) as other:
        for what, forged in tampered.items():
            response = await other.get("/ops", headers={"Cookie": f"{SESSION_COOKIE}={forged}"})
            assert response.status_code == 401, what
            assert "Your session has expired" in response.text
            assert "max-age=0" in set_cookie(response, SESSION_COOKIE).lower()  # cleared

    assert (await http.get("/ops")).status_code == 200
    clock.advance(timedelta(hours=12, seconds=1))
    assert (await http.get("/ops")).status_code == 401


@pytest.mark.parametrize(
    ("next_path", "location"),
    [
        ("https://evil.example/ops", "/ops"),
        ("//evil.example/ops", "/ops"),
        ("/\\evil.example/ops", "/ops"),
        ("/status", "/ops"),
        ("/ops/dead-letters", "/ops/dead-letters"),
    ],
)
async def test_signing_in_never_redirects_off_the_ops_pages(
    http: httpx.AsyncClient, next_path: str, location: str
) -> None:
    response = await sign_in(http, next_path)

    assert response.headers["location"] == location


async def test_signing_out_needs_the_csrf_token_and_clears_the_cookie(
    http: httpx.AsyncClient,
) -> None:
    await sign_in(http)
    page = await http.get("/ops")

    refused = await http.post("/ops/logout", data={})
    assert refused.status_code == 403
    assert (await http.get("/ops")).status_code == 200

    out = await http.post("/ops/logout", data={"csrf_token": csrf_of(page)})
    assert out.status_code == 303
    assert out.headers["location"] == "/ops/login"
    assert SESSION_COOKIE not in http.cookies
    assert (await http.get("/ops")).status_code == 401


async def test_the_api_still_takes_only_the_bearer_token(http: httpx.AsyncClient) -> None:
    await sign_in(http)

    assert (await http.get("/v1/deliveries")).status_code == 401
    assert (await http.get("/v1/deliveries", headers=BEARER)).status_code == 200


async def test_without_a_token_only_clients_on_this_host_get_in(
    redis: Redis, make_settings: Callable[..., Settings], clock: ManualClock
) -> None:
    async with (
        dispatcher(make_settings(ops_token=None, smtp_host=None), clock) as app,
        client_of(app) as local,
        client_of(app, host=REMOTE) as remote,
    ):
        entry_id = await add_dead_message(redis, '{"hello": "again"}')
        assert (await local.get("/ops")).status_code == 200
        assert (await local.get("/v1/deliveries")).status_code == 200
        assert (await local.get("/ops/login")).headers["location"] == "/ops"
        for path in ["/ops", "/ops/login", "/ops/outbox"]:
            refused = await remote.get(path)
            assert refused.status_code == 403, path
            assert "CLARION_OPS_TOKEN is not set" in refused.text
        assert (await remote.post("/ops/login", data={"token": "x"})).status_code == 403
        assert (await remote.get("/v1/deliveries")).status_code == 403
        assert (await remote.get("/v1/dead-letters")).status_code == 403

        # Forms still need their CSRF token: another site's page could post to localhost.
        replay = f"/ops/dead-letters/{entry_id}/replay"
        assert (await local.post(replay, data={})).status_code == 403
        page = await local.get("/ops/dead-letters")
        replayed = await local.post(replay, data={"csrf_token": csrf_of(page)})
        assert replayed.status_code == 303
    assert await replayed_payloads(redis) == ['{"hello": "again"}']


# Dead letters


async def test_replay_needs_the_csrf_token_of_this_session(
    app: FastAPI, http: httpx.AsyncClient, redis: Redis
) -> None:
    entry_id = await add_dead_message(redis, '{"n": 1}')
    await sign_in(http)
    async with client_of(app) as someone_else:
        await sign_in(someone_else)
        their_token = csrf_of(await someone_else.get("/ops/dead-letters"))
    replay = f"/ops/dead-letters/{entry_id}/replay"

    for data in [{}, {"csrf_token": "forged"}, {"csrf_token": their_token}]:
        response = await http.post(replay, data=data)
        assert response.status_code == 403, data
        assert "CSRF" in response.text
    assert (await http.post("/ops/dead-letters/replay-all", data={})).status_code == 403

    assert await replayed_payloads(redis) == []
    assert await redis.hlen(REPLAYED_DEAD_LETTERS) == 0


async def test_replay_sends_a_dead_letter_again_and_says_so(
    http: httpx.AsyncClient, redis: Redis
) -> None:
    entry_id = await add_dead_message(redis, '{"n": 1}')
    await sign_in(http)
    page = await http.get("/ops/dead-letters")
    [row] = rows_of(page, "dead-letter")
    assert row.cells[1] == f"a message on {REPLAY_TARGET}"
    assert 'id="replay-all-form"' in page.text

    replayed = await http.post(
        f"/ops/dead-letters/{entry_id}/replay", data={"csrf_token": csrf_of(page)}
    )

    assert replayed.status_code == 303
    assert replayed.headers["location"] == "/ops/dead-letters"
    assert await replayed_payloads(redis) == ['{"n": 1}']
    after = await http.get("/ops/dead-letters")
    assert (
        flash_of(after) == f"ok: Replayed dead letter {entry_id}: added to {REPLAY_TARGET} again."
    )
    [row] = rows_of(after, "dead-letter")
    assert "replayed" in row.attrs["class"].split()
    assert row.cells[-1].startswith("Replayed")
    assert flash_of(await http.get("/ops/dead-letters")) is None  # shown once

    again = await http.post(
        f"/ops/dead-letters/{entry_id}/replay", data={"csrf_token": csrf_of(page)}
    )
    assert again.status_code == 303
    assert "was not replayed: replayed before" in (
        flash_of(await http.get("/ops/dead-letters")) or ""
    )
    assert await replayed_payloads(redis) == ['{"n": 1}']  # never twice


async def test_replay_all_replays_every_dead_letter_not_replayed_yet(
    http: httpx.AsyncClient, redis: Redis
) -> None:
    await add_dead_message(redis, '{"n": 1}')
    await add_dead_message(redis, '{"n": 2}')
    job = DeliveryJob(
        delivery_id="d-dead",
        event_id="inc-1:1:incident.opened",
        event_type="incident.opened",
        incident_id="inc-1",
        channel="sms",
        recipient="+15551234567",
        audience="team",
        occurred_at=NOW,
        attempt=3,
        last_attempt=3,
    )
    letter = DeadLetter(
        kind="delivery",
        stream="clarion:deliveries:sms",
        group="dispatcher",
        reason="retries exhausted",
        error="HTTP 503",
        payload=job.model_dump_json(),
        dead_at=NOW,
        delivery_id="d-dead",
        incident_id="inc-1",
        channel="sms",
        attempt=3,
    )
    await redis.xadd(DEAD_LETTERS, {DATA_FIELD: letter.model_dump_json()})
    await sign_in(http)
    page = await http.get("/ops/dead-letters")
    assert "+15551234567" not in page.text
    assert "sms to +*******4567 (team), attempt 3" in page.text

    response = await http.post("/ops/dead-letters/replay-all", data={"csrf_token": csrf_of(page)})

    assert response.status_code == 303
    # The delivery is not in the "dead" state (nothing here sent it), so it is not sent.
    assert flash_of(await http.get("/ops/dead-letters")) == (
        "minor: Replayed 2 of 3 dead letters (1 not dead)."
    )
    assert sorted(await replayed_payloads(redis)) == ['{"n": 1}', '{"n": 2}']


# The delivery log


async def test_filters_narrow_the_deliveries_page(http: httpx.AsyncClient, redis: Redis) -> None:
    await record_all(
        redis,
        record(1),
        record(2, channel="sms", recipient="+15551234567", audience="team",
               status=DeliveryStatus.FAILED, error="invalid number"),
        record(3, incident_id="inc-2", recipient="oncall@example.com", audience="team"),
        record(4, incident_id="inc-2", channel="status_page", recipient="status-page"),
        record(5, status=DeliveryStatus.RETRYING, error="SMTP 451"),
    )  # fmt: skip
    await sign_in(http)

    async def ids(**params: str) -> list[str]:
        page = await http.get("/ops/deliveries", params=params)
        assert page.status_code == 200
        assert "alice@example.com" not in page.text
        assert "+15551234567" not in page.text
        return [row.cells[0] for row in rows_of(page, "delivery")]

    def at(*seconds: int) -> list[str]:
        return [f"2026-11-23 14:30:{s:02d} UTC" for s in seconds]

    assert await ids() == at(5, 4, 3, 2, 1)
    assert await ids(incident_id="inc-2") == at(4, 3)
    assert await ids(channel="sms") == at(2)
    assert await ids(status="sent") == at(4, 3, 1)
    assert await ids(audience="team") == at(3, 2)
    assert await ids(since="2026-11-23T14:30:03") == at(5, 4, 3)
    assert await ids(until="2026-11-23T14:30:03") == at(2, 1)
    assert await ids(incident_id="inc-1", channel="email", status="retrying") == at(5)

    page = await http.get("/ops/deliveries", params={"channel": "sms"})
    [row] = rows_of(page, "delivery")
    assert row.cells[1:] == [
        "inc-1", "Opened (revision 1)", "team", "sms", "+*******4567", "failed", "1",
        "invalid number",
    ]  # fmt: skip
    assert '<option value="sms" selected>sms</option>' in page.text

    invalid = await http.get("/ops/deliveries", params={"since": "yesterday"})
    assert invalid.status_code == 400
    assert 'id="filter-error"' in invalid.text


async def test_the_deliveries_page_is_paged_with_the_log_cursors(
    http: httpx.AsyncClient, redis: Redis
) -> None:
    await record_all(redis, *(record(n) for n in range(1, 6)))
    await sign_in(http)
    seen: list[str] = []
    url: str | None = "/ops/deliveries?limit=2&channel=email"

    while url is not None:
        page = await http.get(url)
        seen += [row.cells[0] for row in rows_of(page, "delivery")]
        match = re.search(r'<a href="([^"]+)" id="older-page"', page.text)
        url = match[1].replace("&amp;", "&") if match else None
        assert len(seen) <= 5

    assert seen == [f"2026-11-23 14:30:0{s} UTC" for s in (5, 4, 3, 2, 1)]


# One incident


async def test_the_incident_page_shows_each_update_and_who_heard_what(
    http: httpx.AsyncClient, redis: Redis
) -> None:
    incident = make_incident(
        id="inc-1",
        opened_at=NOW,
        timeline=(
            TimelineEntry(at=NOW, status=IncidentStatus.INVESTIGATING, message="We are on it."),
            TimelineEntry(
                at=NOW + timedelta(minutes=20),
                status=IncidentStatus.IDENTIFIED,
                message="A bad deploy; rolling back.",
                author=UpdateAuthor.OPERATOR,
            ),
        ),
    )
    await store_incident(redis, incident)
    opened, updated = "inc-1:1:incident.opened", "inc-1:2:incident.updated"
    await record_all(
        redis,
        record(1, delivery_id="alice-1"),
        record(2, delivery_id="page-1", channel="status_page", recipient="status-page"),
        record(3, delivery_id="sms-1", channel="sms", recipient="+15551234567", audience="team",
               status=DeliveryStatus.RETRYING, error="HTTP 503"),
        record(60, delivery_id="sms-1", channel="sms", recipient="+15551234567", audience="team",
               attempt=2),
        record(1200, delivery_id="alice-2", event_id=updated),
        record(1201, delivery_id="oncall-2", event_id=updated, recipient="oncall@example.com",
               audience="team", status=DeliveryStatus.FAILED, error="mailbox unavailable"),
        record(1202, delivery_id="other", incident_id="inc-2"),
    )  # fmt: skip
    await sign_in(http)

    page = await http.get("/ops/incidents/inc-1")

    assert page.status_code == 200
    assert "We are on it." in page.text
    assert "A bad deploy; rolling back." in page.text
    heard = [
        (row.group["data-audience"], row.group["data-channel"], *row.cells[:3])
        for row in rows_of(page, "heard")
    ]
    assert heard == [
        ("customers", "email", "a***@example.com", "sent", "1"),
        ("customers", "status_page", "status-page", "sent", "1"),
        ("team", "sms", "+*******4567", "sent", "2"),  # the latest status of that delivery
        ("customers", "email", "a***@example.com", "sent", "1"),
        ("team", "email", "o***@example.com", "failed", "1"),
    ]
    first, second = page.text.index(opened), page.text.index(updated)
    assert first < second
    assert "Opened (revision 1)" in page.text
    assert "Updated (revision 2)" in page.text
    assert "mailbox unavailable" in page.text
    assert "oncall@example.com" not in page.text

    missing = await http.get("/ops/incidents/inc-404")
    assert missing.status_code == 404
    assert "There is no incident inc-404." in missing.text


# The overview


async def test_the_overview_highlights_audiences_overdue_for_an_update(
    http: httpx.AsyncClient, redis: Redis
) -> None:
    late = make_incident(id="inc-late", severity=Severity.ERROR, opened_at=NOW - timedelta(hours=3))
    await store_incident(redis, late)
    await store_incident(redis, make_incident(id="inc-fresh", opened_at=NOW - timedelta(minutes=1)))
    await record_all(
        redis,
        record(-5400, incident_id="inc-late"),  # customers: 90 minutes ago, hourly updates
        record(-600, incident_id="inc-late", recipient="oncall@example.com", audience="team"),
    )
    await sign_in(http)

    page = await http.get("/ops")

    assert page.status_code == 200
    assert "1 audience overdue for an update." in page.text
    rows = {
        (row.attrs["data-incident"], row.attrs["data-audience"]): (
            "overdue" in row.attrs["class"].split(),
            row.cells[-1],
        )
        for row in rows_of(page, "audience")
    }
    assert rows == {
        ("inc-late", "customers"): (True, "! Overdue by about 30 minutes"),
        ("inc-late", "team"): (False, "On schedule"),
        # Opened a minute ago and nothing sent yet: still within the grace.
        ("inc-fresh", "customers"): (False, "On schedule"),
        ("inc-fresh", "team"): (False, "On schedule"),
    }
    assert (
        'class="status tone-critical"><span class="icon" aria-hidden="true">!</span>' in page.text
    )


# The outbox


async def test_the_outbox_page_shows_queued_messages_masked_and_filtered(
    http: httpx.AsyncClient, redis: Redis
) -> None:
    for channel, to, subject in [
        ("email", "alice@example.com", "Investigating: a partial outage"),
        ("sms", "+15551234567", ""),
    ]:
        await queue_message(
            redis,
            OutboxMessage(
                channel=channel,
                to=to,
                subject=subject,
                text=f"Checkout is failing ({channel}).",
                message_id=f"m-{channel}",
                queued_at=NOW,
                incident_id="inc-1",
            ),
        )
    await sign_in(http)

    everything = await http.get("/ops/outbox")
    sms_only = await http.get("/ops/outbox", params={"channel": "sms"})

    assert "Investigating: a partial outage" in everything.text
    assert "Checkout is failing (email)." in everything.text
    assert "Checkout is failing (sms)." in everything.text
    assert "a***@example.com" in everything.text
    assert "alice@example.com" not in everything.text
    assert "+15551234567" not in everything.text
    assert "Checkout is failing (sms)." in sms_only.text
    assert "Checkout is failing (email)." not in sms_only.text
    assert '<option value="sms" selected>sms</option>' in sms_only.text
