"""A bounded number of command slots, handed out by priority, then arrival.

asyncio.Semaphore is first come, first served: when the fleet is saturated with
commands (a large site, a fast plant), a trip's stops would queue behind
hundreds of one-step target changes from earlier rounds and the draw would stay
over the grant for seconds. Here a waiter with a lower priority number goes
first: stops before cuts before raises.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

# Priorities (lower goes first).
PRIORITY_STOP = 0  # sheds a whole miner: the most watts per command
PRIORITY_CUT = 1  # lowers a target
PRIORITY_RAISE = 2  # adds load: never ahead of anything that sheds


class Tally:
    """A count that can be awaited down to zero (queued or running work)."""

    def __init__(self) -> None:
        self.count = 0
        self._zero = asyncio.Event()
        self._zero.set()

    def add(self, delta: int) -> None:
        self.count += delta
        if self.count > 0:
            self._zero.clear()
        else:
            self._zero.set()

    async def zero(self) -> None:
        await self._zero.wait()


class PrioritySlots:
    def __init__(self, slots: int) -> None:
        if slots < 1:
            raise ValueError(f"slots must be at least 1, got {slots}")
        self._free = slots
        self._order = itertools.count()  # FIFO within one priority
        self._waiters: list[tuple[int, int, asyncio.Future[None]]] = []
        self._waiting = Tally()  # acquirers not granted yet (the heap may hold cancelled ones)
        self._waiting_by_priority: dict[int, Tally] = {}

    @property
    def waiting(self) -> int:
        """Acquirers queued for a slot: the backlog."""
        return self._waiting.count

    async def backlog_cleared(self, priority: int | None = None) -> None:
        """Return once nobody (of ``priority``, if given) is queued for a slot."""
        await (self._waiting if priority is None else self._tally(priority)).zero()

    def _tally(self, priority: int) -> Tally:
        return self._waiting_by_priority.setdefault(priority, Tally())

    async def acquire(self, priority: int) -> None:
        if self._free > 0:  # a free slot means nobody waits: release hands slots on
            self._free -= 1
            return
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        heapq.heappush(self._waiters, (priority, next(self._order), fut))
        queued = (self._waiting, self._tally(priority))
        for tally in queued:
            tally.add(+1)
        try:
            await fut
        except asyncio.CancelledError:
            if fut.done() and not fut.cancelled():
                self.release()  # granted just as we were cancelled: hand it on
            raise
        finally:
            for tally in queued:
                tally.add(-1)

    def release(self) -> None:
        while self._waiters:
            _, _, fut = heapq.heappop(self._waiters)
            if not fut.done():
                fut.set_result(None)  # the slot passes straight to the waiter
                return
        self._free += 1

    @asynccontextmanager
    async def slot(self, priority: int) -> AsyncIterator[None]:
        await self.acquire(priority)
        try:
            yield
        finally:
            self.release()
