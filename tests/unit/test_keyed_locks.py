"""Changes to one key take turns; other keys go on; nothing is kept once nobody waits."""

from __future__ import annotations

import asyncio

import pytest

from shared.keyed_locks import KeyedLocks


async def test_blocks_on_one_key_run_one_at_a_time_in_arrival_order() -> None:
    locks = KeyedLocks()
    inside: list[str] = []
    order: list[int] = []
    release = asyncio.Event()

    async def hold(n: int) -> None:
        async with locks.hold("group"):
            inside.append("in")
            assert inside.count("in") == 1  # nobody else is inside
            order.append(n)
            if n == 0:
                await release.wait()
            inside.remove("in")

    tasks = [asyncio.create_task(hold(n)) for n in range(3)]
    await asyncio.sleep(0)  # one turn: every task has tried the lock: noqa: sleep-ok
    assert order == [0]  # the others wait
    release.set()
    await asyncio.gather(*tasks)

    assert order == [0, 1, 2]
    assert len(locks) == 0


async def test_other_keys_are_not_held_up() -> None:
    locks = KeyedLocks()
    async with locks.hold("a"):
        async with asyncio.timeout(1):
            async with locks.hold("b"):
                assert len(locks) == 2
    assert len(locks) == 0


async def test_a_waiter_cancelled_leaves_nothing_behind() -> None:
    locks = KeyedLocks()
    async with locks.hold("group"):
        waiter = asyncio.create_task(locks.hold("group").__aenter__())
        await asyncio.sleep(0)  # one turn: the waiter is waiting: noqa: sleep-ok
        waiter.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiter
    assert len(locks) == 0
