"""``clarion incidents``, ``clarion update post``, ``clarion ack`` and ``clarion resolve``.

Read incidents and change them as an operator, through ingest's operator API
(``/v1/incidents`` on ``CLARION_INGEST_HOST``/``PORT``, or ``--url``), with
``CLARION_OPS_TOKEN`` as the bearer token when it is set. Every change goes
through the same store as alerts do, so the command prints what ingest did:
the incident's new status and the events it published.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from enum import StrEnum
from typing import Annotated, Any, Final
from urllib.parse import quote

import typer
from rich.console import Console
from rich.table import Table
from rich.text import Text

from services.cli_support import IngestUrl, call_ingest, examples, fail
from shared.contracts import IncidentStatus

PIPE_WIDTH: Final = 200
"""Columns when the output is not a terminal (and COLUMNS does not say)."""

incidents_app = typer.Typer(
    help="Read incidents from ingest: list them, or show one with its timeline.",
    no_args_is_help=True,
    add_completion=False,
)
update_app = typer.Typer(
    help="Post a human-written update to an incident.",
    no_args_is_help=True,
    add_completion=False,
)
actions_app = typer.Typer(add_completion=False)
"""``ack`` and ``resolve``: added to ``clarion`` itself, not as a group."""


class StatusFilter(StrEnum):
    OPEN = "open"
    RESOLVED = "resolved"
    ALL = "all"


IncidentId = Annotated[
    str, typer.Argument(metavar="ID", help="The incident's id (see `clarion incidents list`).")
]
JsonOption = Annotated[bool, typer.Option("--json", help="Print ingest's answer as JSON.")]


@incidents_app.command(
    name="list",
    epilog=examples("clarion incidents list --status open", "clarion incidents list --json"),
)
def list_incidents(
    status: Annotated[
        StatusFilter, typer.Option("--status", "-s", help="Which incidents.")
    ] = StatusFilter.ALL,
    limit: Annotated[int, typer.Option(min=1, max=500, help="How many, newest first.")] = 50,
    as_json: Annotated[
        bool, typer.Option("--json", help="Print one JSON object per incident and line.")
    ] = False,
    url: IngestUrl = None,
) -> None:
    """List incidents, newest first."""
    answer = call_ingest(
        "GET", "/v1/incidents", params={"status": status.value, "limit": limit}, url=url
    )
    incidents = answer.get("incidents") if isinstance(answer, dict) else None
    if not isinstance(incidents, list):
        fail("Ingest's answer has no list of incidents: is --url ingest's address?")
    if as_json:
        for incident in incidents:
            typer.echo(json.dumps(incident))
        return
    if not incidents:
        typer.echo("No incidents." if status is StatusFilter.ALL else f"No {status} incidents.")
        return
    table = Table("id", "sev", "status", "title", "service", "opened (UTC)", "updated (UTC)")
    for incident in incidents:
        table.add_row(*map(Text, incident_row(incident)))
    _console().print(table)


@incidents_app.command(
    name="show", epilog=examples("clarion incidents show 3f2c9e0d4b1a4c8e9f00112233445566")
)
def show(incident_id: IncidentId, as_json: JsonOption = False, url: IngestUrl = None) -> None:
    """Show one incident: status, severity, components, alerts, timeline and post-mortem."""
    incident = call_ingest("GET", _path(incident_id), url=url)
    if as_json:
        typer.echo(json.dumps(incident, indent=2))
        return
    console = _console()
    console.print("\n".join(incident_details(incident)), markup=False, highlight=False)
    alerts = incident.get("alerts") or []
    if alerts:
        console.print()
        console.print(alerts_table(alerts, int(incident.get("truncated_alerts") or 0)))
    console.print()
    console.print(timeline_table(incident.get("timeline") or []))


@update_app.command(
    name="post",
    epilog=examples(
        'clarion update post ID --message "We are looking into it."',
        'clarion update post ID --status identified --message "A bad deploy; we are rolling '
        'it back." --component checkout --author alice',
    ),
)
def post(
    incident_id: IncidentId,
    *,
    message: Annotated[
        str, typer.Option("--message", "-m", help="The update, in plain words for customers.")
    ],
    status: Annotated[
        IncidentStatus | None,
        typer.Option("--status", "-s", help="The new status; resolved resolves it."),
    ] = None,
    title: Annotated[str | None, typer.Option(help="A new title, in customers' words.")] = None,
    impact: Annotated[
        str | None, typer.Option(help="What customers notice, in one sentence.")
    ] = None,
    component: Annotated[
        list[str] | None,
        typer.Option("--component", "-c", help="An affected component (repeat for several)."),
    ] = None,
    author: Annotated[str | None, typer.Option(help="Who writes, for the record.")] = None,
    as_json: JsonOption = False,
    url: IngestUrl = None,
) -> None:
    """Post an update: it goes out at once and restarts the update cadence."""
    body: dict[str, Any] = {
        "message": message,
        "status": status.value if status else None,
        "title": title,
        "impact": impact,
        "components": component or None,
        "author": author,
    }
    answer = call_ingest(
        "POST",
        f"{_path(incident_id)}/updates",
        {name: value for name, value in body.items() if value is not None},
        url=url,
    )
    _report(answer, as_json, done="Posted an update to")


@actions_app.command(name="ack", epilog=examples("clarion ack ID --by alice"))
def ack(
    incident_id: IncidentId,
    by: Annotated[str | None, typer.Option(help="Who acknowledges, for the record.")] = None,
    as_json: JsonOption = False,
    url: IngestUrl = None,
) -> None:
    """Acknowledge an incident: someone is on it, and "investigating" becomes "identified"."""
    answer = call_ingest(
        "POST", f"{_path(incident_id)}/acknowledge", {"by": by} if by else None, url=url
    )
    _report(answer, as_json, done="Acknowledged", repeat="it was acknowledged already")


@actions_app.command(
    name="resolve", epilog=examples('clarion resolve ID --message "The fix is deployed."')
)
def resolve(
    incident_id: IncidentId,
    message: Annotated[
        str | None, typer.Option("--message", "-m", help="A last word for the people told.")
    ] = None,
    as_json: JsonOption = False,
    url: IngestUrl = None,
) -> None:
    """Resolve an incident now, whatever its alerts say."""
    answer = call_ingest(
        "POST", f"{_path(incident_id)}/resolve", {"message": message} if message else None, url=url
    )
    _report(answer, as_json, done="Resolved")


def _report(answer: Any, as_json: bool, *, done: str, repeat: str = "nothing changed") -> None:
    if as_json:
        typer.echo(json.dumps(answer, indent=2))
        return
    typer.echo(action_summary(answer, done=done, repeat=repeat))


def action_summary(answer: Mapping[str, Any], *, done: str, repeat: str) -> str:
    """What an operator action did, in one line: the incident, its status, the events."""
    incident = answer.get("incident") or {}
    events: Sequence[str] = answer.get("events") or []
    name, status = incident.get("id"), incident.get("status")
    if not events:
        return f"Incident {name} is {status}: {repeat}, so nothing was published."
    return f"{done} incident {name}: it is now {status}. Events published: {', '.join(events)}."


def incident_row(incident: Mapping[str, Any]) -> tuple[str, ...]:
    """One line of ``incidents list``."""
    return (
        str(incident.get("id", "")),
        str(incident.get("sev", "")),
        str(incident.get("status", "")),
        str(incident.get("title", "")),
        str(incident.get("service") or ""),
        _when(incident.get("opened_at")),
        _when(incident.get("updated_at")),
    )


def incident_details(incident: Mapping[str, Any]) -> list[str]:
    """The head of ``incidents show``: one ``label: value`` line per fact."""
    status = str(incident.get("status", ""))
    resolved = status == IncidentStatus.RESOLVED
    if incident.get("acknowledged_at"):
        by = incident.get("acknowledged_by")
        when = _when(incident["acknowledged_at"])
        status += f" (acknowledged{f' by {by}' if by else ''} at {when} UTC)"
    if incident.get("monitoring_since"):
        status += f" (monitoring since {_when(incident['monitoring_since'])} UTC"
        resolves = incident.get("resolves_at")
        status += f", resolves at {_when(resolves)} UTC)" if resolves else ")"
    severity = f"{incident.get('sev', '')} ({incident.get('severity', '')})"
    postmortem = incident.get("postmortem_url")
    if postmortem and incident.get("postmortem_summary"):
        postmortem = f"{postmortem} - {incident['postmortem_summary']}"
    facts: list[tuple[str, object]] = [
        ("Incident", incident.get("id")),
        ("Title", incident.get("title")),
        ("Customers read", incident.get("customer_title")),
        ("Status", status),
        ("Severity", severity),
        ("Source", incident.get("source")),
        ("Service", incident.get("service")),
        ("Components", ", ".join(incident.get("components") or []) or "none"),
        ("Impact", incident.get("impact")),
        ("Opened", f"{_when(incident.get('opened_at'))} UTC"),
        ("Updated", f"{_when(incident.get('updated_at'))} UTC"),
        (
            "Resolved",
            f"{_when(incident['resolved_at'])} UTC" if incident.get("resolved_at") else "no",
        ),
        ("Alerts from", incident.get("external_url")),
        ("Post-mortem", postmortem or ("none yet" if resolved else "none")),
    ]
    shown = [(label, value) for label, value in facts if value]
    width = max(len(label) for label, _ in shown) + 2
    return [f"{label + ':':<{width}}{value}" for label, value in shown]


def alerts_table(alerts: Sequence[Mapping[str, Any]], truncated: int = 0) -> Table:
    firing = sum(1 for alert in alerts if alert.get("status") == "firing")
    title = f"Alerts: {len(alerts)}, {firing} firing"
    if truncated:
        title += f" ({truncated} more left out by the source)"
    table = Table("status", "severity", "summary", "fingerprint", "started", "ended", title=title)
    for alert in alerts:
        table.add_row(
            *_cells(
                alert.get("status"),
                alert.get("severity"),
                alert.get("summary"),
                alert.get("fingerprint"),
                _when(alert.get("starts_at")),
                _when(alert.get("ends_at")),
            )
        )
    return table


def timeline_table(timeline: Sequence[Mapping[str, Any]]) -> Table:
    table = Table("at (UTC)", "status", "by", "message", title="Timeline")
    for entry in timeline:
        table.add_row(
            *_cells(
                _when(entry.get("at")),
                entry.get("status"),
                entry.get("author"),
                entry.get("message"),
            )
        )
    return table


def _cells(*values: object) -> list[Text]:
    """Table cells as plain text: "[...]" in a title is words, not rich markup."""
    return [Text("" if value is None else str(value)) for value in values]


def _path(incident_id: str) -> str:
    return f"/v1/incidents/{quote(incident_id, safe='')}"


def _when(value: object) -> str:
    """An API time as ``YYYY-MM-DD HH:MM:SS`` in UTC; "" for none."""
    if not value:
        return ""
    try:
        moment = datetime.fromisoformat(str(value)).astimezone(UTC)
    except ValueError:
        return str(value)
    return moment.strftime("%Y-%m-%d %H:%M:%S")


def _console() -> Console:
    console = Console(highlight=False)
    if not console.is_terminal and "COLUMNS" not in os.environ:
        console.width = PIPE_WIDTH
    return console
