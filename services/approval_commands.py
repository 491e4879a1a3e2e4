"""``clarion approvals``: see the customer-facing messages that wait, and approve them.

Talks to the dispatcher's ops API (``CLARION_DISPATCHER_HOST``/``PORT``), with
``CLARION_OPS_TOKEN`` as the bearer token when it is set.
"""

from __future__ import annotations

import json
from typing import Annotated, Any

import httpx
import typer
from rich.console import Console
from rich.table import Table

from services.cli_support import fail
from services.local_run import Endpoints
from shared.settings import Settings

approvals_app = typer.Typer(
    help="Customer-facing messages waiting for a human's approval.", no_args_is_help=True
)


def _client(settings: Settings) -> httpx.Client:
    token = settings.ops_token
    headers = {"Authorization": f"Bearer {token.get_secret_value()}"} if token else {}
    base = Endpoints.from_settings(settings).dispatcher
    return httpx.Client(base_url=base, headers=headers, timeout=10.0)


def _call(method: str, path: str, body: dict[str, Any] | None = None) -> Any:
    settings = Settings()
    try:
        with _client(settings) as client:
            response = client.request(method, path, json=body)
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


@approvals_app.command(name="list")
def list_pending(
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """List held messages, the soonest auto-publish first."""
    pending = _call("GET", "/v1/approvals")
    if as_json:
        typer.echo(json.dumps(pending, indent=2))
        return
    if not pending:
        typer.echo("Nothing is waiting for approval.")
        return
    table = Table("event", "incident", "held", "auto-publish at", "would say")
    for item in pending:
        table.add_row(
            item["event_id"],
            item["incident_id"],
            str(item["held"]),
            item["auto_publish_at"],
            item["preview"]["title"],
        )
    Console().print(table)


@approvals_app.command()
def approve(
    event_id: Annotated[str, typer.Argument(help="The held event's id (see `list`).")],
    by: Annotated[str, typer.Option(help="Who approves, for the record.")] = "operator",
) -> None:
    """Send the held messages of EVENT_ID now."""
    answer = _call("POST", f"/v1/approvals/{event_id}/approve", {"by": by})
    typer.echo(f"Approved {answer['held']} held message(s) of {event_id}; they go out now.")
