"""Every channel's driver, by channel name, built from one :class:`DriverContext`.

Which provider serves email, SMS and the status page is a setting; social, chat
and webhook recipients name their own credentials in the plan. A driver whose
credentials are missing answers ``NotConfigured`` and its message goes to the
local outbox, so a fresh install works end to end with nothing configured.
"""

from __future__ import annotations

from services.dispatcher.channels import Channel
from services.dispatcher.channels.bluesky import BlueskyChannel
from services.dispatcher.channels.chat_webhook import ChatWebhookChannel
from services.dispatcher.channels.context import DriverContext
from services.dispatcher.channels.discord import DiscordChannel
from services.dispatcher.channels.email import build_email_channel
from services.dispatcher.channels.mastodon import MastodonChannel
from services.dispatcher.channels.signed_webhook import SignedWebhookChannel
from services.dispatcher.channels.slack import SlackChannel
from services.dispatcher.channels.sms import build_sms_channel
from services.dispatcher.channels.status_page import build_status_page_channel
from services.dispatcher.channels.x_posts import XChannel
from shared.plan import ChannelName


def default_channels(ctx: DriverContext) -> dict[str, Channel]:
    channels: dict[ChannelName, Channel] = {
        ChannelName.EMAIL: build_email_channel(ctx),
        ChannelName.SMS: build_sms_channel(ctx),
        ChannelName.MASTODON: MastodonChannel(ctx),
        ChannelName.BLUESKY: BlueskyChannel(ctx),
        ChannelName.X: XChannel(ctx),
        ChannelName.SLACK: SlackChannel(ctx),
        ChannelName.DISCORD: DiscordChannel(ctx),
        ChannelName.CHAT_WEBHOOK: ChatWebhookChannel(ctx),
        ChannelName.STATUS_PAGE: build_status_page_channel(ctx),
        ChannelName.WEBHOOK: SignedWebhookChannel(ctx),
    }
    return {name.value: driver for name, driver in channels.items()}
