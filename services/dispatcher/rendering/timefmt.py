"""Times and durations in the words customers read. Pure; independent of the locale."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Final
from zoneinfo import ZoneInfo

_DAYS: Final = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")
_MONTHS: Final = (
    "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
)  # fmt: skip


def format_timestamp(moment: datetime, zones: Sequence[ZoneInfo]) -> str:
    """``14:30 UTC, Mon 23 Nov 2026``: a concrete time with its time zone.

    With more zones, the others follow in brackets: ``... 2026 (09:30 EST)``.
    """
    first, *others = zones
    local = moment.astimezone(first)
    text = (
        f"{local:%H:%M} {local.tzname()}, "
        f"{_DAYS[local.weekday()]} {local.day} {_MONTHS[local.month - 1]} {local.year}"
    )
    if others:
        text += " (" + ", ".join(_clock_time(moment, zone, local) for zone in others) + ")"
    return text


def _clock_time(moment: datetime, zone: ZoneInfo, first: datetime) -> str:
    """The time in ``zone``, with its day when that differs from the first zone's date."""
    local = moment.astimezone(zone)
    day = "" if local.date() == first.date() else f" {_DAYS[local.weekday()]}"
    return f"{local:%H:%M} {local.tzname()}{day}"


def format_duration(span: timedelta) -> str:
    """``about 1 hour and 5 minutes``; ``less than a minute`` for short spans."""
    minutes = max(int(span.total_seconds() // 60), 0)
    if minutes < 1:
        return "less than a minute"
    days, rest = divmod(minutes, 24 * 60)
    hours, mins = divmod(rest, 60)
    parts = [
        _plural(value, unit)
        for value, unit in ((days, "day"), (hours, "hour"), (mins, "minute"))
        if value
    ][:2]
    return "about " + " and ".join(parts)


def _plural(value: int, unit: str) -> str:
    return f"{value} {unit}{'' if value == 1 else 's'}"
