"""The communication plan, as validated data: who hears what, on which channel, how often.

The plan is written before incidents happen (YAML, see ``default_plan.yaml``) and
every service reads it: ingest for severity words and the monitoring hold, the
scheduler for the update cadence, the dispatcher for routes, audiences, templates
and approval. Secrets are never written inline: a recipient names the environment
variable that holds its token or webhook URL (``*_env`` fields).
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Annotated, Any, Final, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    HttpUrl,
    model_validator,
)

from shared.contracts import Severity
from shared.settings import Duration, SeverityName

PLAN_VERSION: Final = 1


class EventKind(StrEnum):
    """What happened to an incident, as routes name it."""

    OPENED = "opened"
    UPDATED = "updated"
    SEVERITY_CHANGED = "severity_changed"
    UPDATE_DUE = "update_due"
    RESOLVED = "resolved"
    POSTMORTEM_PUBLISHED = "postmortem_published"
    ACK_OVERDUE = "ack_overdue"
    """Nobody acknowledged the incident within its severity's ``acknowledge_within``."""
    POSTMORTEM_DUE = "postmortem_due"
    """The incident was resolved ``postmortem_reminder_after`` ago and has no post-mortem."""

    @property
    def internal_only(self) -> bool:
        """Never sent to a public audience, nor on a channel anyone can read."""
        return self in INTERNAL_EVENT_KINDS


INTERNAL_EVENT_KINDS: Final = frozenset({EventKind.ACK_OVERDUE, EventKind.POSTMORTEM_DUE})
"""Escalations and reminders for the team: a route may name them, but they never go public."""


class ChannelName(StrEnum):
    EMAIL = "email"
    SMS = "sms"
    MASTODON = "mastodon"
    BLUESKY = "bluesky"
    X = "x"
    SLACK = "slack"
    DISCORD = "discord"
    CHAT_WEBHOOK = "chat_webhook"
    STATUS_PAGE = "status_page"
    WEBHOOK = "webhook"


SOCIAL_CHANNELS: Final = frozenset({ChannelName.MASTODON, ChannelName.BLUESKY, ChannelName.X})
CHAT_CHANNELS: Final = frozenset({ChannelName.SLACK, ChannelName.DISCORD, ChannelName.CHAT_WEBHOOK})
BROADCAST_CHANNELS: Final = SOCIAL_CHANNELS | {ChannelName.STATUS_PAGE}
"""Channels anyone can read, whatever the audience says: internal events never go there."""

_ENV_NAME = re.compile(r"^[A-Z_][A-Z0-9_]*$")
_E164 = re.compile(r"^\+[1-9][0-9]{6,14}$")
_EMAIL = re.compile(r"^[^@\s<>\"',;]+@[^@\s<>\"',;]+\.[^@\s<>\"',;.]+$")


def _env_name(value: str) -> str:
    if not _ENV_NAME.match(value):
        raise ValueError(
            f"{value!r} is not an environment variable name (write the variable's name, "
            "like CLARION_SLACK_WEBHOOK, never the secret itself)"
        )
    return value


def _e164(value: str) -> str:
    if not _E164.match(value):
        raise ValueError(f"{value!r} is not a phone number in E.164 form, like +14155550100")
    return value


def _email(value: str) -> str:
    if not _EMAIL.match(value):
        raise ValueError(f"{value!r} is not an email address")
    return value.strip()


def _zone(value: str) -> str:
    try:
        ZoneInfo(value)
    except (ZoneInfoNotFoundError, ValueError):
        raise ValueError(
            f"unknown time zone {value!r}; use an IANA name like Europe/Paris"
        ) from None
    return value


EnvName = Annotated[str, AfterValidator(_env_name)]
PhoneNumber = Annotated[str, AfterValidator(_e164)]
EmailAddress = Annotated[str, AfterValidator(_email)]
ZoneName = Annotated[str, AfterValidator(_zone)]


class PlanModel(BaseModel):
    """Strict: unknown keys are errors (a typo must never silently drop a recipient)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    @model_validator(mode="before")
    @classmethod
    def _no_inline_secrets(cls, data: Any) -> Any:
        if isinstance(data, Mapping):
            for key in data:
                if f"{key}_env" in cls.model_fields:
                    raise ValueError(
                        f"{key!r}: secrets are never written in the plan; write {key}_env: "
                        "the name of the environment variable that holds it"
                    )
        return data


class SeverityPolicy(PlanModel):
    """What one severity means and how often its open incidents are updated."""

    name: str = Field(min_length=1, max_length=80)
    """In customers' words: "a major outage"."""
    update_every: Duration | None = None
    """The update cadence while open; null means updates on open and on resolve only."""
    acknowledge_within: Duration | None = None
    """Escalate internally when no human has acknowledged within this time."""
    internal_only: bool = False
    """Never routed to a public audience."""

    @model_validator(mode="after")
    def _positive(self) -> SeverityPolicy:
        for name in ("update_every", "acknowledge_within"):
            value = getattr(self, name)
            if value is not None and value < timedelta(seconds=1):
                raise ValueError(f"{name} must be at least 1 second, not {value}")
        return self


