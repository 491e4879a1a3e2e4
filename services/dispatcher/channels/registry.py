"""The channel drivers a dispatcher uses by default, by channel name."""

from __future__ import annotations

from redis.asyncio import Redis

from services.dispatcher.channels import Channel
from services.dispatcher.channels.email import EmailChannel
from services.dispatcher.channels.status_page import StatusPageChannel
from services.dispatcher.plan import EMAIL, STATUS_PAGE
from services.dispatcher.status_page_store import StatusPageStore
from shared.clock import Clock
from shared.settings import Settings


def default_channels(settings: Settings, redis: Redis, clock: Clock) -> dict[str, Channel]:
    return {
        EMAIL: EmailChannel(settings, redis, clock),
        STATUS_PAGE: StatusPageChannel(StatusPageStore(redis)),
    }
