"""Times and durations in customer words."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest

from services.dispatcher.timefmt import format_duration, format_timestamp

MOMENT = datetime(2026, 11, 23, 14, 30, tzinfo=UTC)


def test_timestamp_has_time_zone_and_date() -> None:
    assert format_timestamp(MOMENT, ZoneInfo("UTC")) == "14:30 UTC, Mon 23 Nov 2026"


def test_timestamp_is_converted_to_the_display_zone() -> None:
    assert format_timestamp(MOMENT, ZoneInfo("America/New_York")) == "09:30 EST, Mon 23 Nov 2026"
    summer = datetime(2026, 7, 1, 23, 15, tzinfo=UTC)
    assert format_timestamp(summer, ZoneInfo("Europe/Berlin")) == "01:15 CEST, Thu 2 Jul 2026"


@pytest.mark.parametrize(
    ("span", "words"),
    [
        (timedelta(seconds=20), "less than a minute"),
        (timedelta(minutes=1), "about 1 minute"),
        (timedelta(minutes=45), "about 45 minutes"),
        (timedelta(hours=1, minutes=5), "about 1 hour and 5 minutes"),
        (timedelta(hours=2), "about 2 hours"),
        (timedelta(days=1, hours=3, minutes=10), "about 1 day and 3 hours"),
        (timedelta(seconds=-5), "less than a minute"),
    ],
)
def test_duration_words(span: timedelta, words: str) -> None:
    assert format_duration(span) == words
