"""``clarion plan``: check a communication plan, and preview what people would receive.

``clarion plan check [PLAN]`` validates the plan, renders every message it can send for
sample incidents and checks the customer-facing ones; it exits 1 when anything fails.
``clarion plan preview [PLAN] --event opened --severity SEV1`` prints those messages.
PLAN defaults to CLARION_PLAN, else the shipped default plan.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Annotated, Final

import typer
from rich.console import Console
from rich.table import Table
from rich.text import Text

from services.cli_support import fail, plan_or_fail, settings_or_fail
from services.dispatcher.plan_check import CheckRow, PlanReport, check_plan, preview
from services.dispatcher.rendering.engine import RenderFailed
from services.dispatcher.rendering.limits import MessageTooLong
from services.dispatcher.rendering.messages import SHORT_CHANNELS, RenderedMessage
from shared.contracts import Severity
from shared.plan import ChannelName, EventKind

PIPE_WIDTH: Final = 160
"""Columns when the output is not a terminal (and COLUMNS does not say): wide rows stay whole."""

plan_app = typer.Typer(
    help="Check the communication plan and preview the messages it sends.",
    no_args_is_help=True,
    add_completion=False,
)

PlanFile = Annotated[
    Path | None,
    typer.Argument(
        help="The plan file (default: CLARION_PLAN, else the shipped default plan).",
        metavar="PLAN",
        show_default=False,
    ),
]


@plan_app.command()
def check(plan_file: PlanFile = None) -> None:
    """Validate the plan and check every message it can send; exit 1 on any failure."""
    settings = settings_or_fail()
    plan = plan_or_fail(plan_file or settings.plan)
    report = check_plan(plan, settings)
    console = _console()
    console.print(_table(report))
    console.print(_summary(report), markup=False, highlight=False)
    if not report.passed:
        raise typer.Exit(1)


@plan_app.command(name="preview")
def show_preview(
    plan_file: PlanFile = None,
    event: Annotated[
        str, typer.Option("--event", "-e", help="The event: " + ", ".join(EventKind) + ".")
    ] = EventKind.OPENED.value,
    severity: Annotated[
        str, typer.Option("--severity", "-s", help="SEV1 to SEV4 (or critical ... info).")
    ] = "SEV1",
    audience: Annotated[
        str | None, typer.Option("--audience", "-a", help="Only this audience's messages.")
    ] = None,
) -> None:
    """Print the messages a sample incident would produce, channel by channel."""
    kind, level = _event_kind(event), _severity(severity)
    settings = settings_or_fail()
    plan = plan_or_fail(plan_file or settings.plan)
    if audience is not None and audience not in plan.audiences:
        known = ", ".join(plan.audiences) or "none defined"
        raise typer.BadParameter(
            f"unknown audience {audience!r}; the plan has {known}", param_hint="--audience"
        )
    try:
        messages = preview(plan, settings, kind, level, audience)
    except (RenderFailed, MessageTooLong) as exc:
        fail(f"Cannot render a {level.sev} {kind.value} message: {exc}")
    console = _console()
    if not messages:
        who = audience or "No audience"
        console.print(
            f"{who} hears no {level.sev} {kind.value} event under this plan.", markup=False
        )
        return
    for name, channel, message in messages:
        console.rule(Text(f"{name} · {channel.value}"))
        _print_message(console, channel, message)


def _print_message(console: Console, channel: ChannelName, message: RenderedMessage) -> None:
    def say(text: str) -> None:
        console.print(text, markup=False, highlight=False, soft_wrap=True)

    if channel not in SHORT_CHANNELS:  # a text or a post has no title
        say(f"{'Subject' if channel is ChannelName.EMAIL else 'Title'}: {message.title}")
    if message.status:
        say(f"Status: {message.status}")
    say("")
    say(message.text.rstrip("\n"))
    if message.html is not None:
        say("(an HTML part is sent as well)")
    if message.payload is not None:
        say("")
        say("JSON body:")
        say(json.dumps(message.payload, indent=2, ensure_ascii=False))
    if message.shortened:
        say(f"(shortened: {'; '.join(message.notes) or 'cut to fit the channel'})")
    say("")


def _table(report: PlanReport) -> Table:
    table = Table(title="Communication plan check", title_justify="left")
    for column in ("severity", "event", "audience", "channel", "result"):
        table.add_column(column, no_wrap=True)
    table.add_column("reasons", overflow="fold")
    for row in report.rows:
        table.add_row(
            *(Text(value) for value in (row.severity, row.event, row.audience, row.channel)),
            _result(row),
            Text("\n".join(row.reasons)),
        )
    return table


def _result(row: CheckRow) -> Text:
    if row.warning:
        return Text("WARN", style="yellow")
    if not row.ok:
        return Text("FAIL", style="bold red")
    return Text("PASS, shortened" if row.shortened else "PASS", style="green")


def _summary(report: PlanReport) -> str:
    messages = report.messages
    failed = sum(not row.ok for row in messages)
    text = f"{len(messages)} messages checked, {failed} failed"
    templates = len(report.failures) - failed
    if templates:
        text += f"; {templates} template problem(s)"
    if report.warnings:
        text += f"; {len(report.warnings)} warning(s)"
    return text


def _console() -> Console:
    console = Console(highlight=False)  # colour only on a terminal; NO_COLOR is respected
    if not console.is_terminal and "COLUMNS" not in os.environ:
        console.width = PIPE_WIDTH
    return console


def _event_kind(text: str) -> EventKind:
    try:
        return EventKind(text.strip().lower())
    except ValueError:
        valid = ", ".join(EventKind)
        raise typer.BadParameter(
            f"unknown event {text!r}; expected one of {valid}", param_hint="--event"
        ) from None


def _severity(text: str) -> Severity:
    try:
        return Severity.parse(text)
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="--severity") from None
