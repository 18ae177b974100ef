"""Command slots: bounded, by priority then arrival, and no slot lost to a
cancelled waiter."""

from __future__ import annotations

import asyncio

import pytest

from controller.slots import PRIORITY_CUT, PRIORITY_RAISE, PRIORITY_STOP, PrioritySlots


async def _holder(slots: PrioritySlots, priority: int, name: str, order: list[str],
                  release: asyncio.Event) -> None:
    async with slots.slot(priority):
        order.append(name)
        await release.wait()


async def test_waiters_get_slots_by_priority_then_arrival() -> None:
    slots = PrioritySlots(1)
    order: list[str] = []
    release = asyncio.Event()
    tasks = [asyncio.create_task(_holder(slots, PRIORITY_RAISE, "first", order, release))]
    await asyncio.sleep(0)
    for name, priority in [("raise1", PRIORITY_RAISE), ("cut1", PRIORITY_CUT),
                           ("stop1", PRIORITY_STOP), ("cut2", PRIORITY_CUT),
                           ("stop2", PRIORITY_STOP)]:
        tasks.append(asyncio.create_task(_holder(slots, priority, name, order, release)))
    await asyncio.sleep(0)
    assert order == ["first"], "one slot: everybody else waits"
    release.set()
    await asyncio.gather(*tasks)
    assert order == ["first", "stop1", "stop2", "cut1", "cut2", "raise1"]


async def test_bound_is_respected() -> None:
    slots = PrioritySlots(3)
    inside = 0
    most = 0

    async def work() -> None:
        nonlocal inside, most
        async with slots.slot(PRIORITY_CUT):
            inside += 1
            most = max(most, inside)
            await asyncio.sleep(0)
            inside -= 1

    await asyncio.gather(*(work() for _ in range(20)))
    assert most == 3


async def test_cancelled_waiter_does_not_lose_a_slot() -> None:
    slots = PrioritySlots(1)
    order: list[str] = []
    release = asyncio.Event()
    holder = asyncio.create_task(_holder(slots, PRIORITY_CUT, "holder", order, release))
    await asyncio.sleep(0)
    doomed = asyncio.create_task(_holder(slots, PRIORITY_STOP, "doomed", order, release))
    later = asyncio.create_task(_holder(slots, PRIORITY_RAISE, "later", order, release))
    await asyncio.sleep(0)
    doomed.cancel()
    release.set()
    await asyncio.gather(holder, later)
    assert order == ["holder", "later"]
    with pytest.raises(asyncio.CancelledError):
        await doomed
    # both slots' worth is back: a new holder gets in at once
    await asyncio.wait_for(slots.acquire(PRIORITY_RAISE), timeout=1.0)


def test_needs_a_slot() -> None:
    with pytest.raises(ValueError, match="at least 1"):
        PrioritySlots(0)


async def test_backlog_counts_queued_acquirers_and_clears_when_all_are_served() -> None:
    slots = PrioritySlots(1)
    order: list[str] = []
    release = asyncio.Event()
    await asyncio.wait_for(slots.backlog_cleared(), 1)  # nothing queued
    running = asyncio.create_task(_holder(slots, PRIORITY_RAISE, "running", order, release))
    await asyncio.sleep(0)
    assert slots.waiting == 0, "a busy slot alone is no backlog"
    queued = [asyncio.create_task(_holder(slots, PRIORITY_CUT, f"q{i}", order, release))
              for i in range(2)]
    cancelled = asyncio.create_task(_holder(slots, PRIORITY_CUT, "gone", order, release))
    await asyncio.sleep(0)
    assert slots.waiting == 3
    cancelled.cancel()
    await asyncio.sleep(0)
    assert slots.waiting == 2, "a cancelled waiter leaves the backlog"
    cleared = asyncio.create_task(slots.backlog_cleared())
    await asyncio.sleep(0)
    assert not cleared.done()
    release.set()
    await asyncio.wait_for(cleared, 1)
    await asyncio.gather(running, *queued)
    assert slots.waiting == 0 and order == ["running", "q0", "q1"]


async def test_backlog_by_priority_waits_only_for_that_priority() -> None:
    slots = PrioritySlots(1)
    order: list[str] = []
    release = asyncio.Event()
    running = asyncio.create_task(_holder(slots, PRIORITY_RAISE, "running", order, release))
    cut = asyncio.create_task(_holder(slots, PRIORITY_CUT, "cut", order, release))
    await asyncio.sleep(0)
    await asyncio.wait_for(slots.backlog_cleared(PRIORITY_STOP), 1)  # only a cut queued
    stop = asyncio.create_task(_holder(slots, PRIORITY_STOP, "stop", order, release))
    await asyncio.sleep(0)
    stops_cleared = asyncio.create_task(slots.backlog_cleared(PRIORITY_STOP))
    await asyncio.sleep(0)
    assert not stops_cleared.done()
    release.set()
    await asyncio.wait_for(stops_cleared, 1)
    await asyncio.gather(running, cut, stop)
    assert order == ["running", "stop", "cut"]
