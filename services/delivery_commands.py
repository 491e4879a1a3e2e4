"""``clarion deliveries``: read the delivery log, filter it, page it, or follow it live.

Talks to the dispatcher's ops API (``GET /v1/deliveries`` on ``CLARION_DISPATCHER_HOST``
/``PORT``), with ``CLARION_OPS_TOKEN`` as the bearer token when it is set.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterable
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any, Final

import httpx
import typer
from pydantic import TypeAdapter, ValidationError
from rich.console import Console
from rich.table import Table

from services.cli_support import dispatcher_client, fail, response_detail, settings_or_fail
from shared.contracts import DeliveryStatus
from shared.redaction import redact_text
from shared.settings import Duration

POLL_LIMIT: Final = 1000
"""Records per poll while following: a burst is caught up in few requests."""
PIPE_WIDTH: Final = 200
"""Columns when the output is not a terminal (and COLUMNS does not say)."""
COLUMNS: Final = (
    "time",
    "incident",
    "channel",
    "audience",
    "recipient",
    "status",
    "attempt",
    "latency",
    "provider id",
    "error / note",
)

_DURATION: Final = TypeAdapter(Duration)

deliveries_app = typer.Typer(add_completion=False)


class DispatcherUnavailable(Exception):
    """The dispatcher could not be reached, or failed (5xx): following tries again."""


@deliveries_app.command(name="deliveries")
def deliveries(
    *,
    incident: Annotated[
        str | None, typer.Option("--incident", "-i", help="Only this incident.")
    ] = None,
    channel: Annotated[
        list[str] | None,
        typer.Option("--channel", "-c", help="Only this channel (repeat for several)."),
    ] = None,
    status: Annotated[
        list[DeliveryStatus] | None,
        typer.Option("--status", "-s", help="Only this status (repeat for several)."),
    ] = None,
    audience: Annotated[
        list[str] | None,
        typer.Option("--audience", "-a", help="Only this audience (repeat for several)."),
    ] = None,
    since: Annotated[
        str | None,
        typer.Option(help="Recorded since: a duration ago (90s, 30m, 1h, 2d) or an ISO time."),
    ] = None,
    until: Annotated[
        str | None,
        typer.Option(help="Recorded before: a duration ago or an ISO time (UTC if no zone)."),
    ] = None,
    limit: Annotated[int, typer.Option(min=1, max=1000, help="How many records to show.")] = 50,
    before: Annotated[
        str | None, typer.Option(help="Show the page older than this cursor (printed below).")
    ] = None,
    as_json: Annotated[
        bool, typer.Option("--json", help="Print one JSON object per record and line.")
    ] = False,
    follow: Annotated[
        bool,
        typer.Option(
            "--follow", "-f", help="Then keep printing new records, oldest first, until Ctrl-C."
        ),
    ] = False,
    interval: Annotated[
        float, typer.Option(min=0.05, help="With --follow: seconds between two polls.")
    ] = 2.0,
    max_records: Annotated[
        int | None, typer.Option(min=1, hidden=True, help="Stop after printing this many.")
    ] = None,
) -> None:
    """Show the delivery log, newest first: every attempt to send a message."""
    settings = settings_or_fail()
    now = datetime.now(UTC)
    filters: dict[str, Any] = {
        "incident_id": incident,
        "channel": channel or None,
        "status": [s.value for s in status] if status else None,
        "audience": audience or None,
        "since": _time("--since", since, now),
        "until": _time("--until", until, now),
    }
    filters = {name: value for name, value in filters.items() if value is not None}
    if follow and before:
        fail("--before pages back through history; it cannot be used with --follow.")
    printer = _Printer(as_json=as_json, max_records=max_records)
    try:
        with dispatcher_client(settings) as client:
            page = _get(client, {**filters, "limit": limit, "before": before})
            if not follow:
                printer.page(page["deliveries"], page["next_cursor"])
                return
            typer.echo("Following the delivery log (Ctrl-C to stop) ...", err=True)
            printer.follow(reversed(page["deliveries"]))
            _follow(client, filters, page["follow_cursor"], interval, printer)
    except DispatcherUnavailable as exc:
        fail(str(exc))
    except KeyboardInterrupt:
        raise typer.Exit(0) from None
    except _Enough:
        return


def _follow(
    client: httpx.Client,
    filters: dict[str, Any],
    cursor: str,
    interval: float,
    printer: _Printer,
) -> None:
    """Poll for records newer than ``cursor``, for ever (or until enough are printed)."""
    unreachable = False
    while True:
        try:
            page = _get(client, {**filters, "limit": POLL_LIMIT, "after": cursor})
        except DispatcherUnavailable as exc:
            if not unreachable:
                typer.echo(f"{exc} (still trying)", err=True)
            unreachable = True
            time.sleep(interval)
            continue
        if unreachable:
            typer.echo("The dispatcher answers again.", err=True)
            unreachable = False
        printer.follow(page["deliveries"])
        cursor = page["next_cursor"]
        if len(page["deliveries"]) < POLL_LIMIT:  # caught up: wait for more
            time.sleep(interval)


class _Enough(Exception):
    """As many records as ``--max-records`` asked for were printed."""


class _Printer:
    def __init__(self, *, as_json: bool, max_records: int | None) -> None:
        self._json = as_json
        self._left = max_records
        self._header_shown = False

    def page(self, records: list[dict[str, Any]], next_cursor: str | None) -> None:
        """A page of history, newest first."""
        records = records[: self._left] if self._left is not None else records
        if self._json:
            for record in records:
                typer.echo(json.dumps(record))
        elif not records:
            typer.echo("No deliveries match.")
        else:
            table = Table(*COLUMNS)
            for record in records:
                table.add_row(*_cells(record))
            _console().print(table)
        if next_cursor:
            typer.echo(f"Older records: add --before {next_cursor}", err=True)

    def follow(self, records: Iterable[dict[str, Any]]) -> None:
        """Records as they come, oldest first, one line each."""
        for record in records:
            if self._left is not None and self._left <= 0:
                raise _Enough
            if self._json:
                typer.echo(json.dumps(record))
            else:
                if not self._header_shown:
                    typer.echo(_line(COLUMNS))
                    self._header_shown = True
                typer.echo(_line(_cells(record)))
            if self._left is not None:
                self._left -= 1
        if self._left is not None and self._left <= 0:
            raise _Enough


_WIDTHS: Final = (19, 14, 12, 12, 20, 10, 7, 9, 20, 0)


def _line(cells: tuple[str, ...]) -> str:
    return "  ".join(
        cell.ljust(width) if width else cell for cell, width in zip(cells, _WIDTHS, strict=True)
    ).rstrip()


def _cells(record: dict[str, Any]) -> tuple[str, ...]:
    latency = record.get("latency_ms")
    remarks = [
        text
        for text in (
            record.get("error"),
            record.get("note"),
            "possible duplicate" if record.get("possible_duplicate") else None,
            "shortened" if record.get("shortened") else None,
            _retry_at(record.get("next_attempt_at")),
        )
        if text
    ]
    return (
        _when(record.get("recorded_at")),
        str(record.get("incident_id", "")),
        str(record.get("channel", "")),
        str(record.get("audience") or ""),
        str(record.get("recipient", "")),
        str(record.get("status", "")),
        str(record.get("attempt", "")),
        "" if latency is None else f"{latency:.0f} ms",
        str(record.get("provider_message_id") or ""),
        "; ".join(str(text) for text in remarks),
    )


def _when(value: object) -> str:
    try:
        moment = datetime.fromisoformat(str(value)).astimezone(UTC)
    except ValueError:
        return str(value or "")
    return moment.strftime("%Y-%m-%d %H:%M:%S")


def _retry_at(value: object) -> str | None:
    return f"next try {_when(value)} UTC" if value else None


def _time(option: str, text: str | None, now: datetime) -> str | None:
    """``text`` as an ISO time for the API: a duration ago, or a time (UTC when naive)."""
    if text is None:
        return None
    try:
        ago: timedelta = _DURATION.validate_python(text)
    except ValidationError:
        pass
    else:
        return (now - ago).isoformat()
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        fail(f"{option}: {text!r} is neither a duration (90s, 30m, 1h, 2d) nor an ISO time.")
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.isoformat()


def _get(client: httpx.Client, params: dict[str, Any]) -> dict[str, Any]:
    """One page from ``GET /v1/deliveries``; a 4xx ends the command with its message."""
    present = {name: value for name, value in params.items() if value is not None}
    try:
        response = client.get("/v1/deliveries", params=present)
    except httpx.HTTPError as exc:
        raise DispatcherUnavailable(
            f"Cannot reach the dispatcher at {client.base_url}: {redact_text(str(exc))}"
        ) from exc
    if response.status_code >= 500:
        raise DispatcherUnavailable(f"The dispatcher answered {response.status_code}.")
    if response.status_code >= 400:
        fail(f"The dispatcher answered {response.status_code}: {response_detail(response)}")
    body: dict[str, Any] = response.json()
    return body


def _console() -> Console:
    console = Console(highlight=False)
    if not console.is_terminal and "COLUMNS" not in os.environ:
        console.width = PIPE_WIDTH
    return console
