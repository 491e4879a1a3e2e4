"""Dead letters: what could not be done, kept with its error, and replayed on request.

Two kinds share the ``clarion:dead-letters`` stream (:class:`DeadLetter`):

* a *delivery* whose retries ran out: replay sends it again under the same
  idempotency key (its state moves from ``dead`` to the next ``retry:N`` and its
  job is queued at once), with a fresh budget of attempts;
* a *message* (a stream entry no consumer could process): replay adds its body to
  its stream again, where every consumer dedups it by business key.

Replaying marks the entry replayed (``clarion:dead-letters:replayed``); a second
replay of the same entry is refused, so a double click never sends twice.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Final

from redis.asyncio import Redis
from redis.exceptions import ResponseError

from services.dispatcher.delivery_log import DeliveryLog
from services.dispatcher.delivery_state import DeliveryStates, retry_state
from shared.clock import Clock
from shared.contracts import DeadLetter, DeliveryJob, DeliveryRecorded, DeliveryStatus
from shared.redaction import mask_recipient, redact_text, redact_value
from shared.redis_values import DATA_FIELD, as_text, data_entries
from shared.secret_values import scrub
from shared.streams import DEAD_LETTERS, REPLAYED_DEAD_LETTERS

_PAYLOAD_EXCERPT: Final = 2000


@dataclass(frozen=True)
class DeadLetterEntry:
    entry_id: str
    letter: DeadLetter
    replayed_at: str | None

    def view(self, secrets: Iterable[str] = ()) -> dict[str, Any]:
        """The entry for ops: no recipient address or configured secret in clear (see
        :func:`shared.secret_values.configured_secrets`), no huge payloads."""
        secrets = tuple(secrets)
        letter = self.letter
        view: dict[str, Any] = {
            "id": self.entry_id,
            "kind": letter.kind,
            "reason": letter.reason,
            "error": scrub(redact_text(letter.error or ""), secrets) or None,
            "dead_at": letter.dead_at.isoformat(),
            "stream": letter.stream,
            "group": letter.group,
            "replayed_at": self.replayed_at,
        }
        if letter.kind == "delivery":
            job = DeliveryJob.model_validate_json(letter.payload)
            view |= {
                "delivery_id": job.delivery_id,
                "incident_id": job.incident_id,
                "event_id": job.event_id,
                "channel": job.channel,
                "audience": job.audience,
                "recipient": mask_recipient(job.recipient),
                "attempt": job.attempt,
            }
        else:
            view |= {
                "entry_id": letter.entry_id,
                "delivery_count": letter.delivery_count,
                "payload": scrub(redacted_payload(letter.payload), secrets)[:_PAYLOAD_EXCERPT],
            }
        return view


def redacted_payload(payload: str) -> str:
    """A dead message as ops may read it: secret-named fields blanked, addresses and numbers
    masked. The stored payload stays whole, for replay."""
    try:
        return json.dumps(redact_value(json.loads(payload)), ensure_ascii=False)
    except (ValueError, RecursionError):
        return redact_text(payload)


class ReplayStatus(StrEnum):
    REPLAYED = "replayed"
    ALREADY_REPLAYED = "already_replayed"
    NOT_DEAD = "not_dead"  # the delivery moved on since (sent, or replayed some other way)


@dataclass(frozen=True)
class ReplayResult:
    status: ReplayStatus
    detail: str


async def list_dead_letters(
    redis: Redis,
    limit: int = 50,
    *,
    kind: str | None = None,
    channel: str | None = None,
    include_replayed: bool = True,
) -> list[DeadLetterEntry]:
    """The newest ``limit`` dead letters matching the filters, newest first."""
    found: list[DeadLetterEntry] = []
    upper = "+"
    page = max(limit, 200)
    while len(found) < limit:
        raw = await redis.xrevrange(DEAD_LETTERS, max=upper, count=page)
        entries = data_entries(raw)
        replayed = await _replayed(redis, [entry_id for entry_id, _ in entries])
        for entry_id, payload in entries:
            letter = DeadLetter.model_validate_json(payload)
            if kind and letter.kind != kind:
                continue
            if channel and letter.channel != channel:
                continue
            if replayed.get(entry_id) and not include_replayed:
                continue
            found.append(DeadLetterEntry(entry_id, letter, replayed.get(entry_id)))
            if len(found) == limit:
                break
        if len(raw or ()) < page or not entries:
            break
        upper = f"({entries[-1][0]}"
    return found


async def get_dead_letter(redis: Redis, entry_id: str) -> DeadLetterEntry | None:
    try:
        raw = await redis.xrange(DEAD_LETTERS, min=entry_id, max=entry_id, count=1)
    except ResponseError:  # a malformed id is simply not found
        return None
    entries = data_entries(raw)
    if not entries:
        return None
    replayed = await _replayed(redis, [entry_id])
    return DeadLetterEntry(
        entry_id, DeadLetter.model_validate_json(entries[0][1]), replayed.get(entry_id)
    )


class Replayer:
    def __init__(
        self,
        redis: Redis,
        clock: Clock,
        states: DeliveryStates,
        delivery_log: DeliveryLog,
        attempts_per_replay: int,
    ) -> None:
        self._redis = redis
        self._clock = clock
        self._states = states
        self._log = delivery_log
        self._attempts = attempts_per_replay

    async def replay(self, entry: DeadLetterEntry, by: str = "operator") -> ReplayResult:
        if entry.replayed_at is not None:
            return ReplayResult(
                ReplayStatus.ALREADY_REPLAYED, f"replayed before, at {entry.replayed_at}"
            )
        if entry.letter.kind == "delivery":
            return await self._replay_delivery(entry, by)
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.xadd(entry.letter.stream, {DATA_FIELD: entry.letter.payload})
            pipe.hset(REPLAYED_DEAD_LETTERS, entry.entry_id, self._clock.now().isoformat())
            await pipe.execute()
        return ReplayResult(ReplayStatus.REPLAYED, f"added to {entry.letter.stream} again")

    async def _replay_delivery(self, entry: DeadLetterEntry, by: str) -> ReplayResult:
        job = DeliveryJob.model_validate_json(entry.letter.payload)
        attempt = job.attempt + 1
        again = job.model_copy(
            update={
                "attempt": attempt,
                "expects": retry_state(attempt),
                "last_attempt": attempt + self._attempts - 1,
            }
        )
        now = self._clock.now()
        record = self._log.redact(
            DeliveryRecorded(
                delivery_id=job.delivery_id,
                incident_id=job.incident_id,
                event_id=job.event_id,
                channel=job.channel,
                recipient=job.recipient,
                status=DeliveryStatus.QUEUED,
                attempt=attempt,
                audience=job.audience,
                started_at=now,
                recorded_at=now,
                note=f"replayed from dead letters by {by}",
            )
        )
        moved = await self._states.replay(
            job.delivery_id,
            attempt,
            entry.letter.stream,
            again.model_dump_json(),
            dead_letter=(entry.entry_id, now.isoformat()),
            record=record,
        )
        if not moved:
            state = await self._states.state(job.delivery_id)
            return ReplayResult(
                ReplayStatus.NOT_DEAD,
                f"the delivery is no longer dead (state {state or 'new'!r}); nothing to replay",
            )
        self._log.announce(record)
        return ReplayResult(ReplayStatus.REPLAYED, f"queued as attempt {attempt}")


async def _replayed(redis: Redis, entry_ids: list[str]) -> dict[str, str]:
    if not entry_ids:
        return {}
    values = await redis.hmget(REPLAYED_DEAD_LETTERS, entry_ids)
    return {
        entry_id: as_text(value)
        for entry_id, value in zip(entry_ids, values, strict=True)
        if value is not None
    }
