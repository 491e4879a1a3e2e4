"""The dispatcher's one lease renewer: it renews the leases of sends still running, stops
renewing one another owner took, and leaves no task behind once nothing is held."""

from __future__ import annotations

import asyncio

from redis.exceptions import ConnectionError as RedisConnectionError

from services.dispatcher.lease_keeper import LeaseKeeper

LEASE_MS = 150  # a renewal round every 50 ms


class Renewals:
    """Records renewals; answers whether each lease is still its owner's."""

    def __init__(self, lease_ms: int = LEASE_MS) -> None:
        self.lease_ms = lease_ms
        self.calls: list[tuple[str, str]] = []
        self.lost: set[str] = set()
        self.failing = False
        self.seen = asyncio.Event()

    async def renew(self, delivery_id: str, owner: str) -> bool:
        self.calls.append((delivery_id, owner))
        self.seen.set()
        if self.failing:
            raise RedisConnectionError("Redis went away")
        return owner not in self.lost

    async def next_round(self) -> None:
        self.seen.clear()
        await asyncio.wait_for(self.seen.wait(), timeout=5.0)


class SlowRenewals(Renewals):
    """Each renewal waits for ``release``."""

    def __init__(self) -> None:
        super().__init__()
        self.release = asyncio.Event()
        self.finished: list[str] = []

    async def renew(self, delivery_id: str, owner: str) -> bool:
        self.seen.set()
        await self.release.wait()
        self.finished.append(owner)
        return True


async def test_a_long_send_has_its_lease_renewed_until_it_ends() -> None:
    renewals = Renewals()
    keeper = LeaseKeeper(renewals)
    with keeper.kept("d1", "owner-1"):
        await renewals.next_round()
        await renewals.next_round()
        assert set(renewals.calls) == {("d1", "owner-1")}
        assert len(renewals.calls) >= 2
    assert keeper.held == 0
    await asyncio.wait_for(_ended(keeper), timeout=5.0)  # woken at once, not a round later


async def test_a_lease_another_owner_took_is_not_renewed_again() -> None:
    renewals = Renewals()
    keeper = LeaseKeeper(renewals)
    renewals.lost.add("owner-1")
    with keeper.kept("d1", "owner-1"), keeper.kept("d2", "owner-2"):
        await renewals.next_round()
        await renewals.next_round()
        await renewals.next_round()
        assert renewals.calls.count(("d1", "owner-1")) == 1  # told once it was lost
        assert renewals.calls.count(("d2", "owner-2")) >= 2
    await keeper.aclose()


async def test_a_failed_renewal_is_tried_again_next_round() -> None:
    renewals = Renewals()
    keeper = LeaseKeeper(renewals)
    renewals.failing = True
    with keeper.kept("d1", "owner-1"):
        await renewals.next_round()
        await renewals.next_round()
        assert renewals.calls.count(("d1", "owner-1")) >= 2
    await keeper.aclose()


async def test_a_send_shorter_than_half_a_round_is_never_renewed() -> None:
    renewals = Renewals(lease_ms=60_000)  # rounds every 20 s
    keeper = LeaseKeeper(renewals)
    for n in range(100):
        with keeper.kept(f"d{n}", f"owner-{n}"):
            await asyncio.sleep(0)  # a quick send: noqa: sleep-ok
    await asyncio.wait_for(_ended(keeper), timeout=5.0)
    assert renewals.calls == []


async def test_closing_waits_for_a_renewal_in_flight_and_starts_no_more() -> None:
    renewals = SlowRenewals()
    keeper = LeaseKeeper(renewals)
    with keeper.kept("d1", "owner-1"):
        await renewals.next_round()  # a renewal is in flight
        closing = asyncio.create_task(keeper.aclose())
        await asyncio.sleep(0)  # let aclose start waiting: noqa: sleep-ok
        assert not closing.done()
        renewals.release.set()
        await asyncio.wait_for(closing, timeout=5.0)
    assert renewals.finished == ["owner-1"]
    with keeper.kept("d2", "owner-2"):  # closed: held, never renewed
        assert await _ended(keeper)


async def _ended(keeper: LeaseKeeper) -> bool:
    task = keeper._task
    if task is not None:
        await task
    return task is None or task.done()
