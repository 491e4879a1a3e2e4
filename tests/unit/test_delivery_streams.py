"""Every channel has its own delivery job stream, read by the dispatcher group."""

from __future__ import annotations

from shared.plan import ChannelName
from shared.streams import CONSUMER_GROUPS, DELIVERY_CHANNELS, DISPATCHER_GROUP, delivery_stream


def test_delivery_channels_are_exactly_the_plan_channels() -> None:
    assert set(DELIVERY_CHANNELS) == {channel.value for channel in ChannelName}
    assert len(DELIVERY_CHANNELS) == len(set(DELIVERY_CHANNELS))


def test_each_channel_stream_is_read_by_the_dispatcher_from_the_start() -> None:
    for channel in ChannelName:
        assert CONSUMER_GROUPS[delivery_stream(channel.value)] == (DISPATCHER_GROUP,)
    assert delivery_stream("sms") != delivery_stream("email")
