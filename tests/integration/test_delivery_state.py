"""The delivery state machine (""/retry:N/dead/done, with a lease) on a real Valkey.

A lease of 0 ms stands for a worker that died: its lease has run out by the next
claim (leases run on Redis ``TIME``, which a test does not move).
"""

from __future__ import annotations

from datetime import timedelta

import pytest
from redis.asyncio import Redis
from redis.exceptions import ResponseError

from services.dispatcher.delivery_log import DeliveryLog, Entry
from services.dispatcher.delivery_query import INDEXED_INCIDENTS, incident_index_key
from services.dispatcher.delivery_state import (
    DEAD,
    DONE,
    ClaimKind,
    DeliveryStates,
    Retry,
    retry_state,
)
from shared.contracts import (
    DeadLetter,
    DeliveryJob,
    DeliveryRecorded,
    DeliveryStatus,
    ScheduledDelivery,
)
from shared.redis_values import as_text, data_entries
from shared.streams import (
    DEAD_LETTERS,
    DELIVERY_LOG,
    REPLAYED_DEAD_LETTERS,
    RETRY_DUE,
    RETRY_ITEMS,
    delivery_state_key,
    delivery_stream,
)
from tests.support.builders import T0

pytestmark = pytest.mark.integration

DELIVERY = "d0c0ffee"
RETENTION = 3600
LEASE_MS = 60_000


@pytest.fixture
def states(redis: Redis) -> DeliveryStates:
    return DeliveryStates(redis, LEASE_MS, RETENTION)


@pytest.fixture
def dead_worker(redis: Redis) -> DeliveryStates:
    """Claims through this one run out at once: as if the worker died right after."""
    return DeliveryStates(redis, 0, RETENTION)


def job(attempt: int = 2) -> DeliveryJob:
    return DeliveryJob(
        delivery_id=DELIVERY,
        event_id="ev-1",
        event_type="incident.opened",
        incident_id="inc-1",
        channel="email",
        recipient="alice@example.com",
        audience="customers",
        occurred_at=T0,
        attempt=attempt,
        last_attempt=3,
        expects=retry_state(attempt),
    )


def retry_of(next_job: DeliveryJob, due_ms: int = 1_795_444_205_000) -> Retry:
    item = ScheduledDelivery(incident_id="inc-1", due_at=T0 + timedelta(seconds=5), job=next_job)
    return Retry(member=next_job.delivery_id, due_ms=due_ms, item_json=item.model_dump_json())


def entry(redis: Redis, status: DeliveryStatus = DeliveryStatus.SENT) -> Entry:
    """The attempt's delivery-log record, prepared (not stored)."""
    return DeliveryLog(redis).prepare(
        DeliveryRecorded(
            delivery_id=DELIVERY,
            incident_id="inc-1",
            event_id="ev-1",
            channel="email",
            recipient="alice@example.com",
            status=status,
            attempt=1,
            started_at=T0,
            recorded_at=T0 + timedelta(milliseconds=20),
        )
    )


async def stored_records(redis: Redis) -> list[DeliveryRecorded]:
    return await DeliveryLog(redis).recent(limit=10)


async def fields(redis: Redis) -> dict[str, str]:
    raw = await redis.hgetall(delivery_state_key(DELIVERY))
    return {as_text(k): as_text(v) for k, v in raw.items()}


# Claims


async def test_a_new_delivery_is_claimed_with_a_lease(redis: Redis, states: DeliveryStates) -> None:
    claim = await states.claim(DELIVERY, "worker-a", "")

    assert (claim.kind, claim.interrupted, claim.state) == (ClaimKind.CLAIMED, False, "")
    held = await fields(redis)
    assert held["owner"] == "worker-a"
    seconds, micros = await redis.time()
    now_ms = int(seconds) * 1000 + int(micros) // 1000
    assert now_ms < int(held["lease"]) <= now_ms + LEASE_MS  # from Redis TIME
    assert 0 < await redis.ttl(delivery_state_key(DELIVERY)) <= RETENTION
    assert await states.state(DELIVERY) == ""


async def test_a_done_delivery_is_never_claimed_again(states: DeliveryStates) -> None:
    await states.claim(DELIVERY, "worker-a", "")
    assert await states.finish(DELIVERY, "worker-a", DONE)

    for expects in ("", retry_state(2), DONE):
        claim = await states.claim(DELIVERY, "worker-b", expects)
        assert (claim.kind, claim.state) == (ClaimKind.DONE, DONE)


