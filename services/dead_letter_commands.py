"""``clarion dead-letters``: what could not be done, and sending it again.

Talks to the dispatcher's ops API, like ``clarion approvals``.
"""

from __future__ import annotations

import json
from typing import Annotated, Any

import httpx
import typer
from rich.console import Console
from rich.progress import Progress
from rich.table import Table

from services.cli_support import call_dispatcher, dispatcher_client, fail, settings_or_fail

dead_letters_app = typer.Typer(
    help="Deliveries whose retries ran out, and messages no consumer could process.",
    no_args_is_help=True,
)


def _filters(kind: str | None, channel: str | None) -> dict[str, Any]:
    return {k: v for k, v in {"kind": kind, "channel": channel}.items() if v}


KindOption = Annotated[str | None, typer.Option(help="Only 'delivery' or 'message' dead letters.")]
ChannelOption = Annotated[str | None, typer.Option(help="Only deliveries on this channel.")]


@dead_letters_app.command(name="list")
def list_letters(
    kind: KindOption = None,
    channel: ChannelOption = None,
    limit: Annotated[int, typer.Option(min=1, max=1000, help="How many, newest first.")] = 50,
    pending: Annotated[
        bool, typer.Option("--pending", help="Only those not replayed yet.")
    ] = False,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object per line.")] = False,
) -> None:
    """List dead letters, newest first."""
    params = {"limit": limit, "include_replayed": not pending, **_filters(kind, channel)}
    letters = call_dispatcher("GET", "/v1/dead-letters", params=params)
    if as_json:
        for letter in letters:
            typer.echo(json.dumps(letter))
        return
    if not letters:
        typer.echo("No dead letters.")
        return
    table = Table("id", "kind", "dead at", "channel", "recipient", "incident", "error", "replayed")
    for letter in letters:
        table.add_row(
            letter["id"],
            letter["kind"],
            letter["dead_at"],
            letter.get("channel") or letter.get("stream", ""),
            letter.get("recipient", ""),
            letter.get("incident_id") or "",
            (letter.get("error") or "")[:80],
            letter.get("replayed_at") or "",
        )
    Console().print(table)


@dead_letters_app.command()
def replay(
    entry_id: Annotated[
        str | None, typer.Argument(help="The dead letter's id (see `list`).")
    ] = None,
    replay_all: Annotated[
        bool, typer.Option("--all", help="Replay every dead letter not replayed yet.")
    ] = False,
    kind: KindOption = None,
    channel: ChannelOption = None,
    by: Annotated[str, typer.Option(help="Who replays, for the delivery log.")] = "operator",
) -> None:
    """Send dead deliveries again (same idempotency key: never twice), or re-queue messages."""
    if (entry_id is None) == (not replay_all):
        fail("Give one dead letter ID, or --all.")
    if entry_id is not None:
        answer = call_dispatcher("POST", f"/v1/dead-letters/{entry_id}/replay", {"by": by})
        typer.echo(f"Replayed {entry_id}: {answer['detail']}.")
        return
    params = {"limit": 1000, "include_replayed": False, **_filters(kind, channel)}
    letters = call_dispatcher("GET", "/v1/dead-letters", params=params)
    if not letters:
        typer.echo("Nothing to replay.")
        return
    counts = {"replayed": 0, "skipped": 0}
    settings = settings_or_fail()
    # The bar goes to stderr: stdout keeps only the summary, for scripts.
    bar = Progress(console=Console(stderr=True), transient=False)
    with dispatcher_client(settings) as client, bar as progress:
        task = progress.add_task("Replaying", total=len(letters))
        for letter in letters:
            try:
                answer = client.post(f"/v1/dead-letters/{letter['id']}/replay", json={"by": by})
            except httpx.HTTPError as exc:
                fail(f"Cannot reach the dispatcher at {client.base_url}: {exc}")
            if answer.status_code == 409:  # replayed meanwhile (another operator, or a retry)
                counts["skipped"] += 1
            elif answer.status_code >= 400:
                fail(f"The dispatcher answered {answer.status_code} for {letter['id']}.")
            else:
                counts["replayed"] += 1
            progress.advance(task)
    typer.echo(
        f"Replayed {counts['replayed']} dead letter(s)"
        + (f"; {counts['skipped']} were already replayed." if counts["skipped"] else ".")
    )
