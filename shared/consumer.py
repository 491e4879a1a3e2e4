"""Safe stream consumption: the guarantees FastStream leaves to us.

Each consumed stream gets two subscribers in one consumer group:

* a reader (``XREADGROUP``) with a unique consumer name and bounded ``max_records``;
* a reclaimer (``XAUTOCLAIM`` with ``min_idle_time``) that picks up entries a
  crashed or failing consumer left pending.

A handler that raises leaves its entry pending, so the reclaimer retries it.
A handler that raises :class:`InProgressElsewhere` (a live worker is still on the
work, e.g. a slow send whose lease it renews) leaves it pending too, but that
delivery of the entry is taken back (its retry count set to what it was, its idle
time restarted): however long the work lasts, it is never dead-lettered for it,
and nothing is logged as an error: it is no failure.
An entry that cannot be decoded, that raises :class:`PermanentFailure`, or that
has been delivered more than ``max_deliveries`` times goes to the dead-letter
stream with its error, and is acknowledged: nothing poisons a stream. The dead
letter is written first; a failing ``on_dead`` hook is logged and never keeps an
entry pending.

A consumer with ``batch`` set reads up to that many new entries at once and handles
them concurrently (at most ``max_workers`` at a time, the next read waiting for a free
slot, so one slow entry holds up only its own slot), acknowledging those that succeed
together as they finish: one handler call per entry through FastStream costs more
than many handled messages do. An entry that fails stays pending, as above. At
shutdown (:meth:`GuardedConsumer.drain`) no new entry starts, those in flight get a
grace period, and whatever did not finish stays pending for a reclaim.

FastStream hands the subscriber the message itself as its body (:func:`as_message`),
whose ``body`` is the entry's raw bytes: decoding is ours, so an entry FastStream's
JSON decoder would choke on (nested past the recursion limit, say) is dead-lettered
like any other undecodable one. (Taking the message through FastStream's ``Context``
instead would resolve it in a worker thread, once per handler call.)

Errors are logged and stored without the message's values: a pydantic
:class:`ValidationError` becomes its locations and messages only
(:func:`describe_error`); the raw body stays in the dead letter, for replay.
"""

from __future__ import annotations

import asyncio
import copy
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Final, Generic, Self, TypeVar

from faststream import AckPolicy
from faststream.message import StreamMessage
from faststream.redis import RedisBroker, StreamSub
from faststream.redis.parser.binary import BinaryMessageFormatV1
from pydantic import ValidationError
from redis.asyncio import Redis
from redis.exceptions import RedisError

from shared.contracts import DeadLetter
from shared.errors import InProgressElsewhere, PermanentFailure
from shared.logs import get_logger
from shared.redis_values import DATA_FIELD, as_text
from shared.settings import Settings
from shared.slots import Slots
from shared.streams import DEAD_LETTERS, last_error_key

T = TypeVar("T")
log = get_logger("clarion.consumer")

MAX_LISTED_PROBLEMS: Final = 5  # a described validation error names at most this many
_DATA_KEY: Final = DATA_FIELD.encode()
_ENVELOPE: Final = BinaryMessageFormatV1.IDENTITY_HEADER


class StreamSettings(StreamSub):
    """FastStream's stream settings, copied cheaply.

    FastStream hands a subscriber its stream settings through a property that
    deep-copies them (to add the broker's prefix to the name) every time it is read,
    several times per read and per message. Every field is a string, number, flag or
    None, so a shallow copy is the same copy at a quarter of the cost (3.6 us instead
    of 14 us here).
    """

    def __deepcopy__(self, memo: dict[int, Any]) -> Self:
        return copy.copy(self)


def describe_error(exc: BaseException) -> str:
    """``exc`` as one line for logs and dead letters, quoting none of the message.

    ``str(ValidationError)`` repeats the offending input values (secrets, addresses;
    pydantic's truncation even defeats the email masking): only each problem's
    location and message are kept.
    """
    if isinstance(exc, ValidationError):
        problems = exc.errors(include_input=False, include_url=False, include_context=False)
        listed = "; ".join(
            f"{'.'.join(str(part) for part in problem['loc']) or '(body)'}: {problem['msg']}"
            for problem in problems[:MAX_LISTED_PROBLEMS]
        )
        more = len(problems) - MAX_LISTED_PROBLEMS
        if more > 0:
            listed += f"; and {more} more"
        return f"ValidationError ({exc.title}): {listed}"
    return f"{type(exc).__name__}: {exc}"