async def test_a_live_lease_makes_every_other_claim_busy(
    redis: Redis, states: DeliveryStates
) -> None:
    await states.claim(DELIVERY, "worker-a", "")

    claim = await states.claim(DELIVERY, "worker-b", "")

    assert (claim.kind, claim.interrupted) == (ClaimKind.BUSY, False)
    assert (await fields(redis))["owner"] == "worker-a"


async def test_an_expired_lease_is_taken_over_and_the_claim_says_it_was_interrupted(
    redis: Redis, states: DeliveryStates, dead_worker: DeliveryStates
) -> None:
    await dead_worker.claim(DELIVERY, "worker-a", "")

    claim = await states.claim(DELIVERY, "worker-b", "")

    assert (claim.kind, claim.interrupted, claim.state) == (ClaimKind.CLAIMED, True, "")
    assert (await fields(redis))["owner"] == "worker-b"


async def test_a_finished_claim_is_not_reported_as_interrupted(
    states: DeliveryStates,
) -> None:
    await states.claim(DELIVERY, "worker-a", "")
    await states.finish(DELIVERY, "worker-a", retry_state(2), retry=retry_of(job(2)))

    claim = await states.claim(DELIVERY, "worker-b", retry_state(2))

    assert (claim.kind, claim.interrupted) == (ClaimKind.CLAIMED, False)


@pytest.mark.parametrize(
    ("state", "expects"),
    [
        ("", retry_state(2)),  # a scheduled retry's job when the delivery never started
        (retry_state(2), ""),  # a duplicate first job after a retry was scheduled
        (retry_state(3), retry_state(2)),  # an old retry's job
        (DEAD, ""),  # anything but a replay, once dead
        (DEAD, retry_state(3)),
    ],
)
async def test_a_job_expecting_another_state_is_stale(
    redis: Redis, states: DeliveryStates, state: str, expects: str
) -> None:
    if state:
        await redis.hset(delivery_state_key(DELIVERY), "state", state)

    claim = await states.claim(DELIVERY, "worker-b", expects)

    assert (claim.kind, claim.state) == (ClaimKind.STALE, state)
    assert "owner" not in await fields(redis)  # a stale job takes no lease
    assert await states.state(DELIVERY) == state


async def test_tries_count_every_claim_including_interrupted_ones_but_not_deferrals(
    states: DeliveryStates, dead_worker: DeliveryStates
) -> None:
    first = await dead_worker.claim(DELIVERY, "worker-a", "")
    taken_over = await states.claim(DELIVERY, "worker-b", "")
    assert (first.tries, taken_over.tries) == (1, 2)
    # worker-b was rate limited: no attempt made, the try is given back
    assert await states.finish(
        DELIVERY, "worker-b", retry_state(1), retry=retry_of(job(1)), attempted=False
    )

    later = await states.claim(DELIVERY, "worker-c", retry_state(1))

    assert (later.kind, later.tries) == (ClaimKind.CLAIMED, 2)


# Finishing


async def test_finish_with_a_retry_moves_the_state_and_schedules_the_job_together(
    redis: Redis, states: DeliveryStates
) -> None:
    await states.claim(DELIVERY, "worker-a", "")
    retry = retry_of(job(2), due_ms=1_795_444_205_123)

    assert await states.finish(DELIVERY, "worker-a", retry_state(2), retry=retry)

    held = await fields(redis)
    assert held["state"] == "retry:2"
    assert "owner" not in held
    assert "lease" not in held
    assert await redis.zscore(RETRY_DUE, DELIVERY) == 1_795_444_205_123
    raw = await redis.hget(RETRY_ITEMS, DELIVERY)
    assert raw is not None
    assert ScheduledDelivery.model_validate_json(raw).job == job(2)
    assert await redis.xlen(DEAD_LETTERS) == 0
    assert 0 < await redis.ttl(delivery_state_key(DELIVERY)) <= RETENTION


async def test_finish_with_a_dead_letter_writes_it_with_the_dead_state(
    redis: Redis, states: DeliveryStates
) -> None:
    await redis.hset(delivery_state_key(DELIVERY), "state", retry_state(3))
    await states.claim(DELIVERY, "worker-a", retry_state(3))
    letter = DeadLetter(
        kind="delivery",
        stream=delivery_stream("email"),
        group="dispatcher",
        reason="retries_exhausted",
        error="451 later",
        payload=job(3).model_dump_json(),
        dead_at=T0,
        delivery_id=DELIVERY,
    )

    assert await states.finish(
        DELIVERY, "worker-a", DEAD, dead_letter_json=letter.model_dump_json()
    )

    assert await states.state(DELIVERY) == DEAD
    [(_, payload)] = data_entries(await redis.xrange(DEAD_LETTERS))
    assert DeadLetter.model_validate_json(payload) == letter
    assert await redis.zcard(RETRY_DUE) == 0


