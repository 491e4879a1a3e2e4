"""One JSON shape for every HTTP error Clarion answers, in every service.

{"error": {"code": "invalid_payload", "message": "...",
           "fields": [{"field": "alerts.0.status", "reason": "..."}]}}
"""

from __future__ import annotations

from typing import Any, Final

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException

from shared.errors import (
    BodyTooLarge,
    ClarionError,
    FieldError,
    Forbidden,
    InvalidPayload,
    MalformedBody,
    NotFound,
    RateLimited,
    Unauthorized,
)

# The client errors Clarion answers on purpose: (HTTP status, error code).
CLIENT_ERRORS: Final[dict[type[ClarionError], tuple[int, str]]] = {
    InvalidPayload: (422, "invalid_payload"),
    MalformedBody: (400, "invalid_json"),
    BodyTooLarge: (413, "payload_too_large"),
    Unauthorized: (401, "unauthorized"),
    Forbidden: (403, "forbidden"),
    NotFound: (404, "not_found"),
    RateLimited: (429, "rate_limited"),
}


def client_error(exc: BaseException) -> tuple[int, str] | None:
    """The (status, code) Clarion answers ``exc`` with, or None if it is not a client error."""
    for kind, answer in CLIENT_ERRORS.items():
        if isinstance(exc, kind):
            return answer
    return None


def error_body(code: str, message: str, fields: list[FieldError] | None = None) -> dict[str, Any]:
    body: dict[str, Any] = {"code": code, "message": message}
    if fields:
        body["fields"] = [{"field": f.field, "reason": f.reason} for f in fields]
    return {"error": body}


def unavailable(message: str, retry_after_seconds: int = 5) -> JSONResponse:
    """A 503 that tells the caller nothing was done and when to try again."""
    return JSONResponse(
        error_body("unavailable", message),
        503,
        headers={"Retry-After": str(retry_after_seconds)},
    )


def field_errors(exc: ValidationError | RequestValidationError) -> list[FieldError]:
    """pydantic's errors as (dotted field path, reason), skipping FastAPI's ``body`` prefix."""
    result = []
    for err in exc.errors():
        loc = [str(part) for part in err.get("loc", ())]
        if loc and loc[0] == "body":
            loc = loc[1:]
        result.append(FieldError(field=".".join(loc) or "(body)", reason=str(err.get("msg"))))
    return result


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(InvalidPayload)
    async def _invalid(_: Request, exc: InvalidPayload) -> JSONResponse:
        return JSONResponse(
            error_body("invalid_payload", "the request body is not valid", exc.errors), 422
        )

    @app.exception_handler(MalformedBody)
    async def _malformed(_: Request, exc: MalformedBody) -> JSONResponse:
        return JSONResponse(error_body("invalid_json", str(exc)), 400)

    @app.exception_handler(BodyTooLarge)
    async def _too_large(_: Request, exc: BodyTooLarge) -> JSONResponse:
        return JSONResponse(error_body("payload_too_large", str(exc)), 413)

    @app.exception_handler(RequestValidationError)
    async def _request_invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        return JSONResponse(
            error_body("invalid_payload", "the request is not valid", field_errors(exc)), 422
        )

    @app.exception_handler(Unauthorized)
    async def _unauthorized(_: Request, exc: Unauthorized) -> JSONResponse:
        return JSONResponse(
            error_body("unauthorized", str(exc) or "missing or wrong credentials"),
            401,
            headers={"WWW-Authenticate": ", ".join(exc.challenges)},
        )

    @app.exception_handler(Forbidden)
    async def _forbidden(_: Request, exc: Forbidden) -> JSONResponse:
        return JSONResponse(error_body("forbidden", str(exc) or "the request is refused"), 403)

    @app.exception_handler(NotFound)
    async def _not_found(_: Request, exc: NotFound) -> JSONResponse:
        return JSONResponse(error_body("not_found", str(exc)), 404)

    @app.exception_handler(RateLimited)
    async def _rate_limited(_: Request, exc: RateLimited) -> JSONResponse:
        return JSONResponse(
            error_body("rate_limited", str(exc)),
            429,
            headers={"Retry-After": str(exc.retry_after_seconds)},
        )

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
        return JSONResponse(error_body(code, str(exc.detail)), exc.status_code)
