"""What the ops pages show, as view models. Pure: the routes load, these decide.

Times are shown in the plan's first time zone, to the second, each with its ISO form
for ``<time datetime>``. Recipients come from the delivery log, which masks them, or
are masked here (the outbox keeps full addresses); nothing here adds personal data.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, fields
from datetime import UTC, datetime, tzinfo
from typing import Any, Final
from urllib.parse import quote, urlencode

from services.dispatcher.dead_letters import ReplayResult, ReplayStatus
from services.dispatcher.delivery_query import (
    DeliveryQuery,
    InvalidCursor,
    QueryError,
    decode_cursor,
)
from services.dispatcher.outbox import OutboxMessage
from shared.contracts import DeliveryRecorded, DeliveryStatus, Incident, Severity
from shared.plan import ChannelName, Plan
from shared.redaction import mask_recipient

PAGE_SIZE: Final = 50
MAX_PAGE_SIZE: Final = 200

NAV: Final = (
    ("/ops", "Overview"),
    ("/ops/deliveries", "Deliveries"),
    ("/ops/dead-letters", "Dead letters"),
    ("/ops/outbox", "Outbox"),
)
SEVERITY_TONES: Final = {
    Severity.CRITICAL: "critical",
    Severity.ERROR: "major",
    Severity.WARNING: "minor",
    Severity.INFO: "info",
}
STATUS_TONES: Final = {
    DeliveryStatus.SENT: "ok",
    DeliveryStatus.QUEUED: "info",
    DeliveryStatus.HELD: "minor",
    DeliveryStatus.RETRYING: "minor",
    DeliveryStatus.FAILED: "critical",
    DeliveryStatus.DEAD: "critical",
    DeliveryStatus.SUPPRESSED: "info",
}
_FILTER_LABELS: Final = {
    "incident_id": "Incident",
    "since": "Since",
    "until": "Until",
    "limit": "Per page",
    "before": "Page",
    "status": "Status",
}


# Shared pieces


@dataclass(frozen=True)
class Moment:
    """A time as shown (``2026-11-23 14:30:05 UTC``) and as machines read it (ISO 8601)."""

    iso: str
    text: str


def moment(at: datetime, zone: tzinfo) -> Moment:
    local = at.astimezone(zone)
    return Moment(at.isoformat(), f"{local:%Y-%m-%d %H:%M:%S} {local.tzname()}")


@dataclass(frozen=True)
class NavLink:
    href: str
    label: str
    current: bool


def nav(current: str) -> tuple[NavLink, ...]:
    return tuple(NavLink(href, label, href == current) for href, label in NAV)


@dataclass(frozen=True)
class Option:
    value: str
    label: str
    selected: bool


def options(values: Iterable[str], chosen: str) -> tuple[Option, ...]:
    """A select's options: "any" first, then ``values``."""
    return (
        Option("", "any", not chosen),
        *(Option(value, value, value == chosen) for value in values),
    )


@dataclass(frozen=True)
class Flash:
    """A one-time message shown after a form did something."""

    text: str
    tone: str = "ok"


def encode_flash(flash: Flash) -> str:
    raw = json.dumps({"text": flash.text, "tone": flash.tone}).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_flash(value: str | None) -> Flash | None:
    """The flash in a cookie, or None if there is none or it is not one of ours."""
    if not value or len(value) > 4000:
        return None
    try:
        data = json.loads(base64.urlsafe_b64decode(value + "=" * (-len(value) % 4)))
    except (binascii.Error, ValueError):
        return None
    if not isinstance(data, dict):
        return None
    text, tone = data.get("text"), data.get("tone")
    if not isinstance(text, str) or tone not in {"ok", "minor", "major", "critical", "info"}:
        return None
    return Flash(text[:500], tone)


def incident_href(incident_id: str) -> str:
    return f"/ops/incidents/{quote(incident_id, safe='')}"


# The delivery log


@dataclass(frozen=True)
class DeliveryFilters:
    """The deliveries page's query string, as typed (each value stripped, "" when absent)."""

    incident_id: str = ""
    channel: str = ""
    status: str = ""
    audience: str = ""
    since: str = ""
    until: str = ""
    limit: str = ""
    before: str = ""

    @classmethod
    def of(cls, params: Mapping[str, str]) -> DeliveryFilters:
        return cls(**{f.name: params.get(f.name, "").strip()[:200] for f in fields(cls)})

    def query(self) -> DeliveryQuery:
        """The delivery log query; raises :class:`QueryError` naming the field at fault."""
        status = None
        if self.status:
            try:
                status = DeliveryStatus(self.status)
            except ValueError:
                raise QueryError("status", f"unknown status {self.status!r}") from None
        try:
            before = decode_cursor(self.before) if self.before else None
        except InvalidCursor as exc:
            raise QueryError("before", str(exc)) from exc
        return DeliveryQuery(
            incident_id=self.incident_id or None,
            channels=frozenset({self.channel} if self.channel else ()),
            statuses=frozenset({status} if status else ()),
            audiences=frozenset({self.audience} if self.audience else ()),
            since=_moment_field("since", self.since),
            until=_moment_field("until", self.until),
            limit=self._limit(),
            before=before,
        )

    def href(self, before: str | None = None) -> str:
        """This page's URL with ``before`` as its cursor (None: the newest page)."""
        values = {f.name: getattr(self, f.name) for f in fields(self)}
        values["before"] = before or ""
        query = urlencode({k: v for k, v in values.items() if v})
        return f"/ops/deliveries?{query}" if query else "/ops/deliveries"

    def _limit(self) -> int:
        if not self.limit:
            return PAGE_SIZE
        if not self.limit.isdigit() or not 1 <= int(self.limit) <= MAX_PAGE_SIZE:
            raise QueryError("limit", f"must be a whole number from 1 to {MAX_PAGE_SIZE}")
        return int(self.limit)


