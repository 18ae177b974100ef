"""The command queue: by priority then arrival, and backlogs that can be awaited."""

from __future__ import annotations

import asyncio

import pytest

from controller.command_queue import PRIORITY_CUT, PRIORITY_RAISE, PRIORITY_STOP, CommandQueue


def test_jobs_come_out_by_priority_then_arrival() -> None:
    queue: CommandQueue[str] = CommandQueue()
    for name, priority in [("raise1", PRIORITY_RAISE), ("cut1", PRIORITY_CUT),
                           ("stop1", PRIORITY_STOP), ("cut2", PRIORITY_CUT),
                           ("stop2", PRIORITY_STOP)]:
        queue.put(priority, name)
    taken = []
    while (job := queue.take()) is not None:
        taken.append(job)
    assert taken == ["stop1", "stop2", "cut1", "cut2", "raise1"]
    assert queue.waiting == 0


def test_an_unknown_priority_is_refused() -> None:
    with pytest.raises(ValueError, match="priority must be one of"):
        CommandQueue[str]().put(7, "x")


async def test_backlog_counts_waiting_jobs_and_clears_when_all_are_taken() -> None:
    queue: CommandQueue[str] = CommandQueue()
    await asyncio.wait_for(queue.backlog_cleared(), 1)  # nothing queued
    queue.put(PRIORITY_CUT, "q0")
    queue.put(PRIORITY_RAISE, "q1")
    assert queue.waiting == 2
    cleared = asyncio.create_task(queue.backlog_cleared())
    await asyncio.sleep(0)
    assert not cleared.done()
    assert queue.take() == "q0"
    await asyncio.sleep(0)
    assert not cleared.done(), "one still waits"
    assert queue.take() == "q1"
    await asyncio.wait_for(cleared, 1)


async def test_backlog_by_priority_waits_only_for_that_priority() -> None:
    queue: CommandQueue[str] = CommandQueue()
    queue.put(PRIORITY_CUT, "cut")
    await asyncio.wait_for(queue.backlog_cleared(PRIORITY_STOP), 1)  # only a cut queued
    queue.put(PRIORITY_STOP, "stop")
    stops_cleared = asyncio.create_task(queue.backlog_cleared(PRIORITY_STOP))
    await asyncio.sleep(0)
    assert not stops_cleared.done()
    assert queue.take() == "stop"
    await asyncio.wait_for(stops_cleared, 1)
    assert queue.waiting == 1


async def test_a_cancelled_job_is_skipped_and_leaves_the_backlog_at_once() -> None:
    queue: CommandQueue[str] = CommandQueue()
    stale = queue.put(PRIORITY_STOP, "stale stop")
    queue.put(PRIORITY_CUT, "cut")
    assert queue.cancel(stale)
    assert queue.waiting == 1
    await asyncio.wait_for(queue.backlog_cleared(PRIORITY_STOP), 1)
    assert not queue.cancel(stale), "once only"
    assert queue.take() == "cut"
    assert queue.take() is None
    taken = queue.put(PRIORITY_RAISE, "raise")
    assert queue.take() == "raise"
    assert not queue.cancel(taken), "a worker has it: too late"
