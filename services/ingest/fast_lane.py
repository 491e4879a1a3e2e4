"""The webhook routes, served without FastAPI's routing and dependency layers.

A webhook POST is ingest's hot path, and FastAPI's middleware stack, route
matching and dependency solving cost more CPU than the rest of a small request.
:class:`IngestApp` is the FastAPI app (every route, /docs, /openapi.json and the
lifespan stay FastAPI's), except that a POST to the exact path of a route
registered with :meth:`IngestApp.serve_directly` calls that route's endpoint
itself, with the same arguments FastAPI would give it (the request, and the
state). The endpoint's answer, and the app's own exception handlers for its
errors, make the response, as they do under FastAPI; an error no handler takes
propagates to the server, which answers 500 and logs it.

Webhook endpoints take nothing FastAPI resolves but the state, and their route
dependencies only declare security schemes for OpenAPI (they check nothing), so
the answers are the same either way.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from fastapi import FastAPI
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from services.ingest.state import IngestState, get_state

Endpoint = Callable[[Request, IngestState], Awaitable[Response]]
"""A webhook endpoint: the request and the state in, a response out."""


class IngestApp(FastAPI):
    """FastAPI, with some POST routes called directly (see the module's doc)."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.direct_routes: dict[str, Endpoint] = {}

    def serve_directly(self, path: str, endpoint: Endpoint) -> None:
        """POSTs to exactly ``path`` go to ``endpoint`` straight away."""
        self.direct_routes[path] = endpoint

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] == "POST" and not scope.get("root_path"):
            endpoint = self.direct_routes.get(scope["path"])
            if endpoint is not None:
                scope["app"] = self
                await self._call_directly(endpoint, scope, receive, send)
                return
        await super().__call__(scope, receive, send)

    async def _call_directly(
        self, endpoint: Endpoint, scope: Scope, receive: Receive, send: Send
    ) -> None:
        request = Request(scope, receive)
        try:
            response = await endpoint(request, get_state(request))
        except Exception as exc:
            handler = self._handler_for(exc)
            if handler is None:
                raise
            response = await handler(request, exc)
            exc.__traceback__ = None  # as Starlette does: no traceback kept alive
        await response(scope, receive, send)

    def _handler_for(self, exc: Exception) -> Callable[[Request, Any], Awaitable[Response]] | None:
        """The app's exception handler for ``exc``, by its class and then its bases."""
        handlers = self.exception_handlers
        for kind in type(exc).__mro__:
            if kind in handlers and kind is not Exception:
                handler: Callable[[Request, Any], Awaitable[Response]] = handlers[kind]  # type: ignore[assignment]
                return handler
        return None
