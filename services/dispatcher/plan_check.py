"""Check a communication plan before an incident does. Pure; no broker, no network.

Sample incidents (one per severity, with realistic technical alerts) go through the plan's
routes and the renderer, for every event kind. A message that cannot be rendered fails; a
message to a public audience must also pass the content check (impact, apology, next
update, where to follow, timestamp, length, no monitoring jargon). Template syntax errors
fail too, and recipients whose secret is not in the environment get a warning: until it
is set, their messages go to the local outbox.

The internal kinds (``ack_overdue``, ``postmortem_due``) are checked like the others for
every internal audience the routes reach, whether or not the plan arms them now (a
severity without ``acknowledge_within``), so a template that cannot render them fails
before the first escalation. Fan-out keeps them from public audiences, so no public row
ever shows them.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import Any, Final

from services.dispatcher.fanout import plan_deliveries
from services.dispatcher.rendering.content_check import Expectations, Finding, check_message
from services.dispatcher.rendering.engine import RenderFailed
from services.dispatcher.rendering.limits import MessageTooLong, limit_for
from services.dispatcher.rendering.messages import RenderedMessage, Renderer
from services.dispatcher.rendering.values import (
    DispatchEvent,
    RenderContext,
    kind_of,
    template_values,
)
from shared.contracts import (
    AlertState,
    AlertStatus,
    Incident,
    IncidentAckOverdue,
    IncidentOpened,
    IncidentPostmortemDue,
    IncidentPostmortemPublished,
    IncidentResolved,
    IncidentSeverityChanged,
    IncidentStatus,
    IncidentUpdated,
    Severity,
    UpdateAuthor,
    UpdateDue,
)
from shared.plan import ChannelName, EventKind, Plan
from shared.plan.model import DEFAULT_POSTMORTEM_REMINDER
from shared.settings import Settings

SAMPLE_OPENED_AT: Final = datetime(2026, 11, 23, 14, 30, tzinfo=UTC)
SAMPLE_SERVICE: Final = "checkout"
SAMPLE_IMPACT: Final = "Customers cannot complete checkout."
SAMPLE_OPERATOR_MESSAGE: Final = "We found the cause and are rolling out a fix."
SAMPLE_POSTMORTEM_URL: Final = "https://status.example.com/postmortems/checkout-2026-11-23"
SAMPLE_POSTMORTEM_SUMMARY: Final = (
    "A configuration change overloaded the order database; such changes now roll out gradually."
)
SAMPLE_LABELS: Final = (
    {"alertname": "CheckoutHighErrorRate", "instance": "db-1.prod.internal:9100", "job": "node"},
    {"alertname": "CheckoutLatencyHigh", "instance": "10.0.3.7:8080", "namespace": "shop-prod"},
)
"""The technical labels of the sample alerts: customers must never read any of these words."""

_SUMMARIES: Final = ("HTTP 5xx ratio above 5%", "p99 latency above 2s on checkout-api")
_OFFSETS: Final = {  # when each kind of event happens, after the incident opened
    EventKind.OPENED: timedelta(0),
    EventKind.UPDATED: timedelta(minutes=20),
    EventKind.SEVERITY_CHANGED: timedelta(minutes=25),
    EventKind.RESOLVED: timedelta(hours=1),
    EventKind.POSTMORTEM_PUBLISHED: timedelta(days=2),
}
_CLOSING: Final = frozenset(
    {EventKind.RESOLVED, EventKind.POSTMORTEM_PUBLISHED, EventKind.POSTMORTEM_DUE}
)
_RESOLVED_AT: Final = SAMPLE_OPENED_AT + _OFFSETS[EventKind.RESOLVED]
_ACK_WITHIN: Final = timedelta(minutes=15)  # for a sample severity that has no acknowledge_within
_UNACKNOWLEDGED: Final = frozenset({EventKind.OPENED, EventKind.ACK_OVERDUE})


class RowKind(StrEnum):
    MESSAGE = "message"  # one rendered message: ok when it renders (and passes the check)
    TEMPLATE = "template"  # a template that does not compile: always a failure
    ENVIRONMENT = "environment"  # a recipient's unset secret: a warning, never a failure


@dataclass(frozen=True)
class CheckRow:
    """One verdict: a message (severity, event, audience, channel), a template or a secret."""

    severity: str
    event: str
    audience: str
    channel: str
    ok: bool
    reasons: list[str] = field(default_factory=list)
    shortened: bool = False
    kind: RowKind = RowKind.MESSAGE

    @property
    def warning(self) -> bool:
        return self.kind is RowKind.ENVIRONMENT


@dataclass(frozen=True)
class PlanReport:
    rows: list[CheckRow]

    @property
    def passed(self) -> bool:
        return all(row.ok for row in self.rows)

    @property
    def messages(self) -> list[CheckRow]:
        return [row for row in self.rows if row.kind is RowKind.MESSAGE]

    @property
    def failures(self) -> list[CheckRow]:
        return [row for row in self.rows if not row.ok]

    @property
    def warnings(self) -> list[CheckRow]:
        return [row for row in self.rows if row.warning]


@dataclass(frozen=True)
class Sample:
    """An event and the incident as it stands when the event is dispatched."""

    event: DispatchEvent
    incident: Incident

    @property
    def jargon(self) -> tuple[str, ...]:
        """Label keys and values of the sample alerts: words a customer must never read."""
        return tuple(
            dict.fromkeys(w for labels in SAMPLE_LABELS for w in (*labels, *labels.values()))
        )


@dataclass(frozen=True)
class SampleShape:
    """What a sample incident looks like to route matching."""

    service: str = SAMPLE_SERVICE
    components: tuple[str, ...] = ()
    labels: tuple[tuple[str, str], ...] = ()


def sample(
    plan: Plan, severity: Severity, kind: EventKind, shape: SampleShape | None = None
) -> Sample:
    """A realistic ``kind`` event about a ``severity`` incident, with the plan's cadence."""
    shape = shape or SampleShape()
    at = _when(plan, severity, kind)
    incident = _incident(severity, kind, at, shape)
    promises = kind not in _CLOSING and not kind.internal_only
    next_update = plan.next_update_at(severity, at) if promises else None
    common: dict[str, Any] = {
        "event_id": f"plan-check:{severity.sev}:{kind.value}",
        "occurred_at": at,
        "incident": incident,
        "next_update_at": next_update,
    }
    event: DispatchEvent
    if kind is EventKind.OPENED:
        event = IncidentOpened(**common)
    elif kind is EventKind.UPDATED:
        event = IncidentUpdated(
            **common, author=UpdateAuthor.OPERATOR, message=SAMPLE_OPERATOR_MESSAGE
        )
    elif kind is EventKind.SEVERITY_CHANGED:
        event = IncidentSeverityChanged(**common, previous_severity=_neighbour(severity))
    elif kind is EventKind.RESOLVED:
        event = IncidentResolved(**common)
    elif kind is EventKind.POSTMORTEM_PUBLISHED:
        event = IncidentPostmortemPublished(**common)
    elif kind is EventKind.ACK_OVERDUE:
        event = IncidentAckOverdue(**common, due_at=at)
    elif kind is EventKind.POSTMORTEM_DUE:
        event = IncidentPostmortemDue(**common, due_at=at)
    else:
        event = UpdateDue(
            event_id=common["event_id"],
            incident_id=incident.id,
            sequence=1,
            due_at=at,
            emitted_at=at,
            next_update_at=next_update,
        )
    return Sample(event, incident)