async def test_finish_after_the_lease_was_taken_over_changes_nothing(
    redis: Redis, states: DeliveryStates, dead_worker: DeliveryStates
) -> None:
    await dead_worker.claim(DELIVERY, "worker-a", "")
    await states.claim(DELIVERY, "worker-b", "")  # worker-a's lease ran out

    late = await dead_worker.finish(
        DELIVERY, "worker-a", retry_state(2), retry=retry_of(job(2)), dead_letter_json="{}"
    )

    assert late is False
    held = await fields(redis)
    assert held["owner"] == "worker-b"
    assert await states.state(DELIVERY) == ""
    assert await redis.zcard(RETRY_DUE) == 0  # none of it: not the retry, not the letter
    assert await redis.hlen(RETRY_ITEMS) == 0
    assert await redis.xlen(DEAD_LETTERS) == 0

    assert await states.finish(DELIVERY, "worker-b", DONE)
    assert await states.state(DELIVERY) == DONE


async def test_finish_appends_the_record_in_the_same_step(
    redis: Redis, states: DeliveryStates
) -> None:
    await states.claim(DELIVERY, "worker-a", "")
    sent = entry(redis)

    assert await states.finish(DELIVERY, "worker-a", DONE, record=sent)

    assert await states.state(DELIVERY) == DONE
    assert await stored_records(redis) == [sent.record]
    assert await redis.xlen(incident_index_key("inc-1")) == 1  # indexed too
    assert await redis.zscore(INDEXED_INCIDENTS, "inc-1") is not None


async def test_finish_with_a_retry_appends_its_record_too(
    redis: Redis, states: DeliveryStates
) -> None:
    await states.claim(DELIVERY, "worker-a", "")
    retrying = entry(redis, DeliveryStatus.RETRYING)

    assert await states.finish(
        DELIVERY, "worker-a", retry_state(2), retry=retry_of(job(2)), record=retrying
    )

    assert await states.state(DELIVERY) == retry_state(2)
    assert await redis.zscore(RETRY_DUE, DELIVERY) is not None
    assert await stored_records(redis) == [retrying.record]


async def test_a_lost_lease_appends_no_record_unless_asked_and_never_moves_the_state(
    redis: Redis, states: DeliveryStates, dead_worker: DeliveryStates
) -> None:
    await dead_worker.claim(DELIVERY, "worker-a", "")
    await states.claim(DELIVERY, "worker-b", "")  # worker-a's lease ran out
    retrying, sent = entry(redis, DeliveryStatus.RETRYING), entry(redis)

    assert not await dead_worker.finish(
        DELIVERY, "worker-a", retry_state(2), retry=retry_of(job(2)), record=retrying
    )
    assert await stored_records(redis) == []

    assert not await dead_worker.finish(
        DELIVERY, "worker-a", DONE, record=sent, record_if_lost=True
    )
    assert await stored_records(redis) == [sent.record]  # it happened: the send went out
    assert (await fields(redis))["owner"] == "worker-b"
    assert await states.state(DELIVERY) == ""
    assert await redis.zcard(RETRY_DUE) == 0


@pytest.mark.parametrize(
    "refused",
    [
        DELIVERY_LOG,
        incident_index_key("inc-1"),
        INDEXED_INCIDENTS,
        RETRY_DUE,
        RETRY_ITEMS,
        DEAD_LETTERS,
    ],
)
async def test_a_finish_that_cannot_write_everything_writes_nothing(
    redis: Redis, states: DeliveryStates, refused: str
) -> None:
    # A key of the wrong type makes one of the script's writes fail: then neither the
    # state nor the record (nor the retry, nor the dead letter) may be written.
    await states.claim(DELIVERY, "worker-a", "")
    await redis.set(refused, "not what the script expects")
    before = await fields(redis)
    keys_before = set(await redis.keys("*"))

    with pytest.raises(ResponseError, match="WRONGTYPE"):
        await states.finish(
            DELIVERY,
            "worker-a",
            retry_state(2),
            retry=retry_of(job(2)),
            dead_letter_json="{}",
            record=entry(redis, DeliveryStatus.RETRYING),
        )

    assert await fields(redis) == before  # still claimed by worker-a, not moved
    assert set(await redis.keys("*")) == keys_before  # no record, index, retry or letter
    assert as_text(await redis.get(refused)) == "not what the script expects"


async def test_finish_without_a_claim_is_refused(redis: Redis, states: DeliveryStates) -> None:
    assert await states.finish(DELIVERY, "worker-a", DONE) is False
    assert await states.state(DELIVERY) == ""


