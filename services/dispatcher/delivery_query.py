"""Querying the delivery log: filters, time ranges, and paging by opaque cursors.

Entries of the ``clarion:delivery-log`` stream have ids made of the millisecond they
were recorded at, so a time range is a range of entry ids (XREVRANGE/XRANGE between
two ids), never a scan of the whole stream. An incident's records are found through
its own small stream of entry ids (:func:`incident_index_key`), written in the same
atomic step as the record itself and trimmed to the same cut.

Two ways to page:

- newest first (the default): each page gives ``next_cursor``; pass it as ``before``
  for the next, older page. It is null once nothing older matches.
- oldest first, for following the log: pass a cursor as ``after`` to get what was
  recorded after it. ``next_cursor`` is then never null: pass it as ``after`` on the
  next poll, and nothing is missed or repeated. Every page also gives
  ``follow_cursor``, where following starts from if nothing newer than that page had
  been recorded yet.

A page reads at most :data:`SCAN_BUDGET` entries: when filters match little, it may
hold fewer than ``limit`` records and still have a cursor to go on from.
"""

from __future__ import annotations

import base64
import binascii
import re
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Final

from pydantic import ValidationError
from redis.asyncio import Redis

from shared.contracts import DeliveryRecorded, DeliveryStatus
from shared.logs import get_logger
from shared.redis_values import DATA_FIELD, as_text
from shared.streams import DELIVERY_LOG

MAX_LIMIT: Final = 1000
DEFAULT_LIMIT: Final = 50
SCAN_BATCH: Final = 500
"""Entries read per round trip when filters may skip some."""
SCAN_BUDGET: Final = 10_000
"""At most this many entries are read for one page."""

INCIDENT_INDEX: Final = f"{DELIVERY_LOG}:incident:{{incident_id}}"
"""A stream per incident whose entry ids are those of the incident's records."""
INDEXED_INCIDENTS: Final = f"{DELIVERY_LOG}:incidents"
"""Sorted set of the incidents that have an index (score: their newest record's ms)."""

StreamId = tuple[int, int]
"""A stream entry id as (milliseconds, sequence)."""

MAX_SEQ: Final = 2**64 - 1
ZERO: Final[StreamId] = (0, 0)
_ID = re.compile(r"(\d{1,20})-(\d{1,20})")
_CURSOR_PREFIX: Final = "c1:"
_EPOCH: Final = datetime(1970, 1, 1, tzinfo=UTC)

log = get_logger("clarion.dispatcher.delivery")


def incident_index_key(incident_id: str) -> str:
    return INCIDENT_INDEX.format(incident_id=incident_id)


def parse_id(text: object) -> StreamId:
    match = _ID.fullmatch(as_text(text))
    if match is None:
        raise ValueError(f"not a stream entry id: {as_text(text)!r}")
    ms, seq = int(match[1]), int(match[2])
    if seq > MAX_SEQ:
        raise ValueError("stream entry id out of range")
    return ms, seq


def format_id(entry: StreamId) -> str:
    return f"{entry[0]}-{entry[1]}"


def successor(entry: StreamId) -> StreamId:
    ms, seq = entry
    return (ms, seq + 1) if seq < MAX_SEQ else (ms + 1, 0)


def predecessor(entry: StreamId) -> StreamId | None:
    ms, seq = entry
    if seq > 0:
        return ms, seq - 1
    return (ms - 1, MAX_SEQ) if ms > 0 else None


def epoch_ms(moment: datetime) -> int:
    """Whole milliseconds since the epoch (floored), as stream entry ids count time."""
    return (moment - _EPOCH) // timedelta(milliseconds=1)


class InvalidCursor(ValueError):
    """A cursor this server did not hand out."""


def encode_cursor(entry: StreamId) -> str:
    raw = f"{_CURSOR_PREFIX}{format_id(entry)}".encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str) -> StreamId:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        if not raw.startswith(_CURSOR_PREFIX):
            raise InvalidCursor("not a delivery log cursor")
        return parse_id(raw.removeprefix(_CURSOR_PREFIX))
    except (binascii.Error, UnicodeDecodeError, ValueError) as exc:
        raise InvalidCursor("not a cursor from a previous page") from exc


class QueryError(ValueError):
    """An invalid query; ``field`` names the parameter at fault."""

    def __init__(self, field: str, reason: str) -> None:
        self.field = field
        self.reason = reason
        super().__init__(f"{field}: {reason}")


@dataclass(frozen=True)
class DeliveryQuery:
    """Which records, and which page of them. Empty filter sets match everything."""

    incident_id: str | None = None
    channels: frozenset[str] = frozenset()
    statuses: frozenset[DeliveryStatus] = frozenset()
    audiences: frozenset[str] = frozenset()
    since: datetime | None = None  # inclusive, to the millisecond
    until: datetime | None = None  # exclusive, to the millisecond
    limit: int = DEFAULT_LIMIT
    before: StreamId | None = None  # newest first, older than this cursor
    after: StreamId | None = None  # oldest first, newer than this cursor

    def __post_init__(self) -> None:
        if not 1 <= self.limit <= MAX_LIMIT:
            raise QueryError("limit", f"must be between 1 and {MAX_LIMIT}")
        for name, moment in (("since", self.since), ("until", self.until)):
            if moment is not None and moment.utcoffset() is None:
                raise QueryError(name, "needs a time zone (e.g. 2026-11-23T14:30:00Z)")
        if self.since and self.until and self.until <= self.since:
            raise QueryError("until", "must be later than since")
        if self.before is not None and self.after is not None:
            raise QueryError("after", "give either before or after, not both")

    @property
    def newest_first(self) -> bool:
        return self.after is None

    @property
    def filters_records(self) -> bool:
        """Whether some entries of the scanned stream may not match."""
        return bool(self.channels or self.statuses or self.audiences)

    def matches(self, record: DeliveryRecorded) -> bool:
        return (
            (self.incident_id is None or record.incident_id == self.incident_id)
            and (not self.channels or record.channel in self.channels)
            and (not self.statuses or record.status in self.statuses)
            and (not self.audiences or record.audience in self.audiences)
        )

    def scan_range(self, top: StreamId) -> tuple[StreamId, StreamId] | None:
        """The inclusive range of entry ids to read, ``top`` being the newest entry;
        None when it is empty."""
        low, high = ZERO, top
        if self.since is not None:
            low = max(low, (epoch_ms(self.since), 0))
        if self.until is not None:
            high = min(high, (epoch_ms(self.until) - 1, MAX_SEQ))
        if self.before is not None:
            below = predecessor(self.before)
            if below is None:
                return None
            high = min(high, below)
        if self.after is not None:
            low = max(low, successor(self.after))
        return (low, high) if low <= high else None