def _when(plan: Plan, severity: Severity, kind: EventKind) -> datetime:
    """When a sample ``kind`` event happens: the plan's own times where it has them."""
    if kind is EventKind.ACK_OVERDUE:
        return SAMPLE_OPENED_AT + (plan.policy(severity).acknowledge_within or _ACK_WITHIN)
    if kind is EventKind.POSTMORTEM_DUE:
        reminder = plan.postmortem_reminder_after or DEFAULT_POSTMORTEM_REMINDER
        return _RESOLVED_AT + reminder
    return SAMPLE_OPENED_AT + _OFFSETS.get(kind, plan.cadence(severity) or timedelta(minutes=30))


def _incident(severity: Severity, kind: EventKind, at: datetime, shape: SampleShape) -> Incident:
    resolved = kind in _CLOSING
    status = (
        IncidentStatus.RESOLVED
        if resolved
        else IncidentStatus.INVESTIGATING
        if kind in _UNACKNOWLEDGED
        else IncidentStatus.IDENTIFIED
    )
    alerts = tuple(
        AlertState(
            fingerprint=f"sample-{number}",
            status=AlertStatus.RESOLVED if resolved else AlertStatus.FIRING,
            severity=severity,
            summary=summary,
            labels={**labels, **dict(shape.labels)},
            starts_at=SAMPLE_OPENED_AT - timedelta(minutes=3),
            ends_at=_RESOLVED_AT if resolved else None,
            links={"runbook": "https://runbooks.example.com/checkout-errors"},
        )
        for number, (summary, labels) in enumerate(zip(_SUMMARIES, SAMPLE_LABELS, strict=True))
    )
    postmortem = kind is EventKind.POSTMORTEM_PUBLISHED
    return Incident(
        id=f"sample-{severity.sev.lower()}",
        key=f"sample-{severity.sev.lower()}",
        source="alertmanager",
        title=f"{_SUMMARIES[0]} on {shape.service}",
        service=shape.service,
        impact=SAMPLE_IMPACT,
        severity=severity,
        status=status,
        opened_at=SAMPLE_OPENED_AT,
        updated_at=at,
        resolved_at=_RESOLVED_AT if resolved else None,
        alerts=alerts,
        components=shape.components,
        acknowledged_at=None if kind in _UNACKNOWLEDGED else SAMPLE_OPENED_AT,
        acknowledged_by=None if kind in _UNACKNOWLEDGED else "on-call",
        postmortem_url=SAMPLE_POSTMORTEM_URL if postmortem else None,
        postmortem_summary=SAMPLE_POSTMORTEM_SUMMARY if postmortem else None,
    )


