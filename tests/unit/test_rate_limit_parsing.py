"""CLARION_RATE_LIMITS: ``<channel>=<limit>`` and ``<channel>:recipient=<limit>`` entries."""

from __future__ import annotations

import pytest

from services.dispatcher.rate_limits import parse_rate_limits
from shared.settings import DEFAULT_RATE_LIMITS
from shared.streams import DELIVERY_CHANNELS

HOUR_MS = 3_600_000


def test_a_provider_wide_limit() -> None:
    limits = parse_rate_limits(["mastodon=300/3 hours"])

    [limit] = limits["mastodon"]
    assert not limit.per_recipient
    assert limit.item.amount == 300
    assert limit.period_ms == 3 * HOUR_MS
    assert limit.interval_ms == 36_000  # one post every 36 s, on average


def test_a_per_recipient_limit() -> None:
    [limit] = parse_rate_limits(["sms:recipient=1/minute"])["sms"]

    assert limit.per_recipient
    assert (limit.item.amount, limit.period_ms, limit.interval_ms) == (1, 60_000, 60_000)


def test_several_limits_of_one_channel_add_up() -> None:
    limits = parse_rate_limits(["sms=30/second;1000/hour", "sms:recipient=1/minute", "x=100/day"])

    assert set(limits) == {"sms", "x"}
    assert [(lim.item.amount, lim.period_ms, lim.per_recipient) for lim in limits["sms"]] == [
        (30, 1000, False),
        (1000, HOUR_MS, False),
        (1, 60_000, True),
    ]
    assert limits["sms"][0].interval_ms == pytest.approx(1000 / 30)


def test_spaces_around_the_parts_are_allowed() -> None:
    [limit] = parse_rate_limits([" slack:recipient = 1 per second "])["slack"]

    assert limit.per_recipient
    assert limit.period_ms == 1000


def test_no_entries_no_limits() -> None:
    assert parse_rate_limits([]) == {}


def test_the_shipped_defaults_parse_and_name_real_channels() -> None:
    limits = parse_rate_limits(DEFAULT_RATE_LIMITS)

    assert set(limits) <= set(DELIVERY_CHANNELS)
    assert [lim.item.amount for lim in limits["mastodon"]] == [300]
    assert [(lim.item.amount, lim.per_recipient) for lim in limits["sms"]] == [
        (30, False),
        (1, True),
    ]


@pytest.mark.parametrize(
    ("entry", "problem"),
    [
        ("mastodon", "write <channel>=<limit> or <channel>:recipient=<limit>"),
        ("=1/minute", "write <channel>=<limit> or <channel>:recipient=<limit>"),
        (":recipient=1/minute", "write <channel>=<limit> or <channel>:recipient=<limit>"),
        ("sms:sender=1/minute", "'sender' is not a scope; only ':recipient' is"),
        ("sms=lots", "the limit is like 300/3 hours or 1/minute"),
        ("sms=", "the limit is like 300/3 hours or 1/minute"),
        ("sms=0/minute", "amounts of at least 1"),
        ("sms=30/second;0/hour", "amounts of at least 1"),
        ("sms=1/fortnight", "the limit is like 300/3 hours or 1/minute"),
    ],
)
def test_a_bad_entry_is_refused_naming_it_and_saying_what_to_write(
    entry: str, problem: str
) -> None:
    with pytest.raises(ValueError, match="CLARION_RATE_LIMITS entry") as caught:
        parse_rate_limits(["mastodon=300/3 hours", entry])

    message = str(caught.value)
    assert message.startswith(f"CLARION_RATE_LIMITS entry {entry!r}: ")
    assert problem in message


def test_an_unknown_channel_is_refused() -> None:
    with pytest.raises(ValueError, match="emial"):
        parse_rate_limits(["emial=10/minute"])
