"""What every ``clarion`` command shares: reading the settings and the plan, failing clearly,
and calling the services' HTTP APIs (the dispatcher's ops API, ingest's operator API)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, NoReturn

import httpx
import typer
from pydantic import ValidationError

from services.local_run import Endpoints
from shared.plan import Plan, PlanError, load_plan
from shared.redaction import redact_text
from shared.settings import Settings


def examples(*commands: str) -> str:
    """A command's ``--help`` epilog: each example on a line of its own."""
    return "\n\n".join(("Examples:" if len(commands) > 1 else "Example:", *commands))


def fail(message: str) -> NoReturn:
    """Print ``message`` on stderr and exit with status 1."""
    typer.echo(message, err=True)
    raise typer.Exit(1)


def settings_or_fail() -> Settings:
    try:
        return Settings()
    except ValidationError as exc:
        problems = "; ".join(
            f"CLARION_{'_'.join(str(p) for p in error['loc']).upper()}: {error['msg']}"
            for error in exc.errors()
        )
        fail(f"Invalid configuration: {problems}")


def plan_or_fail(path: Path | None) -> Plan:
    """The plan at ``path`` (None: the shipped default); an invalid one names file and line."""
    try:
        return load_plan(path)
    except PlanError as exc:
        fail(str(exc))


def _ops_client(settings: Settings, base: str, timeout: float) -> httpx.Client:
    """An HTTP client for an ops API at ``base``, with the ops token when one is set."""
    token = settings.ops_token
    headers = {"Authorization": f"Bearer {token.get_secret_value()}"} if token else {}
    return httpx.Client(base_url=base, headers=headers, timeout=timeout)


def dispatcher_client(settings: Settings, timeout: float = 10.0) -> httpx.Client:
    """An HTTP client for the dispatcher's ops API, with the ops token when one is set."""
    return _ops_client(settings, Endpoints.from_settings(settings).dispatcher, timeout)


def call_dispatcher(
    method: str,
    path: str,
    body: Mapping[str, Any] | None = None,
    params: Mapping[str, Any] | None = None,
    settings: Settings | None = None,
) -> Any:
    """Call the dispatcher's ops API and return the JSON answer; fail clearly on any error."""
    settings = settings or settings_or_fail()
    try:
        with dispatcher_client(settings) as client:
            response = client.request(method, path, json=body, params=params)
    except httpx.HTTPError as exc:
        fail(unreachable("the dispatcher", Endpoints.from_settings(settings).dispatcher, exc))
    if response.status_code >= 400:
        fail(f"The dispatcher answered {response.status_code}: {response_detail(response)}")
    return response.json()


def _checked_url(value: str | None) -> str | None:
    if value is not None and not value.startswith(("http://", "https://")):
        raise typer.BadParameter(f"{value!r} is not an http:// or https:// URL")
    return value.rstrip("/") if value else value


IngestUrl = Annotated[
    str | None,
    typer.Option(
        "--url",
        metavar="URL",
        callback=_checked_url,
        show_default=False,
        help="Ingest's address (default: from CLARION_INGEST_HOST and CLARION_INGEST_PORT).",
    ),
]
"""The ``--url`` option of every command that talks to ingest."""


def ingest_url(settings: Settings, override: str | None = None) -> str:
    """Where ingest answers: ``override`` (``--url``), else from CLARION_INGEST_HOST/PORT."""
    return override or Endpoints.from_settings(settings).ingest


def ingest_client(
    settings: Settings, url: str | None = None, timeout: float = 10.0
) -> httpx.Client:
    """An HTTP client for ingest's operator API, with the ops token when one is set."""
    return _ops_client(settings, ingest_url(settings, url), timeout)


def call_ingest(
    method: str,
    path: str,
    body: Mapping[str, Any] | None = None,
    params: Mapping[str, Any] | None = None,
    *,
    url: str | None = None,
    settings: Settings | None = None,
) -> Any:
    """Call ingest's operator API and return the JSON answer; fail clearly on any error."""
    settings = settings or settings_or_fail()
    base = ingest_url(settings, url)
    try:
        with ingest_client(settings, url) as client:
            response = client.request(method, path, json=body, params=params)
    except httpx.HTTPError as exc:
        fail(unreachable("ingest", base, exc))
    if response.status_code >= 400:
        fail(operator_api_refusal(response))
    try:
        return response.json()
    except ValueError:
        fail(f"{base} answered {response.status_code} without JSON: is it Clarion's ingest?")


def unreachable(service: str, base: str, exc: httpx.HTTPError) -> str:
    """One line for a service that did not answer, with what to check."""
    reason = redact_text(str(exc)) or type(exc).__name__
    return (
        f"Cannot reach {service} at {base} ({reason}). Is Clarion running (`clarion up`)? "
        "Otherwise give its address with --url."
    )


def operator_api_refusal(response: httpx.Response) -> str:
    """One line for an error answer of ingest's operator API, with what to do about it."""
    detail = response_detail(response)
    status = response.status_code
    if status == 401:
        sent = "authorization" in response.request.headers
        return (
            f"Ingest {'refused the' if sent else 'wants an'} ops token (401: {detail}). "
            "Set CLARION_OPS_TOKEN to the token ingest runs with."
        )
    if status == 403:
        return f"Ingest refused the request (403: {detail})."
    return f"Ingest answered {status}: {detail}."


def response_detail(response: httpx.Response) -> str:
    """What an error answer says, without a final full stop: Clarion's ``error.message``
    (with its fields), PagerDuty's ``message`` and ``errors``, or the start of the text."""
    return _said(response).strip().rstrip(".")


def _said(response: httpx.Response) -> str:
    try:
        body = response.json()
    except ValueError:
        return _short(response.text) or response.reason_phrase
    if not isinstance(body, dict):
        return _short(response.text)
    error = body.get("error")
    if isinstance(error, dict):
        fields = "; ".join(
            f"{item.get('field')}: {item.get('reason')}"
            for item in error.get("fields") or []
            if isinstance(item, dict)
        )
        message = str(error.get("message") or response.reason_phrase)
        return f"{message} ({fields})" if fields else message
    errors = body.get("errors")
    if isinstance(errors, list) and errors:
        return f"{body.get('message') or response.reason_phrase}: {'; '.join(map(str, errors))}"
    return str(body.get("message") or body.get("detail") or _short(response.text))


def _short(text: str, limit: int = 200) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 3] + "..."