def _moment_field(name: str, text: str) -> datetime | None:
    """A time from a form: ISO 8601; without a zone (``datetime-local``), UTC."""
    if not text:
        return None
    try:
        parsed = datetime.fromisoformat(text)
    except ValueError:
        raise QueryError(name, "not a date and time, like 2026-11-23T14:30") from None
    return parsed if parsed.utcoffset() is not None else parsed.replace(tzinfo=UTC)


def filter_problem(error: QueryError) -> str:
    return f"{_FILTER_LABELS.get(error.field, error.field.capitalize())}: {error.reason}"


@dataclass(frozen=True)
class DeliveryRow:
    recorded: Moment
    incident_id: str
    incident_href: str
    event_id: str
    event: str
    channel: str
    audience: str
    recipient: str
    status: str
    tone: str
    attempt: int
    detail: str


def delivery_row(record: DeliveryRecorded, zone: tzinfo) -> DeliveryRow:
    return DeliveryRow(
        recorded=moment(record.recorded_at, zone),
        incident_id=record.incident_id,
        incident_href=incident_href(record.incident_id),
        event_id=record.event_id,
        event=event_label(record.event_id, record.incident_id),
        channel=record.channel,
        audience=record.audience or "",
        recipient=mask_recipient(record.recipient),  # already masked by the log; idempotent
        status=record.status.value,
        tone=STATUS_TONES[record.status],
        attempt=record.attempt,
        detail=" ".join(part for part in (record.error, record.note) if part),
    )


def filter_options(filters: DeliveryFilters, plan: Plan) -> dict[str, tuple[Option, ...]]:
    return {
        "channels": options((c.value for c in ChannelName), filters.channel),
        "statuses": options((s.value for s in DeliveryStatus), filters.status),
        "audiences": options(sorted(plan.audiences), filters.audience),
    }


def datetime_local(text: str) -> str:
    """A filter's time as a ``datetime-local`` input shows it (UTC), or "" if unparsable."""
    try:
        parsed = _moment_field("since", text)
    except QueryError:
        return ""
    return "" if parsed is None else parsed.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S")


# One incident: its updates, and who heard what


@dataclass(frozen=True)
class TimelineRow:
    at: Moment
    status: str
    message: str
    author: str


@dataclass(frozen=True)
class Heard:
    recipient: str
    status: str
    tone: str
    attempt: int
    at: Moment
    detail: str


@dataclass(frozen=True)
class HeardGroup:
    audience: str
    channel: str
    recipients: tuple[Heard, ...]


@dataclass(frozen=True)
class EventHeard:
    event_id: str
    label: str
    first_at: Moment
    summary: str
    groups: tuple[HeardGroup, ...]


def event_label(event_id: str, incident_id: str) -> str:
    """``inc-1:3:incident.updated`` -> ``Updated (revision 3)``; ``inc-1:update:2`` ->
    ``Scheduled update #2``; anything else, the id without the incident's prefix."""
    rest = event_id.removeprefix(f"{incident_id}:")
    first, _, second = rest.partition(":")
    if first == "update" and second.isdigit():
        return f"Scheduled update #{second}"
    if first.isdigit() and second.startswith("incident."):
        words = second.removeprefix("incident.").replace("_", " ").capitalize()
        return f"{words} (revision {first})"
    return rest or event_id


def latest_per_delivery(records: Iterable[DeliveryRecorded]) -> list[DeliveryRecorded]:
    """Each delivery's latest record (the later ``recorded_at``; on a tie, the first met,
    as the log lists newest first)."""
    latest: dict[str, DeliveryRecorded] = {}
    for record in records:
        seen = latest.get(record.delivery_id)
        if seen is None or record.recorded_at > seen.recorded_at:
            latest[record.delivery_id] = record
    return list(latest.values())


