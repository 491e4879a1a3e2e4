"""Every Redis stream, consumer group and key prefix Clarion uses, spelled once."""

from __future__ import annotations

from typing import Final

PREFIX: Final = "clarion"

# Streams
INCIDENT_EVENTS: Final = f"{PREFIX}:incident-events"
UPDATES_DUE: Final = f"{PREFIX}:updates-due"
DELIVERY_LOG: Final = f"{PREFIX}:delivery-log"
DEAD_LETTERS: Final = f"{PREFIX}:dead-letters"
OUTBOX: Final = f"{PREFIX}:outbox"
RESOLUTIONS_DUE: Final = f"{PREFIX}:resolutions-due"
APPROVALS: Final = f"{PREFIX}:approvals"
DELIVERY_STREAM: Final = f"{PREFIX}:deliveries:{{channel}}"
"""One stream of delivery jobs per channel, so a slow provider only backs up its own."""
DELIVERY_CHANNELS: Final = (
    "email",
    "sms",
    "mastodon",
    "bluesky",
    "x",
    "slack",
    "discord",
    "chat_webhook",
    "status_page",
    "webhook",
)
"""Every channel name (``shared.plan.ChannelName``; a test keeps the two in step)."""

# Consumer groups: one per service, so each service can run as several instances.
SCHEDULER_GROUP: Final = "scheduler"
DISPATCHER_GROUP: Final = "dispatcher"
INGEST_GROUP: Final = "ingest"

# Which groups read which stream. Groups are created from the start of the
# stream (id 0) before anything is published, so no event is ever missed.
CONSUMER_GROUPS: Final[dict[str, tuple[str, ...]]] = {
    INCIDENT_EVENTS: (SCHEDULER_GROUP, DISPATCHER_GROUP),
    UPDATES_DUE: (DISPATCHER_GROUP,),
    RESOLUTIONS_DUE: (INGEST_GROUP,),
    APPROVALS: (SCHEDULER_GROUP, DISPATCHER_GROUP),
    **{DELIVERY_STREAM.format(channel=c): (DISPATCHER_GROUP,) for c in DELIVERY_CHANNELS},
}

# Keys
INCIDENT_KEY: Final = f"{PREFIX}:incident:{{incident_id}}"
OPEN_INCIDENT_BY_GROUP: Final = f"{PREFIX}:incident-by-group:{{group}}"
INCIDENTS_BY_TIME: Final = f"{PREFIX}:incidents"
SCHEDULE_DUE: Final = f"{PREFIX}:schedule:due"
SCHEDULE_ITEMS: Final = f"{PREFIX}:schedule:items"
RESOLUTION_DUE: Final = f"{PREFIX}:schedule:resolution-due"
RESOLUTION_ITEMS: Final = f"{PREFIX}:schedule:resolution-items"
APPROVAL_DUE: Final = f"{PREFIX}:schedule:approval-due"
APPROVAL_ITEMS: Final = f"{PREFIX}:schedule:approval-items"
RETRY_DUE: Final = f"{PREFIX}:schedule:retry-due"
RETRY_ITEMS: Final = f"{PREFIX}:schedule:retry-items"
ACK_OVERDUE_DUE: Final = f"{PREFIX}:schedule:ack-overdue-due"
ACK_OVERDUE_ITEMS: Final = f"{PREFIX}:schedule:ack-overdue-items"
POSTMORTEM_REMINDER_DUE: Final = f"{PREFIX}:schedule:postmortem-reminder-due"
POSTMORTEM_REMINDER_ITEMS: Final = f"{PREFIX}:schedule:postmortem-reminder-items"
DELIVERY_STATE: Final = f"{PREFIX}:delivery:{{delivery_id}}"
DISPATCH_RECORD: Final = f"{PREFIX}:dispatch:{{event_id}}"
FANNED_OUT: Final = f"{PREFIX}:fanned-out:{{event_id}}"
REPLAYED_DEAD_LETTERS: Final = f"{PREFIX}:dead-letters:replayed"
PENDING_APPROVALS: Final = f"{PREFIX}:approvals:pending"
REJECTIONS: Final = f"{PREFIX}:ingest:rejections"
SCHEDULER_HEARTBEAT: Final = f"{PREFIX}:scheduler:heartbeat"
LAST_ERROR: Final = f"{PREFIX}:last-error:{{stream}}:{{group}}"
STATUS_PAGE_INCIDENT: Final = f"{PREFIX}:statuspage:incident:{{incident_id}}"
STATUS_PAGE_INDEX: Final = f"{PREFIX}:statuspage:incidents"


def incident_key(incident_id: str) -> str:
    return INCIDENT_KEY.format(incident_id=incident_id)


def open_incident_key(group: str) -> str:
    return OPEN_INCIDENT_BY_GROUP.format(group=group)


def last_error_key(stream: str, group: str) -> str:
    return LAST_ERROR.format(stream=stream, group=group)


def status_page_incident_key(incident_id: str) -> str:
    return STATUS_PAGE_INCIDENT.format(incident_id=incident_id)


def delivery_stream(channel: str) -> str:
    return DELIVERY_STREAM.format(channel=channel)


def delivery_state_key(delivery_id: str) -> str:
    return DELIVERY_STATE.format(delivery_id=delivery_id)


def dispatch_record_key(event_id: str) -> str:
    return DISPATCH_RECORD.format(event_id=event_id)


def fanned_out_key(event_id: str) -> str:
    return FANNED_OUT.format(event_id=event_id)
