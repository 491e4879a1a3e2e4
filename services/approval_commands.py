"""``clarion approvals``: see the customer-facing messages that wait, and approve them.

Talks to the dispatcher's ops API (``CLARION_DISPATCHER_HOST``/``PORT``), with
``CLARION_OPS_TOKEN`` as the bearer token when it is set.
"""

from __future__ import annotations

import json
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from services.cli_support import call_dispatcher

approvals_app = typer.Typer(
    help="Customer-facing messages waiting for a human's approval.", no_args_is_help=True
)


@approvals_app.command(name="list")
def list_pending(
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """List held messages, the soonest auto-publish first."""
    pending = call_dispatcher("GET", "/v1/approvals")
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
    answer = call_dispatcher("POST", f"/v1/approvals/{event_id}/approve", {"by": by})
    typer.echo(f"Approved {answer['held']} held message(s) of {event_id}; they go out now.")