@dataclass(frozen=True)
class DeliveryPage:
    deliveries: list[DeliveryRecorded] = field(default_factory=list)
    next_cursor: str | None = None
    follow_cursor: str = field(default_factory=lambda: encode_cursor(ZERO))


async def run_query(redis: Redis, query: DeliveryQuery) -> DeliveryPage:
    """One page of records matching ``query`` (see the module docstring)."""
    top = await _newest_id(redis)
    found: list[DeliveryRecorded] = []
    position: StreamId | None = None  # the last entry read and accounted for
    more = False
    scan = query.scan_range(top)
    if scan is not None:
        position, more = await _scan(redis, query, scan, found)
    if query.newest_first:
        next_cursor = encode_cursor(position) if more and position is not None else None
        return DeliveryPage(found, next_cursor, encode_cursor(top))
    assert query.after is not None
    cursor = encode_cursor(position if position is not None else query.after)
    return DeliveryPage(found, cursor, cursor)


async def _scan(
    redis: Redis,
    query: DeliveryQuery,
    scan: tuple[StreamId, StreamId],
    found: list[DeliveryRecorded],
) -> tuple[StreamId | None, bool]:
    """Read ``scan`` in the query's order into ``found``; returns the last entry read and
    whether entries may remain beyond it."""
    low, high = scan
    source = incident_index_key(query.incident_id) if query.incident_id else DELIVERY_LOG
    batch = max(query.limit + 1, SCAN_BATCH) if query.filters_records else query.limit + 1
    position: StreamId | None = None
    scanned = 0
    while True:
        count = min(batch, SCAN_BUDGET - scanned)
        entries = await _read(redis, source, low, high, count, newest_first=query.newest_first)
        used = 0
        for entry_id, record in entries:
            used += 1
            position = entry_id
            if record is not None and query.matches(record):
                found.append(record)
                if len(found) == query.limit:
                    break
        scanned += used
        if used < len(entries):  # the page is full and read entries are left over
            return position, True
        if len(entries) < count:  # the range is exhausted
            return position, False
        if len(found) == query.limit or scanned >= SCAN_BUDGET or position is None:
            return position, True
        if query.newest_first:
            below = predecessor(position)
            if below is None or below < low:
                return position, False
            high = below
        else:
            low = successor(position)
            if low > high:
                return position, False


async def _newest_id(redis: Redis) -> StreamId:
    raw = await redis.xrevrange(DELIVERY_LOG, count=1)
    return parse_id(raw[0][0]) if raw else ZERO


async def _read(
    redis: Redis,
    source: str,
    low: StreamId,
    high: StreamId,
    count: int,
    *,
    newest_first: bool,
) -> list[tuple[StreamId, DeliveryRecorded | None]]:
    """Up to ``count`` entries of ``source`` in [low, high], each with its record (None
    when it is gone or unreadable)."""
    if newest_first:
        raw = await redis.xrevrange(source, max=format_id(high), min=format_id(low), count=count)
    else:
        raw = await redis.xrange(source, min=format_id(low), max=format_id(high), count=count)
    ids = [parse_id(entry_id) for entry_id, _ in raw or ()]
    if source == DELIVERY_LOG:
        payloads = [_payload(fields) for _, fields in raw or ()]
    else:
        payloads = await _payloads_of(redis, ids)
    return [
        (entry_id, _decode(entry_id, payload))
        for entry_id, payload in zip(ids, payloads, strict=True)
    ]


async def _payloads_of(redis: Redis, ids: list[StreamId]) -> list[bytes | str | None]:
    """The delivery log payloads of ``ids`` (an incident's index), in one round trip."""
    if not ids:
        return []
    pipe = redis.pipeline(transaction=False)
    for entry_id in ids:
        pipe.xrange(DELIVERY_LOG, min=format_id(entry_id), max=format_id(entry_id), count=1)
    replies = await pipe.execute()
    return [_payload(reply[0][1]) if reply else None for reply in replies]


def _payload(fields: Any) -> bytes | str | None:
    if not isinstance(fields, dict):
        return None
    value = fields.get(DATA_FIELD.encode(), fields.get(DATA_FIELD))
    return value if isinstance(value, bytes | str) else None


def _decode(entry_id: StreamId, payload: bytes | str | None) -> DeliveryRecorded | None:
    if payload is None:
        return None
    try:
        return DeliveryRecorded.model_validate_json(payload)
    except ValidationError:
        log.warning("delivery_log.unreadable_entry", entry_id=format_id(entry_id))
        return None
