"""Times and durations in customer words, in one or more time zones."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest

from services.dispatcher.rendering.timefmt import format_duration, format_timestamp

MOMENT = datetime(2026, 11, 23, 14, 30, tzinfo=UTC)
UTC_ZONE = ZoneInfo("UTC")
NEW_YORK = ZoneInfo("America/New_York")
BERLIN = ZoneInfo("Europe/Berlin")
TOKYO = ZoneInfo("Asia/Tokyo")


def test_timestamp_has_time_zone_and_date() -> None:
    assert format_timestamp(MOMENT, [UTC_ZONE]) == "14:30 UTC, Mon 23 Nov 2026"


def test_timestamp_is_converted_to_the_first_zone() -> None:
    assert format_timestamp(MOMENT, (NEW_YORK,)) == "09:30 EST, Mon 23 Nov 2026"
    summer = datetime(2026, 7, 1, 23, 15, tzinfo=UTC)
    assert format_timestamp(summer, (BERLIN,)) == "01:15 CEST, Thu 2 Jul 2026"


def test_a_naive_looking_offset_is_respected() -> None:
    paris_noon = datetime(2026, 11, 23, 12, 0, tzinfo=ZoneInfo("Europe/Paris"))
    assert format_timestamp(paris_noon, (UTC_ZONE,)) == "11:00 UTC, Mon 23 Nov 2026"


def test_other_zones_follow_in_brackets() -> None:
    assert format_timestamp(MOMENT, (UTC_ZONE, NEW_YORK, BERLIN)) == (
        "14:30 UTC, Mon 23 Nov 2026 (09:30 EST, 15:30 CET)"
    )


def test_another_zone_on_another_day_names_its_day() -> None:
    late = datetime(2026, 11, 23, 20, 30, tzinfo=UTC)  # 05:30 on Tuesday in Tokyo
    early = datetime(2026, 11, 23, 2, 0, tzinfo=UTC)  # 21:00 on Sunday in New York

    assert format_timestamp(late, (UTC_ZONE, TOKYO)) == "20:30 UTC, Mon 23 Nov 2026 (05:30 JST Tue)"
    assert format_timestamp(early, (UTC_ZONE, NEW_YORK)) == (
        "02:00 UTC, Mon 23 Nov 2026 (21:00 EST Sun)"
    )


def test_the_first_zone_leads_whichever_it_is() -> None:
    assert format_timestamp(MOMENT, (TOKYO, UTC_ZONE)) == "23:30 JST, Mon 23 Nov 2026 (14:30 UTC)"


def test_the_day_of_another_zone_is_told_against_the_first_zones_date() -> None:
    late = datetime(2026, 11, 23, 20, 30, tzinfo=UTC)  # Tue 24 in Tokyo, Mon 23 in UTC
    early = datetime(2026, 11, 23, 2, 0, tzinfo=UTC)  # Sun 22 in New York, Mon 23 in Berlin

    assert format_timestamp(late, (TOKYO, UTC_ZONE)) == (
        "05:30 JST, Tue 24 Nov 2026 (20:30 UTC Mon)"
    )
    assert format_timestamp(early, (NEW_YORK, BERLIN)) == (
        "21:00 EST, Sun 22 Nov 2026 (03:00 CET Mon)"
    )
    assert format_timestamp(late, (TOKYO, ZoneInfo("Asia/Seoul"))) == (
        "05:30 JST, Tue 24 Nov 2026 (05:30 KST)"  # same day as the first zone: no day named
    )


@pytest.mark.parametrize(
    ("span", "words"),
    [
        (timedelta(seconds=20), "less than a minute"),
        (timedelta(minutes=1), "about 1 minute"),
        (timedelta(minutes=45), "about 45 minutes"),
        (timedelta(hours=1, minutes=5), "about 1 hour and 5 minutes"),
        (timedelta(hours=2), "about 2 hours"),
        (timedelta(days=1, hours=3, minutes=10), "about 1 day and 3 hours"),
        (timedelta(days=2, minutes=10), "about 2 days and 10 minutes"),
        (timedelta(seconds=-5), "less than a minute"),
    ],
)
def test_duration_words(span: timedelta, words: str) -> None:
    assert format_duration(span) == words
