"""The channel drivers a dispatcher uses, by channel name.

Email goes over SMTP when ``CLARION_SMTP_HOST`` is set and the status page to
the built-in page; every other channel goes to the local outbox until its
provider driver is configured.
"""

from __future__ import annotations

from redis.asyncio import Redis

from services.dispatcher.channels import Channel
from services.dispatcher.channels.email import EmailChannel
from services.dispatcher.channels.outbox import OutboxChannel
from services.dispatcher.channels.status_page import StatusPageChannel
from services.dispatcher.status_page_store import StatusPageStore
from shared.clock import Clock
from shared.plan import ChannelName
from shared.settings import Settings


def default_channels(settings: Settings, redis: Redis, clock: Clock) -> dict[str, Channel]:
    channels: dict[str, Channel] = {
        channel.value: OutboxChannel(redis, clock, f"no {channel.value} driver configured")
        for channel in ChannelName
    }
    channels[ChannelName.EMAIL] = EmailChannel(settings, redis, clock)
    channels[ChannelName.STATUS_PAGE] = StatusPageChannel(StatusPageStore(redis))
    return channels