async def as_message(msg: StreamMessage[Any]) -> StreamMessage[Any]:
    """FastStream's decoder for guarded subscribers: the message, its body as it came.

    :meth:`GuardedConsumer.process` decodes the body, so every failure to decode is
    ours to dead-letter; FastStream's own JSON decoding lets ``RecursionError`` out.
    """
    return msg


async def parse_batch_unread(
    raw: dict[str, Any],
    default: Callable[[dict[str, Any]], Awaitable[StreamMessage[Any]]],
) -> StreamMessage[Any]:
    """FastStream's message for a batch read, without its body (for guarded batches).

    FastStream's own parser JSON-decodes every entry and encodes them all again as the
    batch's body: two passes over each entry that nothing reads, since
    :meth:`GuardedConsumer.process` decodes each entry from the raw message. The
    batch's message is made from the read with no entries (its headers, ids, consumer
    and group as FastStream makes them), then given the real read as its raw message.
    """
    message = await default({**raw, "data": []})
    message.raw_message = raw
    return message


@dataclass(frozen=True)
class StreamEntry:
    """Where a message came from, for logs and dead letters."""

    stream: str
    group: str
    entry_id: str
    delivery_count: int
    consumer: str = ""  # who holds the entry now (the reader's or the reclaimer's name)


async def dead_letter(
    redis: Redis, entry: StreamEntry, body: bytes, reason: str, error: str | None
) -> str:
    """Write a message to the dead-letter stream, with enough to replay it."""
    record = DeadLetter(
        kind="message",
        stream=entry.stream,
        group=entry.group,
        entry_id=entry.entry_id,
        delivery_count=entry.delivery_count,
        reason=reason,
        error=error,
        payload=body.decode("utf-8", errors="replace"),
        dead_at=datetime.now(UTC),
    )
    entry_id = await redis.xadd(DEAD_LETTERS, {DATA_FIELD: record.model_dump_json()})
    log.error(
        "message.dead_lettered",
        stream=entry.stream,
        group=entry.group,
        entry_id=entry.entry_id,
        reason=reason,
        error=error,
        delivery_count=entry.delivery_count,
    )
    return as_text(entry_id)


