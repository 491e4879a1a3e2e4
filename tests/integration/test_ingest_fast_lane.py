"""Webhook POSTs skip FastAPI's routing, and are answered as FastAPI would answer them."""

from __future__ import annotations

from collections.abc import Callable
from typing import cast

import httpx
import pytest
from fastapi import APIRouter
from redis.asyncio import Redis
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from services.ingest.app import create_app
from services.ingest.fast_lane import IngestApp
from services.ingest.state import State
from shared.errors import BodyTooLarge
from shared.http_errors import install_error_handlers
from shared.settings import Settings
from tests.conftest import load_fixture
from tests.support.asgi import running

pytestmark = pytest.mark.integration

URL = "/v1/alerts/alertmanager"


class Boom(Exception):
    """An error no handler takes."""


def direct_app() -> tuple[IngestApp, list[str]]:
    """An app whose POST /hook is served directly, with a FastAPI route beside it."""
    calls: list[str] = []
    router = APIRouter()

    @router.post("/hook")
    async def hook(request: Request, state: State) -> Response:
        what = request.query_params.get("do", "answer")
        calls.append(what)
        if what == "too-large":
            raise BodyTooLarge("over the limit")
        if what == "boom":
            raise Boom("unexpected")
        return JSONResponse({"state": cast(str, state)}, 202)

    app = IngestApp()
    install_error_handlers(app)
    app.include_router(router)
    app.serve_directly("/hook", hook)
    app.state.ingest = "the state"
    return app, calls


async def post(app: IngestApp, path: str, **kwargs: object) -> httpx.Response:
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        return await client.post(path, **kwargs)  # type: ignore[arg-type]


async def test_a_direct_route_gets_the_request_and_the_state() -> None:
    app, calls = direct_app()

    response = await post(app, "/hook")

    assert (response.status_code, response.json()) == (202, {"state": "the state"})
    assert calls == ["answer"]


async def test_its_errors_are_answered_by_the_apps_handlers() -> None:
    app, _ = direct_app()

    response = await post(app, "/hook?do=too-large")

    assert response.status_code == 413
    assert response.json() == {"error": {"code": "payload_too_large", "message": "over the limit"}}


async def test_an_error_no_handler_takes_reaches_the_server() -> None:
    app, _ = direct_app()
    transport = httpx.ASGITransport(app=app)  # raises what the app raises

    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        with pytest.raises(Boom):
            await client.post("/hook?do=boom")


@pytest.mark.parametrize(("method", "path"), [("GET", "/hook"), ("POST", "/hook/")])
async def test_other_methods_and_paths_are_fastapis(method: str, path: str) -> None:
    app, calls = direct_app()
    transport = httpx.ASGITransport(app=app)

    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        response = await client.request(method, path, follow_redirects=False)

    assert response.status_code in {405, 307}  # FastAPI's own answers
    assert calls == []


async def test_ingests_webhook_routes_are_served_directly(
    redis: Redis, make_settings: Callable[..., Settings]
) -> None:
    app = create_app(make_settings())
    assert isinstance(app, IngestApp)
    assert set(app.direct_routes) == {
        "/v1/alerts/alertmanager",
        "/v1/alerts/grafana",
        "/v1/alerts/datadog",
        "/v1/alerts/generic",
    }

    async with running(app, "http://ingest.test") as client:
        accepted = await client.post(URL, json=load_fixture("alertmanager_webhook_v4_firing.json"))
        malformed = await client.post(
            URL, content=b"{", headers={"content-type": "application/json"}
        )

    assert accepted.status_code == 202
    assert accepted.headers["content-type"] == "application/json"
    answer = accepted.json()
    assert list(answer) == ["status", "incident_id", "incident_ids", "events", "duplicate"]
    assert answer["status"] == "accepted"
    assert answer["incident_ids"] == [answer["incident_id"]]
    assert answer["events"] == ["incident.opened"]
    assert answer["duplicate"] is False
    assert malformed.status_code == 400
    assert malformed.json()["error"]["code"] == "invalid_json"


CASES = {
    "accepted": {"json": load_fixture("alertmanager_webhook_v4_firing.json")},
    "resent": {"json": load_fixture("alertmanager_webhook_v4_firing.json")},
    "not json": {"content": b"{", "headers": {"content-type": "application/json"}},
    "invalid": {"json": {"version": "4", "alerts": []}},
    "too large": {"content": b"x" * 70_000, "headers": {"content-type": "application/json"}},
    "no token": {"json": {}, "headers": {"authorization": "Bearer wrong"}},
}


async def answers(app: IngestApp) -> dict[str, tuple[int, str | None, object]]:
    """Each case's status, content type and body (ids left out)."""
    seen: dict[str, tuple[int, str | None, object]] = {}
    async with running(app, "http://ingest.test") as client:
        for name, kwargs in CASES.items():
            response = await client.post(URL, **kwargs)  # type: ignore[arg-type]
            body = response.json()
            if response.status_code == 202:
                body = {k: v for k, v in body.items() if not k.startswith("incident_id")}
            seen[name] = (response.status_code, response.headers.get("www-authenticate"), body)
    return seen


@pytest.mark.parametrize("token", [None, "s3cret"])
async def test_served_directly_or_by_fastapi_the_answers_are_the_same(
    redis: Redis, make_settings: Callable[..., Settings], token: str | None
) -> None:
    settings = make_settings(ingest_token=token, max_body_bytes=65_536)
    direct = create_app(settings)
    through_fastapi = create_app(settings)
    through_fastapi.direct_routes.clear()

    first = await answers(direct)
    await redis.flushdb()
    second = await answers(through_fastapi)

    assert first == second
    expected = {401, 413} if token else {202, 400, 413, 422}  # the size is checked first
    assert {status for status, _, _ in first.values()} == expected