class MastodonAccount(PlanModel):
    instance: HttpUrl
    access_token_env: EnvName

    @property
    def address(self) -> str:
        return f"mastodon:{str(self.instance).rstrip('/')}"


class BlueskyAccount(PlanModel):
    handle: str = Field(min_length=3)
    app_password_env: EnvName
    service: HttpUrl = HttpUrl("https://bsky.social")

    @property
    def address(self) -> str:
        return f"bluesky:{self.handle}"


class XAccount(PlanModel):
    account: str = Field(min_length=1)
    access_token_env: EnvName

    @property
    def address(self) -> str:
        return f"x:{self.account}"


class ChatWebhook(PlanModel):
    """A Slack, Discord or generic chat webhook: its URL is a secret, held in the environment."""

    name: str = Field(min_length=1, max_length=80)
    url_env: EnvName

    @property
    def address(self) -> str:
        return self.name


class SignedWebhook(PlanModel):
    """A JSON webhook signed with Standard Webhooks headers."""

    name: str = Field(min_length=1, max_length=80)
    url: HttpUrl
    secret_env: EnvName | None = None

    @property
    def address(self) -> str:
        return self.name


STATUS_PAGE_ADDRESS: Final = "status-page"


class Audience(PlanModel):
    """A group of people and where they hear from us."""

    public: bool = False
    """Customer-facing: plain words only, approval applies, the content check applies."""
    description: str = ""
    email: tuple[EmailAddress, ...] = ()
    sms: tuple[PhoneNumber, ...] = ()
    mastodon: tuple[MastodonAccount, ...] = ()
    bluesky: tuple[BlueskyAccount, ...] = ()
    x: tuple[XAccount, ...] = ()
    slack: tuple[ChatWebhook, ...] = ()
    discord: tuple[ChatWebhook, ...] = ()
    chat_webhook: tuple[ChatWebhook, ...] = ()
    webhook: tuple[SignedWebhook, ...] = ()
    status_page: bool = False
    subscribers: bool = False
    """People who subscribed by email on the status page (and confirmed) hear too, for the
    incidents that touch the components they chose."""

    @model_validator(mode="after")
    def _subscribers_are_public(self) -> Audience:
        if self.subscribers and not self.public:
            raise ValueError(
                "subscribers: only a public audience takes status page subscribers "
                "(their mail carries an unsubscribe link); set public: true"
            )
        return self

    def addresses(self, channel: ChannelName) -> tuple[str, ...]:
        """Who this audience is on ``channel``, as delivery recipients (empty: not there)."""
        if channel is ChannelName.STATUS_PAGE:
            return (STATUS_PAGE_ADDRESS,) if self.status_page else ()
        entries: tuple[Any, ...] = getattr(self, channel.value)
        return tuple(e if isinstance(e, str) else e.address for e in entries)

    def entries(self, channel: ChannelName) -> tuple[Any, ...]:
        """The configured entries on ``channel`` (strings for email and SMS); the status
        page has none."""
        if channel is ChannelName.STATUS_PAGE:
            return ()
        entries: tuple[Any, ...] = getattr(self, channel.value)
        return entries

    def recipient(self, channel: ChannelName, address: str) -> Any:
        """The configured entry behind ``address`` (a string for email and SMS)."""
        if channel is ChannelName.STATUS_PAGE:
            return address
        for entry in getattr(self, channel.value):
            if (entry if isinstance(entry, str) else entry.address) == address:
                return entry
        raise KeyError(address)

    def reaches(self, channel: ChannelName) -> bool:
        """True when the audience can hear on ``channel``: listed recipients, or, for email,
        status page subscribers."""
        return bool(self.addresses(channel)) or (channel is ChannelName.EMAIL and self.subscribers)

    @property
    def channels(self) -> tuple[ChannelName, ...]:
        return tuple(c for c in ChannelName if self.reaches(c))


