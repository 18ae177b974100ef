"""Commands waiting for one of the actuator's workers, by priority, then arrival.

A first-come, first-served queue would let a trip's stops wait behind hundreds of
one-step target changes from earlier rounds while the draw stays over the grant.
Here the workers always take the lowest priority number first: stops before cuts
before raises. A stop is read back after the stops and cuts waiting to be sent,
before the raises: the readback sheds nothing, and a drop of 10,000 miners needs
its cuts too. The counts can be awaited (fleet reads give way to a backlog).

Jobs wait in plain deques and a fixed pool of workers takes them: a 10,000-miner
round used to start one task per miner, each parked on a slot, which cost ~0.1 s
of event loop per big round before the first command was sent.
"""

from __future__ import annotations

import asyncio
from collections import deque
from typing import Generic, TypeVar

# Priorities (lower goes first).
PRIORITY_STOP = 0  # sheds a whole miner: the most watts per command
PRIORITY_CUT = 1  # lowers a target
PRIORITY_STOP_READBACK = 2  # verifies a stop already sent: sheds nothing more
PRIORITY_RAISE = 3  # adds load: never ahead of anything that sheds
PRIORITIES = (PRIORITY_STOP, PRIORITY_CUT, PRIORITY_STOP_READBACK, PRIORITY_RAISE)

Job = TypeVar("Job")


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


class Ticket(Generic[Job]):
    """A job's place in the queue: cancelled, the job is skipped where it waits."""

    __slots__ = ("job", "priority", "waiting")

    def __init__(self, job: Job, priority: int) -> None:
        self.job = job
        self.priority = priority
        self.waiting = True  # False once taken by a worker or cancelled


class CommandQueue(Generic[Job]):
    def __init__(self) -> None:
        self._queues: dict[int, deque[Ticket[Job]]] = {p: deque() for p in PRIORITIES}
        self._waiting = Tally()
        self._waiting_by_priority = {p: Tally() for p in PRIORITIES}

    @property
    def waiting(self) -> int:
        """Jobs no worker has taken yet (cancelled ones not counted): the backlog."""
        return self._waiting.count

    def put(self, priority: int, job: Job) -> Ticket[Job]:
        if priority not in self._queues:
            raise ValueError(f"priority must be one of {PRIORITIES}, got {priority}")
        ticket = Ticket(job, priority)
        self._queues[priority].append(ticket)
        self._count(priority, +1)
        return ticket

    def cancel(self, ticket: Ticket[Job]) -> bool:
        """Withdraw a job no worker has taken yet; False if one already has."""
        if not ticket.waiting:
            return False
        ticket.waiting = False
        self._count(ticket.priority, -1)
        return True

    def take(self) -> Job | None:
        """The next job (lowest priority number, then oldest), or None when empty."""
        for priority, queue in self._queues.items():
            while queue:
                ticket = queue.popleft()
                if ticket.waiting:  # else cancelled: already uncounted
                    ticket.waiting = False
                    self._count(priority, -1)
                    return ticket.job
        return None

    def _count(self, priority: int, delta: int) -> None:
        self._waiting.add(delta)
        self._waiting_by_priority[priority].add(delta)

    async def backlog_cleared(self, priority: int | None = None) -> None:
        """Return once no job (of ``priority``, if given) waits for a worker."""
        tally = self._waiting if priority is None else self._waiting_by_priority[priority]
        await tally.zero()
