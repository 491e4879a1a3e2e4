"""Event contracts: frozen data that crosses a stream or a process boundary.

Every model carries ``schema_version`` so a consumer can tell an old payload
from a new one. Events are named in the past tense and carry no behaviour.
"""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Annotated, Any, Final, Literal

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, TypeAdapter

SCHEMA_VERSION: Literal[1] = 1


class Contract(BaseModel):
    """Base of every contract: immutable, strict about unknown fields."""

    model_config = ConfigDict(frozen=True, extra="forbid")


class Severity(StrEnum):
    """Incident severity, highest first (PagerDuty Events v2 vocabulary)."""

    CRITICAL = "critical"
    ERROR = "error"
    WARNING = "warning"
    INFO = "info"

    @property
    def rank(self) -> int:
        """0 for the most severe."""
        return _SEVERITY_RANKS[self]

    @property
    def sev(self) -> str:
        """The incident-management name: SEV1 (critical) to SEV4 (info)."""
        return f"SEV{self.rank + 1}"

    @classmethod
    def parse(cls, text: str) -> Severity:
        """``"SEV1"``..``"SEV4"`` or a value (``"critical"``), in any case."""
        word = text.strip().lower()
        for severity in cls:
            if word in (severity.value, severity.sev.lower()):
                return severity
        names = ", ".join(f"{s.sev}/{s.value}" for s in cls)
        raise ValueError(f"unknown severity {text!r}; expected one of {names}")


def most_severe(severities: list[Severity]) -> Severity:
    """The highest of ``severities`` (INFO when empty)."""
    return min(severities, key=lambda s: s.rank, default=Severity.INFO)


_SEVERITY_RANKS: Final = {severity: rank for rank, severity in enumerate(Severity)}
"""Each severity's rank, worked out once (ingest ranks every alert it correlates)."""


class AlertStatus(StrEnum):
    FIRING = "firing"
    RESOLVED = "resolved"


class IncidentStatus(StrEnum):
    """Where an incident stands, in the words of public status pages."""

    INVESTIGATING = "investigating"  # something is wrong; nobody has said why yet
    IDENTIFIED = "identified"  # a human acknowledged it (or named the cause)
    MONITORING = "monitoring"  # every alert recovered; held before "resolved"
    RESOLVED = "resolved"

    @property
    def is_open(self) -> bool:
        return self is not IncidentStatus.RESOLVED


class UpdateAuthor(StrEnum):
    """Who said it: monitoring (automatic) or an operator (a human)."""

    MONITORING = "monitoring"
    OPERATOR = "operator"


class TimelineEntry(Contract):
    """One step of an incident's public story."""

    at: AwareDatetime
    status: IncidentStatus
    message: str
    author: UpdateAuthor = UpdateAuthor.MONITORING


class Alert(Contract):
    """One alert from any monitoring source, normalized."""

    schema_version: Literal[1] = SCHEMA_VERSION
    source: str
    group_key: str
    fingerprint: str
    status: AlertStatus
    severity: Severity
    summary: str
    description: str = ""
    service: str | None = None
    impact: str | None = None
    labels: dict[str, str] = Field(default_factory=dict)
    annotations: dict[str, str] = Field(default_factory=dict)
    starts_at: AwareDatetime | None = None
    ends_at: AwareDatetime | None = None
    generator_url: str | None = None


class AlertState(Contract):
    """What an incident remembers of one of its alerts."""

    fingerprint: str
    status: AlertStatus
    severity: Severity
    summary: str
    description: str = ""
    labels: dict[str, str] = Field(default_factory=dict)
    starts_at: AwareDatetime | None = None
    ends_at: AwareDatetime | None = None
    links: dict[str, str] = Field(default_factory=dict)
    """For internal readers: generator, runbook, dashboard, panel and silence URLs, by name."""


class Incident(Contract):
    """A group of alerts that share a cause, and what customers are told about it."""

    schema_version: Literal[1] = SCHEMA_VERSION
    id: str
    key: str
    source: str
    title: str
    service: str | None = None
    impact: str
    customer_title: str | None = None  # in customers' words (a customer_summary annotation)
    severity: Severity
    status: IncidentStatus
    opened_at: AwareDatetime
    updated_at: AwareDatetime
    resolved_at: AwareDatetime | None = None
    alerts: tuple[AlertState, ...] = ()
    truncated_alerts: int = 0
    external_url: str | None = None
    revision: int = Field(default=1, ge=1)  # +1 with every stored change; event ids use it
    acknowledged_at: AwareDatetime | None = None
    acknowledged_by: str | None = None
    monitoring_since: AwareDatetime | None = None
    resolves_at: AwareDatetime | None = None  # the end of the "monitoring" hold, when armed
    components: tuple[str, ...] = ()
    headline_by_operator: bool = False  # an operator's title/impact beat the alerts' words
    timeline: tuple[TimelineEntry, ...] = ()
    postmortem_url: str | None = None
    postmortem_summary: str | None = None

    @property
    def is_open(self) -> bool:
        return self.status.is_open

    @property
    def firing_alerts(self) -> tuple[AlertState, ...]:
        return tuple(a for a in self.alerts if a.status is AlertStatus.FIRING)

    @property
    def began_at(self) -> datetime:
        """When the trouble began: the earliest alert start, else when Clarion heard of it."""
        return min([a.starts_at for a in self.alerts if a.starts_at], default=self.opened_at)


