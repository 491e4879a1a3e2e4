"""An SMS gateway that fails, times out, throttles and recovers, against the real processes.

The three services run as processes; SMS goes through the generic HTTP gateway
driver to a local fake gateway. Each incident texts three on-call numbers, and the
gateway scripts each number's fate, per delivery (its ``Idempotency-Key``):

* ``TRANSIENT``: 500, then no answer within the HTTP timeout, then 429 with
  ``Retry-After: 1``, then 200: sent on attempt 4 of 4, the third wait no shorter
  than the provider asked;
* ``PERMANENT``: 400 (an invalid number): failed at once, one attempt, no retry;
* ``EXHAUSTED``: 503 until the gateway recovers: dead after 4 attempts, in the dead
  letters; once the gateway is back, ``POST /v1/dead-letters/{id}/replay`` sends it,
  once, under the same key, and a second replay of that entry is refused (409).

Backoff is shortened (``CLARION_RETRY_BASE=PT0.2S``, ``CLARION_RETRY_MAX=PT1S``);
retries run on the scheduler's timeline, so all three services take part.
"""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Iterator, Sequence
from datetime import timedelta
from typing import Final

import httpx
import pytest
import redis as sync_redis
from redis.asyncio import Redis

from services.dispatcher.delivery_state import DONE
from shared.contracts import DeliveryRecorded, DeliveryStatus
from tests.reliability.harness import (
    AlertSender,
    Ledger,
    opened_events,
    plan_for,
    post_alerts,
    service_env,
)
from tests.reliability.scale import Outcome, report, sized
from tests.support.fake_provider import Answer, FakeProvider, Received
from tests.support.plans import write_plan
from tests.support.processes import System

INCIDENTS = sized(2, 20)
SETTLE_WITHIN = sized(90, 300)
MAX_ATTEMPTS: Final = 4
SMS_PATH: Final = "/v1/messages"
TRANSIENT: Final = "+15550100001"
PERMANENT: Final = "+15550100002"
EXHAUSTED: Final = "+15550100003"
RETRY_AFTER: Final = timedelta(seconds=1)


class ScriptedGateway:
    """The fake gateway's answers, per number and per try of one delivery."""

    def __init__(self) -> None:
        self.recovered = threading.Event()  # EXHAUSTED's numbers work again
        self.release = threading.Event()  # the requests left unanswered may answer now
        self.tries: Counter[str] = Counter()  # idempotency key -> requests
        self.accepted: Counter[str] = Counter()  # idempotency key -> 2xx answers
        self._lock = threading.Lock()

    def respond(self, request: Received) -> Answer:
        key = request.headers["idempotency-key"]
        to = request.json()["to"]
        with self._lock:
            self.tries[key] += 1
            tried = self.tries[key]
        if to == PERMANENT:
            return Answer(400, json={"error": "invalid destination number"})
        if to == EXHAUSTED and not self.recovered.is_set():
            return Answer(503, json={"error": "upstream carrier unavailable"})
        if to == TRANSIENT and tried == 1:
            return Answer(500, json={"error": "internal error"})
        if to == TRANSIENT and tried == 2:  # no answer before the client gives up
            return Answer(503, json={"error": "too late"}, hold=self.release)
        if to == TRANSIENT and tried == 3:
            return Answer(429, json={"error": "slow down"}, headers={"Retry-After": "1"})
        with self._lock:
            self.accepted[key] += 1
        return Answer(200, json={"id": f"sms-{key[:12]}-{tried}"})


def statuses(records: Sequence[DeliveryRecorded]) -> list[tuple[str, int]]:
    return [(r.status.value, r.attempt) for r in records]


@pytest.fixture(scope="module")
def gateway() -> Iterator[tuple[ScriptedGateway, FakeProvider]]:
    script = ScriptedGateway()
    with FakeProvider() as provider:
        provider.answer("POST", SMS_PATH, respond=script.respond)
        try:
            yield script, provider
        finally:
            script.release.set()