def _neighbour(severity: Severity) -> Severity:
    """The severity an incident plausibly changed from: one less severe (SEV4: from SEV3)."""
    order = list(Severity)
    rank = severity.rank
    return order[rank + 1] if rank + 1 < len(order) else order[rank - 1]


def _shapes(plan: Plan) -> list[SampleShape]:
    """The plain sample, and one that each service-, component- or label-specific route hears."""
    shapes = [SampleShape()]
    for route in plan.routes:
        match = route.match
        if match.services or match.components or match.labels:
            shapes.append(
                SampleShape(
                    service=match.services[0] if match.services else SAMPLE_SERVICE,
                    components=match.components[:1],
                    labels=tuple(sorted(match.labels.items())),
                )
            )
    return list(dict.fromkeys(shapes))


def audience_channels(
    plan: Plan, severity: Severity, kind: EventKind
) -> list[tuple[str, ChannelName, Sample]]:
    """Each (audience, channel) the plan sends a ``kind`` event of ``severity`` to, once."""
    found: dict[tuple[str, ChannelName], Sample] = {}
    for shape in _shapes(plan):
        example = sample(plan, severity, kind, shape)
        for delivery in plan_deliveries(example.event, example.incident, plan):
            found.setdefault((delivery.audience, delivery.channel), example)
    return [(audience, channel, example) for (audience, channel), example in found.items()]


