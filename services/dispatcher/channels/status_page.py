"""Status page: the built-in page (the default), Atlassian Statuspage or Cachet.

:func:`build_status_page_channel` picks the driver by ``CLARION_STATUS_PAGE_PROVIDER``.
"""

from __future__ import annotations

from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from services.dispatcher.channels import Channel
from services.dispatcher.channels.cachet import CachetChannel
from services.dispatcher.channels.context import DriverContext
from services.dispatcher.channels.outcome import Outcome, Permanent, Retryable, Sent
from services.dispatcher.channels.statuspage_io import StatuspageIoChannel
from services.dispatcher.fanout import Delivery
from services.dispatcher.rendering.messages import RenderedMessage
from services.dispatcher.status_page_store import StatusPageStore, StatusPageUpdate, state_for


class StatusPageChannel:
    name = "status_page"
    # The store keeps one field per delivery id (HSETNX): posting a delivery twice is a no-op.
    idempotent = True

    def __init__(self, store: StatusPageStore) -> None:
        self._store = store

    async def send(self, message: RenderedMessage, recipient: str, delivery: Delivery) -> Outcome:
        incident = delivery.incident
        if incident is None:
            return Permanent("no incident state to post")
        update = StatusPageUpdate(
            id=delivery.delivery_id,
            posted_at=delivery.occurred_at,
            state=state_for(incident),
            headline=state_for(incident).value.capitalize(),
            body=message.text,
            next_update_at=message.next_update_at,
        )
        try:
            await self._store.post(incident, update, title=message.title)
        except (RedisConnectionError, RedisTimeoutError) as exc:
            return Retryable(f"{type(exc).__name__}: {exc}")
        return Sent(delivery.delivery_id)


def build_status_page_channel(ctx: DriverContext) -> Channel:
    """The status page driver ``settings.status_page_provider`` names (built-in by default)."""
    provider = ctx.settings.status_page_provider
    if provider == "statuspage":
        return StatuspageIoChannel(ctx)
    if provider == "cachet":
        return CachetChannel(ctx)
    return StatusPageChannel(StatusPageStore(ctx.redis))