class _IncidentEventBase(Contract):
    schema_version: Literal[1] = SCHEMA_VERSION
    event_id: str
    occurred_at: AwareDatetime
    incident: Incident
    next_update_at: AwareDatetime | None = None
    """The next scheduled update this event promises (the plan's cadence); None: none."""

    @property
    def incident_id(self) -> str:
        return self.incident.id


class IncidentOpened(_IncidentEventBase):
    type: Literal["incident.opened"] = "incident.opened"


class IncidentUpdated(_IncidentEventBase):
    type: Literal["incident.updated"] = "incident.updated"
    changes: tuple[str, ...] = ()
    author: UpdateAuthor = UpdateAuthor.MONITORING
    message: str | None = None  # an operator's own words, when an operator posted it


class IncidentSeverityChanged(_IncidentEventBase):
    type: Literal["incident.severity_changed"] = "incident.severity_changed"
    previous_severity: Severity


class IncidentResolved(_IncidentEventBase):
    type: Literal["incident.resolved"] = "incident.resolved"


class IncidentPostmortemPublished(_IncidentEventBase):
    """The post-mortem of a resolved incident is out: the people who were told hear of it."""

    type: Literal["incident.postmortem_published"] = "incident.postmortem_published"


IncidentChange = (
    IncidentOpened
    | IncidentUpdated
    | IncidentSeverityChanged
    | IncidentResolved
    | IncidentPostmortemPublished
)
"""Any event about an incident (the union, for type hints)."""


class IncidentAckOverdue(_IncidentEventBase):
    """Nobody acknowledged an open incident within the plan's ``acknowledge_within``.

    An internal escalation: the scheduler publishes it (ingest never does), and the
    dispatcher sends it to internal audiences only, never to a public one.
    ``incident`` is the incident as stored when the timer fired; ``event_id`` is
    the same however often the timer fires (:func:`ack_overdue_event_id`).
    """

    type: Literal["incident.ack_overdue"] = "incident.ack_overdue"
    due_at: AwareDatetime
    """When acknowledgement was due: ``opened_at`` + the severity's ``acknowledge_within``."""


class IncidentPostmortemDue(_IncidentEventBase):
    """A resolved incident still has no post-mortem, ``postmortem_reminder_after`` on.

    An internal reminder from the scheduler, for internal audiences only. The
    customers hear of the post-mortem itself (``IncidentPostmortemPublished``).
    """

    type: Literal["incident.postmortem_due"] = "incident.postmortem_due"
    due_at: AwareDatetime
    """When the reminder was due: ``resolved_at`` + the plan's ``postmortem_reminder_after``."""


IncidentEscalation = IncidentAckOverdue | IncidentPostmortemDue
"""The scheduler's internal events about an incident: they change nothing about it."""

ESCALATION_EVENT_TYPES: tuple[type[IncidentAckOverdue], type[IncidentPostmortemDue]] = (
    IncidentAckOverdue,
    IncidentPostmortemDue,
)
"""For ``isinstance``: the events on ``INCIDENT_EVENTS`` that are not changes to an incident."""

IncidentEvent = Annotated[IncidentChange | IncidentEscalation, Field(discriminator="type")]
INCIDENT_EVENT: TypeAdapter[IncidentEvent] = TypeAdapter(IncidentEvent)


def ack_overdue_event_id(incident_id: str, severity: Severity) -> str:
    """Deterministic: one escalation per incident and severity, however often it fires."""
    return f"{incident_id}:ack-overdue:{severity.sev}"


def postmortem_due_event_id(incident_id: str, resolved_at: datetime) -> str:
    """Deterministic: one reminder per resolution, however often it fires."""
    return f"{incident_id}:postmortem-due:{resolved_at.isoformat()}"


def incident_event_id(incident_id: str, revision: int, event_type: str) -> str:
    """Deterministic: the same change of the same incident always has the same id."""
    return f"{incident_id}:{revision}:{event_type}"


class ResolutionDue(Contract):
    """The scheduler's word that an incident's "monitoring" hold is over."""

    schema_version: Literal[1] = SCHEMA_VERSION
    type: Literal["incident.resolution_due"] = "incident.resolution_due"
    event_id: str
    incident_id: str
    monitoring_since: AwareDatetime
    due_at: AwareDatetime
    emitted_at: AwareDatetime


