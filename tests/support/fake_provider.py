"""A real local HTTP server that stands in for a provider (Twilio, Mastodon, Slack, ...).

Tests script its answers per route and read back what it received:

    with FakeProvider() as provider:
        provider.answer("POST", "/api/v1/statuses", 200, json={"id": "1"})
        provider.answer_next("POST", "/api/v1/statuses", 429, headers={"Retry-After": "7"})
        ...  # point the driver at provider.url
        request = provider.wait_for_requests(1)[0]

Answers queued with :meth:`answer_next` are used once each, in order, before the
route's standing :meth:`answer`. A route with neither answers 404 with a JSON error.
A ``hold`` event makes a route wait before answering (a slow provider), without
any sleep in the test: the test sets the event when it wants the answer to go.
"""

from __future__ import annotations

import asyncio
import json as jsonlib
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any
from urllib.parse import parse_qsl

from starlette.requests import Request
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from tests.support.asgi import serving_in_thread


@dataclass(frozen=True)
class Received:
    """One request as the provider saw it."""

    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]  # lower-cased names
    body: bytes

    def json(self) -> Any:
        return jsonlib.loads(self.body)

    def form(self) -> dict[str, str]:
        return dict(parse_qsl(self.body.decode(), keep_blank_values=True))

    def form_list(self) -> list[tuple[str, str]]:
        return parse_qsl(self.body.decode(), keep_blank_values=True)


@dataclass
class Answer:
    status: int = 200
    json: Any = None
    body: bytes | str | None = None
    headers: dict[str, str] = field(default_factory=dict)
    hold: threading.Event | None = None  # answer only once this is set
    respond: Callable[[Received], Answer] | None = None  # compute the answer from the request

    def response(self) -> Response:
        headers = dict(self.headers)
        if self.json is not None:
            content: bytes | str = jsonlib.dumps(self.json)
            headers.setdefault("content-type", "application/json")
        else:
            content = self.body or b""
        return Response(content=content, status_code=self.status, headers=headers)


class FakeProvider:
    """A scripted HTTP server on 127.0.0.1; ``url`` is its base URL while open."""

    def __init__(self) -> None:
        self.received: list[Received] = []
        self._standing: dict[tuple[str, str], Answer] = {}
        self._queued: dict[tuple[str, str], list[Answer]] = {}
        self._changed = threading.Condition()
        self._serving: Any = None
        self.url = ""

    # Scripting

    def answer(self, method: str, path: str, status: int = 200, **options: Any) -> None:
        """Answer every ``method path`` request like this (after any queued answers)."""
        with self._changed:
            self._standing[(method.upper(), path)] = Answer(status=status, **options)

    def answer_next(self, method: str, path: str, status: int = 200, **options: Any) -> None:
        """Answer the next ``method path`` request like this, once."""
        with self._changed:
            self._queued.setdefault((method.upper(), path), []).append(
                Answer(status=status, **options)
            )

    # Reading back

    def requests_to(self, method: str, path: str) -> list[Received]:
        with self._changed:
            return [r for r in self.received if r.method == method.upper() and r.path == path]

    def wait_for_requests(
        self,
        count: int,
        predicate: Callable[[Received], bool] = lambda _: True,
        timeout: float = 10.0,
    ) -> list[Received]:
        """Block until ``count`` matching requests arrived; fail after ``timeout``."""
        with self._changed:
            if not self._changed.wait_for(
                lambda: len([r for r in self.received if predicate(r)]) >= count, timeout
            ):
                seen = [(r.method, r.path) for r in self.received]
                raise AssertionError(f"expected {count} requests in {timeout}s; got {seen}")
            return [r for r in self.received if predicate(r)]

    # Serving

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        request = Request(scope, receive)
        received = Received(
            method=request.method,
            path=request.url.path,
            query=dict(request.query_params),
            headers={k.lower(): v for k, v in request.headers.items()},
            body=await request.body(),
        )
        with self._changed:
            self.received.append(received)
            self._changed.notify_all()
            key = (received.method, received.path)
            queue = self._queued.get(key)
            answer = queue.pop(0) if queue else self._standing.get(key)
        if answer is None:
            answer = Answer(404, json={"error": f"no route {key[0]} {key[1]}"})
        if answer.respond is not None:
            answer = answer.respond(received)
        if answer.hold is not None:
            await asyncio.to_thread(answer.hold.wait, 30)
        await answer.response()(scope, receive, send)

    def __enter__(self) -> FakeProvider:
        self._serving = serving_in_thread(self)
        self.url = self._serving.__enter__()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        with self._changed:  # release anything held so the server can stop
            queued = [answer for answers in self._queued.values() for answer in answers]
            for answer in [*self._standing.values(), *queued]:
                if answer.hold is not None:
                    answer.hold.set()
        self._serving.__exit__(exc_type, exc, tb)