def who_heard_what(
    records: Iterable[DeliveryRecorded], incident_id: str, zone: tzinfo
) -> tuple[EventHeard, ...]:
    """Per event (oldest first), per audience and channel, each recipient's latest status."""
    all_records = list(records)
    first_at: dict[str, datetime] = {}
    for record in all_records:
        first_at[record.event_id] = min(
            first_at.get(record.event_id, record.started_at), record.started_at
        )
    by_event: dict[str, dict[tuple[str, str], list[DeliveryRecorded]]] = {}
    for record in latest_per_delivery(all_records):
        groups = by_event.setdefault(record.event_id, {})
        groups.setdefault((record.audience or "", record.channel), []).append(record)
    events = sorted(by_event, key=lambda event: (first_at[event], event))
    return tuple(
        EventHeard(
            event_id=event,
            label=event_label(event, incident_id),
            first_at=moment(first_at[event], zone),
            summary=_status_counts(r for rs in by_event[event].values() for r in rs),
            groups=tuple(
                HeardGroup(audience, channel, _heard(by_event[event][audience, channel], zone))
                for audience, channel in sorted(by_event[event])
            ),
        )
        for event in events
    )


def _heard(records: list[DeliveryRecorded], zone: tzinfo) -> tuple[Heard, ...]:
    return tuple(
        Heard(
            recipient=mask_recipient(r.recipient),
            status=r.status.value,
            tone=STATUS_TONES[r.status],
            attempt=r.attempt,
            at=moment(r.recorded_at, zone),
            detail=" ".join(part for part in (r.error, r.note) if part),
        )
        for r in sorted(records, key=lambda r: (r.recipient, r.delivery_id))
    )


def _status_counts(records: Iterable[DeliveryRecorded]) -> str:
    counts = dict.fromkeys(DeliveryStatus, 0)
    for record in records:
        counts[record.status] += 1
    return ", ".join(f"{n} {status.value}" for status, n in counts.items() if n)


def timeline_rows(incident: Incident, zone: tzinfo) -> tuple[TimelineRow, ...]:
    return tuple(
        TimelineRow(moment(e.at, zone), e.status.value, e.message, e.author.value)
        for e in incident.timeline
    )


# Dead letters and the outbox


@dataclass(frozen=True)
class DeadLetterRow:
    id: str
    kind: str
    reason: str
    error: str
    dead_at: Moment
    what: str
    incident_id: str
    incident_href: str
    replayed: Moment | None
    replay_href: str


def dead_letter_row(view: Mapping[str, Any], zone: tzinfo) -> DeadLetterRow:
    """One row from a dead letter's ``view()`` (recipient already masked there)."""
    if view["kind"] == "delivery":
        what = (
            f"{view['channel']} to {view['recipient']} ({view['audience']}), "
            f"attempt {view['attempt']}"
        )
    else:
        what = f"a message on {view['stream']}"
    incident_id = str(view.get("incident_id") or "")
    replayed = view.get("replayed_at")
    return DeadLetterRow(
        id=str(view["id"]),
        kind=str(view["kind"]),
        reason=str(view["reason"]),
        error=str(view.get("error") or ""),
        dead_at=moment(datetime.fromisoformat(str(view["dead_at"])), zone),
        what=what,
        incident_id=incident_id,
        incident_href=incident_href(incident_id) if incident_id else "",
        replayed=moment(datetime.fromisoformat(str(replayed)), zone) if replayed else None,
        replay_href=f"/ops/dead-letters/{quote(str(view['id']), safe='')}/replay",
    )


def replay_flash(entry_id: str, result: ReplayResult | None) -> Flash:
    if result is None:
        return Flash(f"There is no dead letter {entry_id}.", "critical")
    if result.status is ReplayStatus.REPLAYED:
        return Flash(f"Replayed dead letter {entry_id}: {result.detail}.", "ok")
    return Flash(f"Dead letter {entry_id} was not replayed: {result.detail}.", "minor")


def replay_all_flash(counts: Mapping[ReplayStatus, int]) -> Flash:
    total = sum(counts.values())
    if total == 0:
        return Flash("There was nothing to replay.", "info")
    replayed = counts.get(ReplayStatus.REPLAYED, 0)
    others = ", ".join(
        f"{n} {status.value.replace('_', ' ')}"
        for status, n in counts.items()
        if n and status is not ReplayStatus.REPLAYED
    )
    text = f"Replayed {replayed} of {total} dead letters" + (f" ({others})." if others else ".")
    return Flash(text, "ok" if replayed == total else "minor")


@dataclass(frozen=True)
class OutboxRow:
    channel: str
    to: str
    subject: str
    text: str
    queued: Moment
    incident_id: str
    incident_href: str
    reason: str


def outbox_row(message: OutboxMessage, zone: tzinfo) -> OutboxRow:
    return OutboxRow(
        channel=message.channel,
        to=mask_recipient(message.to),
        subject=message.subject,
        text=message.text,
        queued=moment(message.queued_at, zone),
        incident_id=message.incident_id,
        incident_href=incident_href(message.incident_id),
        reason=message.reason,
    )