class UpdateDue(Contract):
    """The scheduler's word that an incident owes its audience an update now."""

    schema_version: Literal[1] = SCHEMA_VERSION
    type: Literal["update.due"] = "update.due"
    event_id: str
    incident_id: str
    sequence: int = Field(ge=1)
    due_at: AwareDatetime
    emitted_at: AwareDatetime
    next_update_at: AwareDatetime | None  # None: the severity has no scheduled updates now


class DeliveryStatus(StrEnum):
    """Where one delivery attempt ended. SENT, FAILED, DEAD and SUPPRESSED are final."""

    QUEUED = "queued"  # waiting for its turn: a rate limit, or a replay on its way
    SENT = "sent"
    HELD = "held"  # waiting for a human's approval (or the auto-publish timeout)
    RETRYING = "retrying"
    FAILED = "failed"
    DEAD = "dead"
    SUPPRESSED = "suppressed"


class DeliveryRecorded(Contract):
    """One delivery attempt, as written to the delivery log."""

    schema_version: Literal[1] = SCHEMA_VERSION
    type: Literal["delivery.recorded"] = "delivery.recorded"
    delivery_id: str
    incident_id: str
    event_id: str
    channel: str
    recipient: str
    status: DeliveryStatus
    attempt: int = Field(ge=1)
    audience: str | None = None
    error: str | None = None
    provider_message_id: str | None = None
    shortened: bool = False  # the message was cut to fit the channel (never silently)
    started_at: AwareDatetime
    recorded_at: AwareDatetime
    latency_ms: float | None = None  # the provider call alone, when one was made
    note: str | None = None  # e.g. "no credentials: kept in the local outbox"
    possible_duplicate: bool = False  # an earlier attempt died mid-send (non-idempotent channel)
    next_attempt_at: AwareDatetime | None = None  # when RETRYING or QUEUED: the scheduled try


class DeliveryJob(Contract):
    """One message for one recipient on one channel: what a channel worker sends.

    The message itself is rendered once per event, audience and channel and stored
    under the event (``rendering``), so a job stays small and every retry sends the
    same words. ``expects`` is the delivery state this job may act on: ``""`` for a
    first attempt, ``retry:N`` for a scheduled one; any other state means another
    job already owns the delivery, and this one does nothing.
    """

    schema_version: Literal[1] = SCHEMA_VERSION
    type: Literal["delivery.job"] = "delivery.job"
    delivery_id: str
    event_id: str
    event_type: str
    incident_id: str
    channel: str
    recipient: str
    audience: str
    public: bool = False
    occurred_at: AwareDatetime
    attempt: int = Field(default=1, ge=1)
    last_attempt: int = Field(default=1, ge=1)  # the attempt after which it goes to dead letters
    expects: str = ""
    suppressed_reason: str | None = None


class DeadLetter(Contract):
    """Something that could not be done, kept with its error so it can be replayed.

    ``kind="message"``: a stream entry no consumer could process (``payload`` is the
    entry's body; replay adds it to ``stream`` again). ``kind="delivery"``: a delivery
    whose retries ran out (``payload`` is its :class:`DeliveryJob`; replay sends it
    again under the same idempotency key).
    """

    schema_version: Literal[1] = SCHEMA_VERSION
    kind: Literal["message", "delivery"] = "message"
    stream: str
    group: str
    entry_id: str | None = None
    delivery_count: int | None = None
    reason: str
    error: str | None = None
    payload: str
    dead_at: AwareDatetime
    delivery_id: str | None = None
    incident_id: str | None = None
    channel: str | None = None
    attempt: int | None = None


class ScheduledDelivery(Contract):
    """A delivery job the scheduler puts back on its channel's stream at ``due_at``."""

    incident_id: str
    due_at: AwareDatetime
    job: DeliveryJob


class ApprovalRequested(Contract):
    """Customer-facing messages of an event wait for a human, until ``auto_publish_at``."""

    schema_version: Literal[1] = SCHEMA_VERSION
    type: Literal["approval.requested"] = "approval.requested"
    event_id: str  # the held incident event (or update)
    incident_id: str
    requested_at: AwareDatetime
    auto_publish_at: AwareDatetime


class ApprovalGranted(Contract):
    """Publish the held messages of ``event_id``: a person approved, or time ran out."""

    schema_version: Literal[1] = SCHEMA_VERSION
    type: Literal["approval.granted"] = "approval.granted"
    event_id: str
    incident_id: str
    granted_at: AwareDatetime
    by: str  # who approved, or "auto-publish" when the timeout fired
    automatic: bool = False


ApprovalEvent = Annotated[ApprovalRequested | ApprovalGranted, Field(discriminator="type")]
APPROVAL_EVENT: TypeAdapter[ApprovalEvent] = TypeAdapter(ApprovalEvent)


def dump(model: BaseModel) -> dict[str, Any]:
    return model.model_dump(mode="json")