def check_plan(plan: Plan, settings: Settings) -> PlanReport:
    """Every message the plan can send, rendered and checked; template and secret problems."""
    renderer = Renderer(RenderContext.of(plan, settings))
    rows = [
        CheckRow(
            "",
            "",
            "",
            "",
            ok=False,
            reasons=[_where(p.path, p.line, p.reason)],
            kind=RowKind.TEMPLATE,
        )
        for p in renderer.engine.check_syntax()
    ]
    for severity in Severity:
        for kind in EventKind:
            for audience, channel, example in audience_channels(plan, severity, kind):
                rows.append(_check_one(renderer, example, audience, channel))
    rows += _unset_secrets(plan)
    return PlanReport(rows)


def preview(
    plan: Plan,
    settings: Settings,
    event_kind: EventKind,
    severity: Severity,
    audience: str | None = None,
) -> list[tuple[str, ChannelName, RenderedMessage]]:
    """The messages a sample ``event_kind`` event of ``severity`` produces, per channel.

    Raises RenderFailed or MessageTooLong for a message that cannot be rendered.
    """
    renderer = Renderer(RenderContext.of(plan, settings))
    return [
        (name, channel, renderer.render(example.event, example.incident, name, channel))
        for name, channel, example in audience_channels(plan, severity, event_kind)
        if audience is None or name == audience
    ]


def _check_one(
    renderer: Renderer, example: Sample, audience: str, channel: ChannelName
) -> CheckRow:
    severity, kind = example.incident.severity.sev, _kind(example).value
    try:
        message = renderer.render(example.event, example.incident, audience, channel)
    except (RenderFailed, MessageTooLong) as exc:
        return CheckRow(
            severity, kind, audience, channel.value, ok=False, reasons=[f"cannot render: {exc}"]
        )
    reasons: list[str] = []
    if renderer.context.plan.audiences[audience].public:
        reasons = _content_problems(renderer.context, example, channel, message)
    return CheckRow(
        severity,
        kind,
        audience,
        channel.value,
        ok=not reasons,
        reasons=reasons,
        shortened=message.shortened,
    )


def _kind(example: Sample) -> EventKind:
    return kind_of(example.event)


def _content_problems(
    context: RenderContext, example: Sample, channel: ChannelName, message: RenderedMessage
) -> list[str]:
    expectations = expectations_for(context, example)
    limit = limit_for(channel.value, max_sms_segments=context.plan.sms_max_segments)
    findings = check_message(message.text, expectations, limit, shortened=message.shortened)
    reasons = [f.reason for f in findings if not f.ok and not _moot(f, channel)]
    if channel is ChannelName.EMAIL:
        subject = check_message(message.title, expectations)
        reasons += [f"subject: {f.reason}" for f in subject if f.element == "jargon" and not f.ok]
    return reasons


def _moot(finding: Finding, channel: ChannelName) -> bool:
    """A status page post need not link to the status page: readers are already there."""
    return channel is ChannelName.STATUS_PAGE and finding.element == "where to follow"


def expectations_for(context: RenderContext, example: Sample) -> Expectations:
    """What a public message about ``example`` must say: the very values the renderer used."""
    values = template_values(example.event, example.incident, context, "", public=True)
    return Expectations(
        event=values["kind"],
        impact=values["impact"],
        timestamp=values["timestamp"],
        next_update=values["next_update"],
        status_url=values["status_url"],
        jargon=example.jargon,
    )


def _unset_secrets(plan: Plan) -> list[CheckRow]:
    return [
        CheckRow(
            "",
            "",
            audience,
            channel.value,
            ok=True,
            reasons=[f"{variable} is not set: messages to {address} go to the local outbox"],
            kind=RowKind.ENVIRONMENT,
        )
        for audience, channel, address, variable in plan.secret_variables()
        if not os.environ.get(variable)
    ]


def _where(path: str, line: int | None, reason: str) -> str:
    return f"{path}: {reason}" if line is None else f"{path} line {line}: {reason}"


__all__ = [
    "SAMPLE_LABELS",
    "CheckRow",
    "PlanReport",
    "RowKind",
    "Sample",
    "SampleShape",
    "audience_channels",
    "check_plan",
    "expectations_for",
    "preview",
    "sample",
]
