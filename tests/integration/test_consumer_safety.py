"""GuardedConsumer against a real server: reclaim, delivery cap, dead letters.

Also: the dead letter is written before the ``on_dead`` hook runs, and a failing hook
never keeps an entry pending; FastStream hands over raw bytes (an entry its JSON decoder
would choke on is dead-lettered like any other); errors are logged without the
message's values.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime
from typing import Annotated, Any, Final

import pytest
import structlog
from faststream.redis import RedisBroker
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from redis.asyncio import Redis

from services.dispatcher.handlers import build_consumers
from shared.clock import ManualClock
from shared.consumer import GuardedConsumer, StreamEntry, describe_error
from shared.contracts import UpdateDue
from shared.errors import InProgressElsewhere, PermanentFailure
from shared.redis_values import DATA_FIELD, as_text
from shared.settings import Settings
from shared.streams import DEAD_LETTERS, DISPATCHER_GROUP, UPDATES_DUE, incident_key
from tests.support.dispatching import build_pipeline
from tests.support.plans import make_plan
from tests.support.streams import stream_json
from tests.support.waiting import eventually

pytestmark = pytest.mark.integration

STREAM = "clarion:test-stream"
GROUP = "test-group"


class Recorder:
    def __init__(self, fail_times: int = 0, error: type[Exception] = RuntimeError) -> None:
        self.fail_times = fail_times
        self.error = error
        self.attempts: list[int] = []
        self.handled: list[dict[str, Any]] = []
        self.dead: list[tuple[dict[str, Any], str]] = []
        self.done = asyncio.Event()

    async def handle(self, message: dict[str, Any], entry: StreamEntry) -> None:
        self.attempts.append(entry.delivery_count)
        if len(self.attempts) <= self.fail_times:
            raise self.error(f"boom {len(self.attempts)}")
        self.handled.append(message)
        self.done.set()

    async def on_dead(self, message: dict[str, Any], entry: StreamEntry, error: str) -> None:
        self.dead.append((message, error))


class BrokenDeadHook(Recorder):
    """Handling always fails, and so does ``on_dead``, after counting the dead letters."""

    def __init__(self, redis: Redis) -> None:
        super().__init__(fail_times=100)
        self.redis = redis
        self.dead_letters_seen: list[int] = []

    async def on_dead(self, message: dict[str, Any], entry: StreamEntry, error: str) -> None:
        self.dead_letters_seen.append(await self.redis.xlen(DEAD_LETTERS))
        raise RuntimeError("the hook is broken")


def _decode(body: bytes) -> dict[str, Any]:
    value = json.loads(body)
    if not isinstance(value, dict):
        raise ValueError("expected an object")
    return value


SECRET: Final = "hunter2-CANARY-5e1f"
ADDRESS: Final = "canary.person@example.com"


class Signup(BaseModel):
    model_config = ConfigDict(extra="forbid")

    email: Annotated[str, Field(max_length=12)]
    seats: int


def _decode_signup(body: bytes) -> dict[str, Any]:
    return Signup.model_validate_json(body).model_dump()


@pytest.fixture
async def broker_for(
    redis: Redis, make_settings: Callable[..., Settings]
) -> AsyncIterator[Callable[[Recorder], Any]]:
    brokers: list[RedisBroker] = []
    settings = make_settings(reclaim_idle_ms=200, polling_interval_ms=50, max_deliveries=3)

    async def start(
        recorder: Recorder, decode: Callable[[bytes], dict[str, Any]] = _decode
    ) -> RedisBroker:
        await redis.xgroup_create(STREAM, GROUP, id="0", mkstream=True)
        broker = RedisBroker(settings.require_redis_url())
        consumer: GuardedConsumer[dict[str, Any]] = GuardedConsumer(
            redis=redis,
            stream=STREAM,
            group=GROUP,
            decode=decode,
            handle=recorder.handle,
            max_deliveries=settings.max_deliveries,
            on_dead=recorder.on_dead,
        )
        consumer.subscribe(broker, settings)
        await broker.start()
        brokers.append(broker)
        return broker

    yield start
    for broker in brokers:
        await broker.stop()


async def _pending(redis: Redis) -> int:
    info = await redis.xpending(STREAM, GROUP)
    return int(info["pending"])


async def _dead_letters(redis: Redis) -> list[dict[str, Any]]:
    return await stream_json(redis, DEAD_LETTERS)


async def test_a_failed_message_is_reclaimed_and_retried(redis: Redis, broker_for: Any) -> None:
    recorder = Recorder(fail_times=1)
    broker = await broker_for(recorder)
    await broker.publish({"n": 1}, stream=STREAM)
    await asyncio.wait_for(recorder.done.wait(), timeout=15)
    assert recorder.attempts == [1, 2]
    assert recorder.handled == [{"n": 1}]
    assert await eventually(lambda: _zero_pending(redis), what="empty PEL")


async def _zero_pending(redis: Redis) -> bool:
    return await _pending(redis) == 0


async def test_a_message_that_keeps_failing_is_dead_lettered_with_its_error(
    redis: Redis, broker_for: Any
) -> None:
    recorder = Recorder(fail_times=100)
    broker = await broker_for(recorder)
    await broker.publish({"n": 2}, stream=STREAM)
    (dead,) = await eventually(lambda: _dead_letters(redis), what="a dead letter")
    assert dead["reason"] == "max_deliveries_exceeded"
    assert "boom 3" in dead["error"]
    assert json.loads(dead["payload"]) == {"n": 2}
    assert recorder.attempts == [1, 2, 3]
    assert recorder.dead == [({"n": 2}, "RuntimeError: boom 3")]
    assert await eventually(lambda: _zero_pending(redis), what="empty PEL")


async def test_work_in_progress_elsewhere_is_never_dead_lettered(
    redis: Redis, broker_for: Any
) -> None:
    """A live worker still on the job (a slow send) is looked at again and again, more
    often than max_deliveries (3): none of those looks counts, so it is never
    dead-lettered, and it is handled once the other worker lets go."""
    recorder = Recorder(fail_times=6, error=InProgressElsewhere)
    broker = await broker_for(recorder)
    await broker.publish({"n": 9}, stream=STREAM)
    await asyncio.wait_for(recorder.done.wait(), timeout=30)
    assert len(recorder.attempts) == 7
    assert max(recorder.attempts) <= 2  # each reclaim's count was taken back
    assert recorder.handled == [{"n": 9}]
    assert recorder.dead == []
    assert await _dead_letters(redis) == []
    assert await eventually(lambda: _zero_pending(redis), what="empty PEL")


async def test_an_undecodable_message_goes_straight_to_dead_letters(
    redis: Redis, broker_for: Any
) -> None:
    recorder = Recorder()
    await broker_for(recorder)
    await redis.xadd(STREAM, {"__data__": b"[1, 2, 3]"})
    (dead,) = await eventually(lambda: _dead_letters(redis), what="a dead letter")
    assert dead["reason"] == "undecodable"
    assert dead["delivery_count"] == 1
    assert recorder.attempts == []
    assert await eventually(lambda: _zero_pending(redis), what="empty PEL")


async def test_a_permanent_failure_is_not_retried(redis: Redis, broker_for: Any) -> None:
    recorder = Recorder(fail_times=1, error=PermanentFailure)
    broker = await broker_for(recorder)
    await broker.publish({"n": 3}, stream=STREAM)
    (dead,) = await eventually(lambda: _dead_letters(redis), what="a dead letter")
    assert dead["reason"] == "permanent_failure"
    assert recorder.attempts == [1]


async def test_the_dead_letter_is_written_before_on_dead_and_a_failing_hook_blocks_nothing(
    redis: Redis, broker_for: Any
) -> None:
    recorder = BrokenDeadHook(redis)
    broker = await broker_for(recorder)
    with structlog.testing.capture_logs() as logs:
        await broker.publish({"n": 4}, stream=STREAM)
        (dead,) = await eventually(lambda: _dead_letters(redis), what="a dead letter")
        assert await eventually(lambda: _zero_pending(redis), what="empty PEL")
    assert dead["reason"] == "max_deliveries_exceeded"
    assert json.loads(dead["payload"]) == {"n": 4}
    assert recorder.dead_letters_seen == [1]  # the hook ran once, after the dead letter
    failures = [line for line in logs if line["event"] == "message.on_dead_failed"]
    assert [(line["entry_id"], line["error"]) for line in failures] == [
        (dead["entry_id"], "RuntimeError: the hook is broken")
    ]


async def test_a_failing_on_dead_hook_never_escapes_process(redis: Redis) -> None:
    recorder = BrokenDeadHook(redis)
    consumer: GuardedConsumer[dict[str, Any]] = GuardedConsumer(
        redis=redis,
        stream=STREAM,
        group=GROUP,
        decode=_decode,
        handle=recorder.handle,
        max_deliveries=3,
        on_dead=recorder.on_dead,
    )
    last_turn = StreamEntry(STREAM, GROUP, "5-0", delivery_count=4)
    with structlog.testing.capture_logs():
        await consumer.process(b'{"n": 5}', last_turn)  # raising would leave it pending
    (dead,) = await _dead_letters(redis)
    assert (dead["entry_id"], dead["reason"]) == ("5-0", "max_deliveries_exceeded")
    assert recorder.dead_letters_seen == [1]
    assert recorder.attempts == []  # past the cap: not handled again


NESTED_DEEP: Final = b"[" * 5000 + b"]" * 5000  # past Python's recursion limit


async def test_an_entry_nested_past_the_recursion_limit_is_dead_lettered(
    redis: Redis, broker_for: Any
) -> None:
    # FastStream would JSON-decode it before our decoder and let RecursionError out,
    # leaving it pending for ever; the subscriber takes raw bytes instead.
    recorder = Recorder()
    await broker_for(recorder)
    entry_id = as_text(await redis.xadd(STREAM, {DATA_FIELD: NESTED_DEEP}))
    (dead,) = await eventually(lambda: _dead_letters(redis), within=30, what="a dead letter")
    assert (dead["entry_id"], dead["reason"]) == (entry_id, "undecodable")
    assert dead["error"].startswith("RecursionError")
    assert dead["payload"].encode() == NESTED_DEEP  # kept whole, for replay
    assert dead["delivery_count"] == 1
    assert recorder.attempts == []
    assert await eventually(lambda: _zero_pending(redis), what="empty PEL")


async def test_the_decoder_gets_the_body_as_written(redis: Redis, broker_for: Any) -> None:
    bodies: list[bytes] = []

    def keep(body: bytes) -> dict[str, Any]:
        bodies.append(body)
        return _decode(body)

    recorder = Recorder()
    broker = await broker_for(recorder, keep)
    raw = b'{"n": 6,   "spaced": "as written"}'
    await redis.xadd(STREAM, {DATA_FIELD: raw})  # plain JSON, no FastStream envelope
    await broker.publish({"n": 7}, stream=STREAM)  # FastStream's envelope
    await eventually(lambda: _handled(recorder, 2), what="both messages handled")
    assert bodies[0] == raw
    assert json.loads(bodies[1]) == {"n": 7}
    assert recorder.handled == [{"n": 6, "spaced": "as written"}, {"n": 7}]


async def _handled(recorder: Recorder, count: int) -> bool:
    return len(recorder.handled) >= count


def test_a_described_validation_error_names_places_and_problems_not_values() -> None:
    with pytest.raises(ValidationError) as caught:
        Signup.model_validate_json(
            json.dumps({"email": f"not-an-address {ADDRESS}", "seats": SECRET, "pw": SECRET})
        )
    described = describe_error(caught.value)
    assert described.startswith("ValidationError (Signup): ")
    assert "email: String should have at most 12 characters" in described
    assert "seats: Input should be a valid integer" in described
    assert "pw: Extra inputs are not permitted" in described
    assert SECRET not in described
    assert "canary" not in described
    assert SECRET in str(caught.value)  # what the raw error would have quoted


def test_a_described_error_of_another_kind_keeps_its_type_and_text() -> None:
    assert describe_error(RuntimeError("boom")) == "RuntimeError: boom"


async def test_an_undecodable_message_is_logged_without_its_values(
    redis: Redis, broker_for: Any
) -> None:
    recorder = Recorder()
    body = json.dumps({"email": ADDRESS, "seats": SECRET}).encode()
    with structlog.testing.capture_logs() as logs:
        await broker_for(recorder, _decode_signup)
        await redis.xadd(STREAM, {DATA_FIELD: body})
        (dead,) = await eventually(lambda: _dead_letters(redis), what="a dead letter")
    assert dead["reason"] == "undecodable"
    assert dead["error"] == (
        "ValidationError (Signup): email: String should have at most 12 characters; "
        "seats: Input should be a valid integer, unable to parse string as an integer"
    )
    assert dead["payload"].encode() == body  # the dead letter keeps it, for replay
    lines = [line for line in logs if line["event"] == "message.dead_lettered"]
    assert [line["error"] for line in lines] == [dead["error"]]
    assert not [line for line in logs if SECRET in repr(line) or "canary" in repr(line)]


async def test_a_handler_failure_is_logged_and_kept_without_the_values(
    redis: Redis, broker_for: Any
) -> None:
    class Strict(Recorder):
        async def handle(self, message: dict[str, Any], entry: StreamEntry) -> None:
            self.attempts.append(entry.delivery_count)
            Signup.model_validate(message)  # state it reads turns out invalid

    recorder = Strict()
    broker = await broker_for(recorder)
    with structlog.testing.capture_logs() as logs:
        await broker.publish({"email": ADDRESS, "seats": SECRET}, stream=STREAM)
        (dead,) = await eventually(lambda: _dead_letters(redis), what="a dead letter")
    assert dead["reason"] == "max_deliveries_exceeded"
    assert dead["error"].startswith("ValidationError (Signup): email: ")
    assert recorder.attempts == [1, 2, 3]
    failed = [line for line in logs if line["event"] == "message.handler_failed"]
    assert len(failed) == 3
    assert not [line for line in logs if SECRET in repr(line) or "canary" in repr(line)]


async def test_an_update_due_of_an_unreadable_incident_is_dead_lettered_quietly(
    redis: Redis, make_settings: Callable[..., Settings]
) -> None:
    # Dispatcher.record_dead (the dispatcher's on_dead) treats the incident as absent.
    now = datetime.now(UTC)
    settings = make_settings(max_deliveries=3)
    await redis.set(incident_key("inc-unreadable"), b"{not an incident")
    plan = make_plan(audiences={"customers": {"public": True, "status_page": True}})
    pipeline = build_pipeline(redis, settings, plan, ManualClock(now))
    try:
        _events, updates_due, _approvals = build_consumers(redis, settings, pipeline.dispatcher)
        due = UpdateDue(
            event_id="due-unreadable",
            incident_id="inc-unreadable",
            sequence=1,
            due_at=now,
            emitted_at=now,
            next_update_at=None,
        )
        last_turn = StreamEntry(UPDATES_DUE, DISPATCHER_GROUP, "9-0", delivery_count=4)
        with structlog.testing.capture_logs() as logs:
            await updates_due.process(due.model_dump_json().encode(), last_turn)
    finally:
        await pipeline.aclose()
    (dead,) = await _dead_letters(redis)
    assert (dead["entry_id"], dead["reason"]) == ("9-0", "max_deliveries_exceeded")
    events = [line["event"] for line in logs]
    assert "dead.incident_unreadable" in events
    assert "message.on_dead_failed" not in events
