from __future__ import annotations

import asyncio

from shared.slots import Slots


async def test_holders_are_bounded_and_a_slot_given_back_goes_to_a_waiter() -> None:
    slots = Slots(2)
    assert await slots.take()
    assert await slots.take()
    waiter = asyncio.create_task(slots.take())
    await asyncio.sleep(0)  # one turn: the waiter is parked: noqa: sleep-ok
    assert not waiter.done()
    slots.give()
    assert await asyncio.wait_for(waiter, 1) is True


async def test_closing_wakes_every_waiter_with_no_slot_and_refuses_later_takers() -> None:
    slots = Slots(1)
    assert await slots.take()
    waiters = [asyncio.create_task(slots.take()) for _ in range(3)]
    await asyncio.sleep(0)  # one turn: the waiters are parked: noqa: sleep-ok
    slots.close()
    assert await asyncio.wait_for(asyncio.gather(*waiters), 1) == [False, False, False]
    assert await slots.take() is False