@dataclass
class GuardedConsumer(Generic[T]):
    """Decode, handle, and on failure retry or dead-letter one stream for one group."""

    redis: Redis
    stream: str
    group: str
    decode: Callable[[bytes], T]
    handle: Callable[[T, StreamEntry], Awaitable[None]]
    max_deliveries: int
    on_dead: Callable[[T, StreamEntry, str], Awaitable[None]] | None = None
    max_workers: int = 1  # new entries handled at once (reclaimed ones: one at a time)
    batch: int = 0  # new entries read at once (0: one FastStream handler call per entry)
    acknowledge: Callable[[Sequence[str]], Awaitable[object]] | None = None
    """How a batch's handled entries are acked (XACK by default): a caller that pipelines
    its own calls can send the XACK with them."""
    _in_flight: set[asyncio.Task[None]] = field(default_factory=set, init=False, repr=False)
    _slots: Slots | None = field(default=None, init=False, repr=False)
    _handled: list[str] = field(default_factory=list, init=False, repr=False)
    _acking: asyncio.Task[None] | None = field(default=None, init=False, repr=False)

    async def process(self, body: bytes, entry: StreamEntry) -> None:
        """Run the handler once. Raises only when the entry should stay pending."""
        errors_key = last_error_key(self.stream, self.group)
        try:
            message = self.decode(body)
        except Exception as exc:  # decoding is pure: it would fail the same way again
            await dead_letter(self.redis, entry, body, "undecodable", describe_error(exc))
            return
        if entry.delivery_count > self.max_deliveries:
            last_error = await self.redis.hget(errors_key, entry.entry_id)
            error = as_text(last_error) if last_error is not None else None
            await self._give_up(message, body, entry, "max_deliveries_exceeded", error)
            return
        try:
            await self.handle(message, entry)
        except PermanentFailure as exc:
            await self._give_up(message, body, entry, "permanent_failure", str(exc))
            return
        except InProgressElsewhere as exc:
            await self._uncount(entry)
            log.info("message.in_progress_elsewhere", **_fields(entry), reason=str(exc))
            raise
        except Exception as exc:
            error = describe_error(exc)
            await self.redis.hset(errors_key, entry.entry_id, error)
            log.warning("message.handler_failed", **_fields(entry), error=error)
            raise
        if entry.delivery_count > 1:
            await self.redis.hdel(errors_key, entry.entry_id)

    async def _uncount(self, entry: StreamEntry) -> None:
        """Take back this delivery of the entry: its retry count goes back to what it
        was before, and its idle time restarts, so the next reclaim waits a full
        ``reclaim_idle_ms`` and does not bring it nearer ``max_deliveries``."""
        if not entry.consumer:
            return
        await self.redis.xclaim(
            self.stream,
            self.group,
            entry.consumer,
            min_idle_time=0,
            message_ids=[entry.entry_id],
            retrycount=max(entry.delivery_count - 1, 0),
            justid=True,
        )

    async def _give_up(
        self, message: T, body: bytes, entry: StreamEntry, reason: str, error: str | None
    ) -> None:
        """Dead-letter the entry, then tell ``on_dead``; the entry is acked either way."""
        await dead_letter(self.redis, entry, body, reason, error)
        await self._tell_on_dead(message, entry, error or reason)
        await self.redis.hdel(last_error_key(self.stream, self.group), entry.entry_id)

    async def _tell_on_dead(self, message: T, entry: StreamEntry, error: str) -> None:
        """Run the ``on_dead`` hook; its failure is logged, never raised (the entry
        is in the dead letters already, and raising would only retry it for ever)."""
        if self.on_dead is None:
            return
        try:
            await self.on_dead(message, entry, error)
        except Exception as exc:
            # No traceback: it would quote the exception, and with it the message's values.
            log.error(  # noqa: TRY400
                "message.on_dead_failed",
                stream=entry.stream,
                group=entry.group,
                entry_id=entry.entry_id,
                delivery_count=entry.delivery_count,
                error=describe_error(exc),
            )

    async def process_batch(self, entries: Sequence[tuple[bytes, StreamEntry]]) -> None:
        """Start handling each of ``entries`` as soon as a slot is free; returns once the
        last has started, or once the consumer closes (those left stay pending)."""
        for body, entry in entries:
            if not await self._slots_for().take():
                return
            task = asyncio.create_task(self._process_and_ack(body, entry))
            self._in_flight.add(task)
            task.add_done_callback(self._finished)

    def close(self) -> None:
        """Start no new entry from here on (a batch being started stops at once)."""
        self._slots_for().close()  # and a batch waiting for a slot wakes

    async def drain(self, grace: float) -> None:
        """Start nothing more; give the entries in flight ``grace`` seconds to finish,
        then cancel the rest (they stay pending), and acknowledge what finished."""
        self._slots_for().close()
        if self._in_flight:
            _, late = await asyncio.wait(set(self._in_flight), timeout=grace)
            for task in late:
                task.cancel()
            if late:  # bounded: redis-py can lose a cancellation that lands inside a call
                await asyncio.wait(late, timeout=grace)
        if self._acking is not None:
            await asyncio.gather(self._acking, return_exceptions=True)

    def _slots_for(self) -> Slots:
        if self._slots is None:
            self._slots = Slots(self.max_workers)
        return self._slots

    def _finished(self, task: asyncio.Task[None]) -> None:
        self._in_flight.discard(task)
        self._slots_for().give()

    async def _process_and_ack(self, body: bytes, entry: StreamEntry) -> None:
        try:
            await self.process(body, entry)
        except Exception:  # logged by process; the entry stays pending
            return
        self._handled.append(entry.entry_id)
        if self._acking is None:
            self._acking = asyncio.create_task(self._ack_handled())

    async def _ack_handled(self) -> None:
        """XACK what finished, in one call for all that finished meanwhile."""
        try:
            while self._handled:
                await asyncio.sleep(0)  # entries finishing in this same turn join the call
                ids, self._handled = self._handled, []
                if self.acknowledge is not None:
                    await self.acknowledge(ids)
                else:
                    await self.redis.xack(self.stream, self.group, *ids)
        except RedisError as exc:  # still pending: a reclaim finds them handled, and acks
            log.warning("message.ack_failed", stream=self.stream, group=self.group, error=str(exc))
        finally:
            self._acking = None

    def subscribe(self, broker: RedisBroker, settings: Settings) -> None:
        """Register the reader and the reclaimer on ``broker``."""
        if self.batch > 0:
            self._subscribe_batches(broker, settings)
        else:
            self._subscribe_entries(broker, settings)
        self._subscribe_reclaimer(broker, settings)

    def _subscribe_batches(self, broker: RedisBroker, settings: Settings) -> None:
        reader = StreamSettings(
            self.stream,
            group=self.group,
            consumer=settings.consumer_name,
            max_records=self.batch,
            polling_interval=settings.polling_interval_ms,
            batch=True,
        )
        consumer = reader.consumer or ""

        async def on_batch(msg: Any) -> None:  # a RedisBatchStreamMessage
            raw = msg.raw_message
            stream = as_text(raw.get("channel", self.stream))
            entries = [
                (_body(fields), StreamEntry(stream, self.group, as_text(entry_id), 1, consumer))
                for entry_id, fields in zip(raw["message_ids"], raw["data"], strict=True)
            ]
            await self.process_batch(entries)

        broker.subscriber(
            stream=reader,
            title=f"{self.stream}:{self.group}",
            parser=parse_batch_unread,
            decoder=as_message,
            ack_policy=AckPolicy.MANUAL,  # each entry is acked when it is handled
        )(on_batch)

    def _subscribe_entries(self, broker: RedisBroker, settings: Settings) -> None:
        reader = StreamSettings(
            self.stream,
            group=self.group,
            consumer=settings.consumer_name,
            max_records=settings.max_records,
            polling_interval=settings.polling_interval_ms,
        )

        async def on_new(msg: Any) -> None:  # a RedisStreamMessage
            await self._handle_and_ack(msg, _entry(msg, self.group, 1, reader.consumer or ""))

        workers = self.max_workers if self.max_workers > 1 else None
        broker.subscriber(
            stream=reader,
            title=f"{self.stream}:{self.group}",
            max_workers=workers,
            decoder=as_message,
            ack_policy=AckPolicy.MANUAL,  # acked by _handle_and_ack
        )(on_new)

    def _subscribe_reclaimer(self, broker: RedisBroker, settings: Settings) -> None:
        reclaimer = StreamSettings(
            self.stream,
            group=self.group,
            consumer=f"{settings.consumer_name}-reclaim",
            max_records=settings.max_records,
            polling_interval=settings.polling_interval_ms,
            min_idle_time=settings.reclaim_idle_ms,
        )

        async def on_reclaimed(msg: Any) -> None:  # a RedisStreamMessage
            count = await msg.get_delivery_count()
            entry = _entry(msg, self.group, count, reclaimer.consumer or "")
            await self._handle_and_ack(msg, entry)

        # Reclaims are rare (a crash, a failing handler): one at a time is enough.
        broker.subscriber(
            stream=reclaimer,
            title=f"{self.stream}:{self.group}:reclaim",
            decoder=as_message,
            ack_policy=AckPolicy.MANUAL,  # acked by _handle_and_ack
        )(on_reclaimed)

    async def _handle_and_ack(self, msg: Any, entry: StreamEntry) -> None:
        """Process one entry from FastStream and ack it once handled. Work in progress
        elsewhere leaves it pending quietly (:meth:`process` logged it; it is no error);
        any other failure is raised, so FastStream logs it too, and stays pending."""
        try:
            await self.process(msg.body, entry)
        except InProgressElsewhere:
            return
        await msg.ack()


def _body(fields: Mapping[bytes, bytes]) -> bytes:
    """An entry's message body: FastStream's envelope taken off, or the plain JSON.

    FastStream's parser takes what is not its binary envelope for a legacy JSON one
    (``{"data": ..., "headers": ...}``) and decodes it twice to find out; plain JSON
    with no ``"data"`` key in it (a delivery job) is the body as it is, known at once.
    """
    payload = fields.get(_DATA_KEY, b"")
    if not payload.startswith(_ENVELOPE) and b'"data"' not in payload:
        return payload
    body, _headers = BinaryMessageFormatV1.parse(payload)
    return body


def _fields(entry: StreamEntry) -> dict[str, Any]:
    """What every log line about ``entry`` says of it."""
    return {
        "stream": entry.stream,
        "group": entry.group,
        "entry_id": entry.entry_id,
        "delivery_count": entry.delivery_count,
    }


def _entry(msg: Any, group: str, delivery_count: int, consumer: str) -> StreamEntry:
    raw = msg.raw_message
    ids = raw.get("message_ids") or [b""]
    return StreamEntry(
        stream=as_text(raw.get("channel", "")),
        group=group,
        entry_id=as_text(ids[0]),
        delivery_count=delivery_count,
        consumer=consumer,
    )