@pytest.fixture(scope="module")
def system(
    redis_url: str,
    gateway: tuple[ScriptedGateway, FakeProvider],
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[System]:
    sync_redis.Redis.from_url(redis_url).flushdb()
    directory = tmp_path_factory.mktemp("provider-faults")
    plan = write_plan(
        directory,
        (),
        audiences={"oncall": {"sms": [TRANSIENT, PERMANENT, EXHAUSTED]}},
        routes=[{"name": "on-call hears everything", "audiences": ["oncall"]}],
    )
    env = service_env(
        redis_url,
        plan,
        CLARION_SMS_PROVIDER="gateway",
        CLARION_SMS_GATEWAY_URL=gateway[1].url + SMS_PATH,
        CLARION_DELIVERY_MAX_ATTEMPTS=str(MAX_ATTEMPTS),
        CLARION_RETRY_BASE="PT0.2S",
        CLARION_RETRY_MAX="PT1S",
        CLARION_HTTP_TIMEOUT_SECONDS="3",
        # Nothing crashes here: reclaims would only find the held sends busy.
        CLARION_RECLAIM_IDLE_MS="20000",
    )
    system = System(env=env, log_dir=directory)
    try:
        system.start()
        yield system
    finally:
        system.stop()


async def test_deliveries_recover_fail_fast_or_go_dead_and_replay_once(
    store: Redis, gateway: tuple[ScriptedGateway, FakeProvider], system: System
) -> None:
    script, _ = gateway
    async with httpx.AsyncClient(timeout=30, base_url=system.dispatcher_url) as client:
        accepted = await post_alerts(AlertSender(client, system.ingest_url), "faults", INCIDENTS)
        opened = await opened_events(store, accepted.values())
        targets = [("sms", TRANSIENT), ("sms", PERMANENT), ("sms", EXHAUSTED)]
        planned = plan_for(((e, i) for i, e in opened.items()), targets)
        by_number = {
            number: [d for d, p in planned.items() if p.recipient == number]
            for _, number in targets
        }
        ledger = await Ledger.settle(store, planned, within=SETTLE_WITHIN)
        transient = {d: ledger.records.get(d, []) for d in by_number[TRANSIENT]}
        permanent = {d: ledger.records.get(d, []) for d in by_number[PERMANENT]}
        exhausted = {d: ledger.records.get(d, []) for d in by_number[EXHAUSTED]}

        # Exhausted deliveries wait in the dead letters; the gateway recovers; replay each.
        letters = (
            await client.get(
                "/v1/dead-letters", params={"kind": "delivery", "channel": "sms", "limit": 1000}
            )
        ).json()
        letter_of = {letter["delivery_id"]: letter["id"] for letter in letters}
        script.recovered.set()
        replays = [
            await client.post(f"/v1/dead-letters/{letter_of[d]}/replay")
            for d in exhausted
            if d in letter_of
        ]
        replayed = await Ledger.settle(
            store,
            {d: planned[d] for d in exhausted},
            within=SETTLE_WITHIN,
            wanted=frozenset({DeliveryStatus.SENT}),
            final_states=frozenset({DONE}),
        )
        again = [
            await client.post(f"/v1/dead-letters/{letter_of[d]}/replay")
            for d in exhausted
            if d in letter_of
        ]

    expected_transient = [("retrying", 1), ("retrying", 2), ("retrying", 3), ("sent", 4)]
    transient_ok = [d for d, r in transient.items() if statuses(r) == expected_transient]
    permanent_ok = [d for d, r in permanent.items() if statuses(r) == [("failed", 1)]]
    replay_ok = [d for d in exhausted if replayed.status(d) is DeliveryStatus.SENT]
    duplicated = sum(n - 1 for n in script.accepted.values() if n > 1)
    outcome = report(
        Outcome(
            scenario=f"provider faults (500, timeout, 429, 400, 503 x{MAX_ATTEMPTS}) "
            f"on {INCIDENTS} incidents",
            sent=len(planned),
            delivered=len(transient_ok) + len(replay_ok),
            lost=len(planned) - len(transient_ok) - len(permanent_ok) - len(replay_ok),
            duplicated=duplicated,
            notes=[
                f"{len(transient_ok)} sent on attempt {MAX_ATTEMPTS}",
                f"{len(permanent_ok)} failed at once",
                f"{len(replay_ok)} dead then replayed and sent",
                f"gateway requests: {sum(script.tries.values())}",
            ],
        )
    )
    assert len(opened) == INCIDENTS
    # Transient: every failure retried, sent on the last attempt; the wait after the 429
    # no shorter than its Retry-After.
    assert transient_ok == list(transient), {d: statuses(r) for d, r in transient.items()}
    for records in transient.values():
        throttled = records[2]
        assert throttled.next_attempt_at is not None
        assert throttled.next_attempt_at >= throttled.started_at + RETRY_AFTER
    assert all(script.tries[d] == MAX_ATTEMPTS for d in transient)
    # Permanent: failed with its one attempt, never tried again.
    assert permanent_ok == list(permanent), {d: statuses(r) for d, r in permanent.items()}
    assert all(script.tries[d] == 1 for d in permanent)
    assert all("400" in (r[-1].error or "") for r in permanent.values())
    # Exhausted: dead after the last attempt, in the dead letters; replayed, sent once.
    expected_dead = [("retrying", n) for n in range(1, MAX_ATTEMPTS)] + [("dead", MAX_ATTEMPTS)]
    assert all(statuses(r) == expected_dead for r in exhausted.values()), exhausted
    assert set(letter_of) == set(exhausted)
    assert [r.status_code for r in replays] == [202] * len(exhausted)
    assert replay_ok == list(exhausted), {
        d: statuses(replayed.records.get(d, [])) for d in exhausted
    }
    assert all(script.tries[d] == MAX_ATTEMPTS + 1 for d in exhausted)
    assert [r.status_code for r in again] == [409] * len(exhausted)
    assert outcome.lost == 0
    assert duplicated == 0, script.accepted
