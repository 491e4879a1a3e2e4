"""What every ``clarion`` command shares: reading the settings and the plan, failing clearly."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any, NoReturn

import httpx
import typer
from pydantic import ValidationError

from services.local_run import Endpoints
from shared.plan import Plan, PlanError, load_plan
from shared.settings import Settings


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


def dispatcher_client(settings: Settings, timeout: float = 10.0) -> httpx.Client:
    """An HTTP client for the dispatcher's ops API, with the ops token when one is set."""
    token = settings.ops_token
    headers = {"Authorization": f"Bearer {token.get_secret_value()}"} if token else {}
    base = Endpoints.from_settings(settings).dispatcher
    return httpx.Client(base_url=base, headers=headers, timeout=timeout)


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
        fail(
            f"Cannot reach the dispatcher at {Endpoints.from_settings(settings).dispatcher}: {exc}"
        )
    if response.status_code >= 400:
        try:
            detail = response.json().get("error", {}).get("message") or response.text
        except ValueError:
            detail = response.text
        fail(f"The dispatcher answered {response.status_code}: {detail}")
    return response.json()
