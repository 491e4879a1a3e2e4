"""Reading a webhook body: bounded in size, JSON or a clear 4xx."""

from __future__ import annotations

import json
import re
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError
from pydantic_core import from_json
from starlette.requests import Request

from shared.errors import BodyTooLarge, InvalidPayload, MalformedBody
from shared.http_errors import field_errors

M = TypeVar("M", bound=BaseModel)


async def read_body(request: Request, limit: int) -> bytes:
    """The raw request body, read no further than ``limit`` bytes (413 beyond)."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise BodyTooLarge(f"the request body is over {limit} bytes")
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise BodyTooLarge(f"the request body is over {limit} bytes")
    return bytes(body)


_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F]")
"""A ``\\uD800``..``\\uDFFF`` escape: half of a pair, or a lone surrogate."""


def parse_json(body: bytes) -> Any:
    """``body`` as JSON, or :class:`MalformedBody` (400) saying why.

    pydantic's parser (Rust, about twice as fast) reads it when it can, with the
    standard library's results (big integers, NaN, the last of duplicate keys). What
    it refuses (a BOM, UTF-16, an escaped surrogate, broken JSON) goes to the standard
    library, which accepts it or says why not, as it always did.
    """
    if not _SURROGATE_ESCAPE.search(body):
        try:
            return from_json(body)
        except ValueError:
            pass
    if not body.strip():
        raise MalformedBody("the request body is empty; expected a JSON object")
    try:
        value = json.loads(body)
    except (ValueError, RecursionError) as exc:  # JSONDecodeError and UnicodeDecodeError
        raise MalformedBody(f"the request body is not valid JSON: {exc}") from exc
    if _SURROGATE_ESCAPE.search(body):
        _refuse_lone_surrogates(value)
    return value


def _refuse_lone_surrogates(value: Any) -> None:
    """A ``\\uDFFF`` alone is valid JSON but not text: nothing downstream can encode it."""
    try:
        json.dumps(value, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError as exc:
        raise MalformedBody(
            "the request body is not valid JSON text: it escapes half of a UTF-16 "
            "surrogate pair (\\uD800 to \\uDFFF) alone"
        ) from exc


def validate(model: type[M], data: Any) -> M:
    """``data`` as ``model``, or :class:`InvalidPayload` naming each bad field.

    Fields are read by the names a sender writes (their aliases, ``valueString``),
    never by the Python names the models also accept in code (``value_string``): an
    unknown key that happens to be a Python name is ignored like any other, as the
    published schema says (a fuzzer sent ``value_string`` with a list in it, and got 422).
    """
    try:
        return model.model_validate(data, by_alias=True, by_name=False)
    except ValidationError as exc:
        raise InvalidPayload(field_errors(exc)) from exc