class Component(PlanModel):
    """A part of the product as customers know it, shown on the status page."""

    name: str = Field(min_length=1, max_length=80)
    description: str = Field(default="", max_length=500)
    services: tuple[str, ...] = ()
    """Incidents of these services affect the component (as do incidents naming it)."""


class RouteMatch(PlanModel):
    """Which incidents a route applies to. Every given condition must hold."""

    severities: tuple[SeverityName, ...] = ()
    """Empty: every severity."""
    services: tuple[str, ...] = ()
    """The incident's service is one of these."""
    components: tuple[str, ...] = ()
    """The incident affects at least one of these components."""
    labels: dict[str, str] = Field(default_factory=dict)
    """At least one of the incident's alerts carries every one of these labels."""


class Route(PlanModel):
    """Audiences that hear these events, on these channels, for matching incidents."""

    name: str = ""
    match: RouteMatch = Field(default_factory=RouteMatch)
    events: tuple[EventKind, ...] = tuple(EventKind)
    audiences: tuple[str, ...] = Field(min_length=1)
    channels: tuple[ChannelName, ...] = ()
    """Empty: every channel the audience has."""


class Approval(PlanModel):
    """Customer-facing messages of these severities wait for a human, but never forever."""

    severities: tuple[SeverityName, ...] = ()
    auto_publish_after: Duration = timedelta(minutes=10)

    @model_validator(mode="after")
    def _bounded(self) -> Approval:
        if not timedelta(seconds=1) <= self.auto_publish_after <= timedelta(hours=4):
            raise ValueError("auto_publish_after must be between 1 second and 4 hours")
        return self


def _default_severities() -> dict[Severity, SeverityPolicy]:
    return {
        Severity.CRITICAL: SeverityPolicy(
            name="a major outage", update_every=timedelta(minutes=30)
        ),
        Severity.ERROR: SeverityPolicy(name="a partial outage", update_every=timedelta(hours=1)),
        Severity.WARNING: SeverityPolicy(name="degraded performance"),
        Severity.INFO: SeverityPolicy(name="a minor issue", internal_only=True),
    }


DEFAULT_POSTMORTEM_REMINDER: Final = timedelta(hours=48)
POSTMORTEM_REMINDER_BOUNDS: Final = (timedelta(minutes=1), timedelta(days=30))


