"""The body of an operator request: read only once the caller is known, bounded, validated.

A ``Body()`` parameter would have FastAPI read and decode the whole body before any
dependency runs, so a client without the ops token could make ingest buffer a body of
any size (and get a 400/422 about it rather than a 401). Operator routes take their body
as a dependency instead, which runs after :data:`~services.ingest.security.OPERATOR`
and reads it as webhooks do: :func:`~services.ingest.body.read_body` (413 past
``CLARION_MAX_BODY_BYTES``, the rest left unread), then JSON (400). An invalid body is
answered as FastAPI answers an invalid ``Body()`` (422, "the request is not valid",
naming each field), as the operator API always has.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from fastapi import Request
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, ValidationError

from services.ingest.body import parse_json, read_body
from services.ingest.openapi_docs import json_body
from services.ingest.security import Operator
from services.ingest.state import State

M = TypeVar("M", bound=BaseModel)


def body_of(model: type[M]) -> Callable[..., Awaitable[M]]:
    """A dependency giving the request body as ``model``."""

    async def read(request: Request, state: State, _: Operator) -> M:
        body = await read_body(request, state.settings.max_body_bytes)
        return _validated(model, body)

    return read


def optional_body_of(model: type[M]) -> Callable[..., Awaitable[M | None]]:
    """A dependency giving the request body as ``model``, or None when there is none."""

    async def read(request: Request, state: State, _: Operator) -> M | None:
        body = await read_body(request, state.settings.max_body_bytes)
        return _validated(model, body) if body.strip() else None

    return read


def _validated(model: type[M], body: bytes) -> M:
    try:
        return model.model_validate(parse_json(body))
    except ValidationError as exc:
        errors = [{**error, "loc": ("body", *error["loc"])} for error in exc.errors()]
        raise RequestValidationError(errors) from exc


def documented(model: type[BaseModel], *, required: bool = True) -> dict[str, Any]:
    """An ``openapi_extra`` describing the JSON body of ``model``.

    The examples are the model's own, in its schema: there are no sample files of
    operator bodies.
    """
    extra = json_body(model)
    request_body = extra["requestBody"]
    request_body["required"] = required
    del request_body["content"]["application/json"]["examples"]
    return extra