# Replay


async def test_replay_moves_only_a_dead_delivery_and_queues_its_job_once(
    redis: Redis, states: DeliveryStates
) -> None:
    stream = delivery_stream("email")
    again = job(4).model_copy(update={"last_attempt": 6})
    for state in ("", retry_state(2), DONE):
        if state:
            await redis.hset(delivery_state_key(DELIVERY), "state", state)
        assert not await states.replay(DELIVERY, 4, stream, again.model_dump_json())
        assert await states.state(DELIVERY) == state
    assert await redis.xlen(stream) == 0
    await redis.hset(delivery_state_key(DELIVERY), "state", DEAD)

    assert await states.replay(DELIVERY, 4, stream, again.model_dump_json())
    assert not await states.replay(DELIVERY, 4, stream, again.model_dump_json())  # not dead now

    assert await states.state(DELIVERY) == retry_state(4)
    [(_, payload)] = data_entries(await redis.xrange(stream))
    assert DeliveryJob.model_validate_json(payload) == again
    claim = await states.claim(DELIVERY, "worker-a", again.expects)  # the replayed job sends
    assert claim.kind is ClaimKind.CLAIMED


async def test_replay_queues_the_job_records_it_and_marks_the_letter_in_one_step(
    redis: Redis, states: DeliveryStates
) -> None:
    stream = delivery_stream("email")
    queued = entry(redis, DeliveryStatus.QUEUED)
    await redis.hset(delivery_state_key(DELIVERY), "state", DONE)

    moved = await states.replay(
        DELIVERY, 4, stream, job(4).model_dump_json(), dead_letter=("1-1", "then"), record=queued
    )

    assert not moved  # not dead: no job, no record, but the letter is marked replayed
    assert await redis.xlen(stream) == 0
    assert await stored_records(redis) == []
    assert as_text(await redis.hget(REPLAYED_DEAD_LETTERS, "1-1")) == "then"

    await redis.hset(delivery_state_key(DELIVERY), "state", DEAD)
    moved = await states.replay(
        DELIVERY, 4, stream, job(4).model_dump_json(), dead_letter=("2-1", "now"), record=queued
    )

    assert moved
    assert await redis.xlen(stream) == 1
    assert [r.status for r in await stored_records(redis)] == [DeliveryStatus.QUEUED]
    assert as_text(await redis.hget(REPLAYED_DEAD_LETTERS, "2-1")) == "now"


async def test_a_replay_whose_record_cannot_be_stored_moves_nothing(
    redis: Redis, states: DeliveryStates
) -> None:
    await redis.hset(delivery_state_key(DELIVERY), "state", DEAD)
    await redis.set(DELIVERY_LOG, "not a stream")

    with pytest.raises(ResponseError):
        await states.replay(
            DELIVERY,
            4,
            delivery_stream("email"),
            job(4).model_dump_json(),
            dead_letter=("3-1", "now"),
            record=entry(redis, DeliveryStatus.QUEUED),
        )

    assert await states.state(DELIVERY) == DEAD
    assert await redis.xlen(delivery_stream("email")) == 0
    assert await redis.hget(REPLAYED_DEAD_LETTERS, "3-1") is None


async def test_replay_waits_for_a_live_lease_on_a_dead_delivery(
    redis: Redis, states: DeliveryStates
) -> None:
    key = delivery_state_key(DELIVERY)
    await redis.hset(key, mapping={"state": DEAD, "owner": "worker-a", "lease": 2**62})

    assert not await states.replay(DELIVERY, 4, delivery_stream("email"), job(4).model_dump_json())

    assert await states.state(DELIVERY) == DEAD
    assert await redis.xlen(delivery_stream("email")) == 0


async def test_an_owner_renews_its_own_lease_and_no_one_else_can(
    redis: Redis, dead_worker: DeliveryStates
) -> None:
    short = DeliveryStates(redis, 200, RETENTION)
    assert (await short.claim(DELIVERY, "worker-a", "")).kind is ClaimKind.CLAIMED
    before = int(as_text(await redis.hget(delivery_state_key(DELIVERY), "lease")))

    assert await short.renew(DELIVERY, "worker-a")
    assert not await short.renew(DELIVERY, "worker-b")  # not theirs to extend
    after = int(as_text(await redis.hget(delivery_state_key(DELIVERY), "lease")))

    assert after >= before
    assert await short.finish(DELIVERY, "worker-a", DONE)
    assert not await short.renew(DELIVERY, "worker-a")  # nothing held any more