class Plan(PlanModel):
    """The whole communication plan."""

    version: Literal[1] = PLAN_VERSION
    organization: str = Field(default="Clarion", min_length=1, max_length=120)
    status_page_url: HttpUrl | None = None
    """Where customers follow incidents; null: the built-in page at the dispatcher."""
    timezones: tuple[ZoneName, ...] = Field(default=("UTC",), min_length=1, max_length=4)
    """Rendered times use the first zone and show the others alongside."""
    templates_dir: str | None = None
    """Templates that override the shipped ones by path (relative to the plan file)."""
    monitoring_hold: Duration = timedelta(minutes=5)
    """The minimum time in "monitoring" before a public "resolved"."""
    sms_max_segments: int = Field(default=3, ge=1, le=10)
    severities: dict[SeverityName, SeverityPolicy] = Field(default_factory=_default_severities)
    source_severities: dict[str, dict[str, SeverityName]] = Field(default_factory=dict)
    """Each source's severity words onto SEV1..SEV4 (``"*"``: every source)."""
    components: tuple[Component, ...] = ()
    """What the status page lists, each with its status from the open incidents touching it."""
    audiences: dict[str, Audience] = Field(default_factory=dict)
    routes: tuple[Route, ...] = ()
    approval: Approval = Field(default_factory=Approval)
    postmortem_reminder_after: Duration | None = DEFAULT_POSTMORTEM_REMINDER
    """Remind internal audiences this long after resolution while no post-mortem is posted;
    null: no reminder."""

    @model_validator(mode="after")
    def _consistent(self) -> Plan:
        missing = [s.sev for s in Severity if s not in self.severities]
        if missing:
            raise ValueError(f"severities: {', '.join(missing)} missing; define SEV1 to SEV4")
        if self.monitoring_hold > timedelta(days=1):
            raise ValueError("monitoring_hold must be at most 1 day")
        reminder = self.postmortem_reminder_after
        low, high = POSTMORTEM_REMINDER_BOUNDS
        if reminder is not None and not low <= reminder <= high:
            raise ValueError(
                f"postmortem_reminder_after must be between 1 minute and 30 days, not {reminder}"
                " (null turns the reminder off)"
            )
        names = [c.name.casefold() for c in self.components]
        twice = sorted({c.name for c in self.components if names.count(c.name.casefold()) > 1})
        if twice:
            raise ValueError(f"components: {', '.join(twice)} named more than once")
        for number, route in enumerate(self.routes):
            self._check_route(number, route)
        return self

    def _check_route(self, number: int, route: Route) -> None:
        where = f"routes[{number}]"
        for name in route.audiences:
            audience = self.audiences.get(name)
            if audience is None:
                known = ", ".join(sorted(self.audiences)) or "none defined"
                raise ValueError(f"{where}.audiences: unknown audience {name!r} ({known})")
            for channel in route.channels:
                if not audience.reaches(channel):
                    raise ValueError(
                        f"{where}.channels: audience {name!r} has no {channel.value} recipients"
                    )
            internal = [s.sev for s in route.match.severities if self.policy(s).internal_only]
            if audience.public and internal:
                raise ValueError(
                    f"{where}.audiences: {', '.join(internal)} is internal only, but the "
                    f"route sends it to the public audience {name!r}"
                )
            kinds = _named_internal_kinds(route)
            if audience.public and kinds:
                raise ValueError(
                    f"{where}.events: {', '.join(kinds)} is internal only, but the route "
                    f"sends it to the public audience {name!r}"
                )
        broadcast = [c.value for c in route.channels if c in BROADCAST_CHANNELS]
        kinds = _named_internal_kinds(route)
        if kinds and broadcast:
            raise ValueError(
                f"{where}.channels: {', '.join(kinds)} is internal only, but "
                f"{', '.join(broadcast)} can be read by anyone"
            )

    # What the services ask of the plan

    def policy(self, severity: Severity) -> SeverityPolicy:
        return self.severities[severity]

    def cadence(self, severity: Severity) -> timedelta | None:
        """How often an open incident of ``severity`` is updated; None: open and resolve only."""
        return self.severities[severity].update_every

    def next_update_at(self, severity: Severity, after: datetime) -> datetime | None:
        """The concrete time of the next scheduled update promised at ``after``."""
        every = self.cadence(severity)
        return None if every is None else after + every

    def follow_url(self, local_page: str) -> str:
        """Where customers follow incidents: the plan's page, else the built-in one."""
        return str(self.status_page_url).rstrip("/") if self.status_page_url else local_page

    def components_of(self, service: str | None, components: tuple[str, ...]) -> tuple[str, ...]:
        """The plan's component names an incident of ``service`` naming ``components`` touches."""
        named = {c.casefold() for c in components}
        return tuple(
            c.name
            for c in self.components
            if c.name.casefold() in named or (service is not None and service in c.services)
        )

    def secret_variables(self) -> Iterator[tuple[str, ChannelName, str, str]]:
        """(audience, channel, recipient, variable) for each ``*_env`` field of a recipient:
        the environment variables that hold this plan's secrets."""
        for name, audience in self.audiences.items():
            for channel in audience.channels:
                # Entry by entry: looking each address up again made this quadratic.
                for entry in audience.entries(channel):
                    if isinstance(entry, str):
                        continue
                    for key, value in entry.model_dump().items():
                        if key.endswith("_env") and value:
                            yield name, channel, entry.address, value

    def needs_approval(self, severity: Severity) -> bool:
        return severity in self.approval.severities

    @property
    def zones(self) -> tuple[ZoneInfo, ...]:
        return tuple(ZoneInfo(name) for name in self.timezones)

    def routes_for(
        self,
        kind: EventKind,
        severity: Severity,
        service: str | None,
        components: tuple[str, ...],
        labels: tuple[Mapping[str, str], ...],
    ) -> Iterator[Route]:
        """The routes that apply to an event of ``kind`` about an incident like this."""
        for route in self.routes:
            if kind in route.events and _matches(
                route.match, severity, service, components, labels
            ):
                yield route


def _named_internal_kinds(route: Route) -> list[str]:
    """The internal-only kinds a route names itself (its default, every kind, names none).

    A route that keeps the default still matches them, and the dispatcher keeps them
    from its public audiences and broadcast channels; naming one for a public audience
    is a mistake worth refusing.
    """
    if "events" not in route.model_fields_set:
        return []
    return [kind.value for kind in route.events if kind.internal_only]


def _matches(
    match: RouteMatch,
    severity: Severity,
    service: str | None,
    components: tuple[str, ...],
    labels: tuple[Mapping[str, str], ...],
) -> bool:
    if match.severities and severity not in match.severities:
        return False
    if match.services and service not in match.services:
        return False
    if match.components and not set(match.components) & set(components):
        return False
    if match.labels:
        wanted = match.labels.items()
        return any(all(alert.get(k) == v for k, v in wanted) for alert in labels)
    return True
